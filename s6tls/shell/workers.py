"""Several worker processes behind one accepting process (S6TLS_WORKERS=N).

The accepting process keeps everything that must be exact or single: the
listening socket, ``-c``/``-C`` counts, TCPCONNNUM, the accept/end log
lines, and signals. Each accepted connection is handed to the least busy
worker with its descriptor (SCM_RIGHTS) and its facts; the worker runs the
session as a single process would, and reports prog's start and end back.
On quit, the accepting process closes the workers' channels and exits at
once; each worker finishes its running sessions, then exits.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NoReturn

import gevent
from gevent import socket as gsocket
from gevent.lock import Semaphore
from gevent.os import fork_gevent

from s6tls.shell.server import Ended, InProcess, Started
from s6tls.shell.service import Service
from s6tls.shell.session import Session

MAX_MESSAGE = 4096


@dataclass(eq=False)
class Worker:
    """The accepting side of one worker: its channel and its sessions."""

    pid: int
    channel: socket.socket
    sending: Semaphore = field(default_factory=Semaphore)
    sessions: dict[int, tuple[Started, Ended]] = field(default_factory=dict)


def _send(
    channel: socket.socket, lock: Semaphore, message: dict[str, Any], fds: Sequence[int] = ()
) -> None:
    data = json.dumps(message).encode()
    with lock:
        if fds:
            socket.send_fds(channel, [data], list(fds))
        else:
            channel.send(data)  # an empty SCM_RIGHTS is refused


class WorkerPool:
    """Sessions run in N forked workers; this process accepts and counts."""

    def __init__(
        self,
        service: Service,
        count: int,
        listener: socket.socket,
        in_worker: Callable[[], None],
    ) -> None:
        self.service = service
        self.workers: list[Worker] = []
        self._next_id = 0
        for _ in range(count):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            pid = fork_gevent()
            if pid == 0:
                ours.close()
                listener.close()
                for worker in self.workers:
                    worker.channel.close()
                in_worker()
                _work(service, gsocket.socket(fileno=theirs.detach()))
            theirs.close()
            self.workers.append(Worker(pid, gsocket.socket(fileno=ours.detach())))
        # Only now: a greenlet spawned before a fork would run in the child too.
        for worker in self.workers:
            gevent.spawn(self._listen, worker)

    def start(self, sock: socket.socket, session: Session, started: Started, ended: Ended) -> None:
        if not self.workers:
            sock.close()
            ended(None)
            return
        worker = min(self.workers, key=lambda w: len(w.sessions))
        self._next_id += 1
        worker.sessions[self._next_id] = (started, ended)
        message = {
            "id": self._next_id,
            "ip": session.remote_ip,
            "port": session.remote_port,
            "connnum": session.connnum,
        }
        try:
            _send(worker.channel, worker.sending, message, [sock.fileno()])
        except OSError:
            worker.sessions.pop(self._next_id)
            ended(None)
        finally:
            sock.close()

    def _listen(self, worker: Worker) -> None:
        """Relay a worker's reports; if it dies, its sessions are over."""
        try:
            while data := worker.channel.recv(MAX_MESSAGE):
                report = json.loads(data)
                if "pid" in report:
                    worker.sessions[report["id"]][0](report["pid"])
                else:
                    worker.sessions.pop(report["id"])[1](report["status"])
        except OSError:
            pass
        if worker in self.workers:
            self.workers.remove(worker)
            self.service.log.warning(f"worker {worker.pid} is gone")
        for _, ended in worker.sessions.values():
            ended(None)
        worker.sessions.clear()

    def signal_progs(self, signums: Sequence[int]) -> None:
        for worker in self.workers:
            try:
                _send(worker.channel, worker.sending, {"signal": list(signums)})
            except OSError:
                pass

    def finish(self) -> None:
        for worker in self.workers:
            worker.channel.close()  # each worker drains its sessions, then exits
        self.workers = []


def _unreported(pid: int) -> None:
    pass


def _work(service: Service, channel: socket.socket) -> NoReturn:
    """A worker: run the sessions the accepting process hands over."""
    runner = InProcess(service)
    lock = Semaphore()

    def report(ident: int, what: str, value: int | None) -> None:
        try:
            _send(channel, lock, {"id": ident, what: value})
        except OSError:
            pass  # the accepting process is gone: we are draining

    while True:
        try:
            data, fds, _, _ = socket.recv_fds(channel, MAX_MESSAGE, 1)
        except OSError:
            break
        if not data:
            break
        order = json.loads(data)
        if "signal" in order:
            runner.signal_progs(order["signal"])
            continue
        ident = order["id"]
        session = Session(order["ip"], order["port"], connnum=order["connnum"])
        runner.start(
            gsocket.socket(fileno=fds[0]),
            session,
            # prog's pid is only for the accept and end lines, shown at -v
            partial(report, ident, "pid") if service.log.verbose else _unreported,
            partial(report, ident, "status"),
        )
    runner.greenlets.join()
    os._exit(0)
