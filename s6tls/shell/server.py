"""The long-lived server: accept, connection limits, per-IP counts, signals.

This is upstream's s6-tcpserverd. At ``-c`` sessions it stops accepting, so
extra clients wait in the kernel's backlog; past ``-C`` sessions from one IP
it accepts and closes at once. The sessions themselves run in this process
(``InProcess``) or in worker processes (``s6tls.shell.workers``); either
way this process alone counts them, so the limits are exact, and logs them.
On SIGTERM the listener closes and the supervised process exits at once,
while the running sessions finish elsewhere.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
from collections.abc import Callable, Sequence
from functools import partial
from typing import Protocol

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.os import fork_gevent
from gevent.pool import Group

from s6tls import logline
from s6tls.shell.service import Service
from s6tls.shell.session import Session, canonical_ip, run

# accept() errors that mean "out of resources for now": back off, then retry.
_BACKOFF_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
BACKOFF_SECONDS = 0.1

_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGABRT, signal.SIGINT)

Started = Callable[[int], None]  # prog's pid
Ended = Callable[[int | None], None]  # prog's wait status, None if it never ran


class Runner(Protocol):
    """Where sessions run."""

    def start(self, sock: socket.socket, session: Session, started: Started, ended: Ended) -> None:
        """Run the session; call started(pid) when prog runs, ended(status) at the end."""

    def signal_progs(self, signums: Sequence[int]) -> None: ...

    def finish(self) -> None:
        """The server quits: let running sessions finish without this process."""


class InProcess:
    """Sessions as greenlets of this process; a forked copy drains them on quit."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.greenlets = Group()
        self.running: set[Session] = set()

    def start(self, sock: socket.socket, session: Session, started: Started, ended: Ended) -> None:
        self.running.add(session)
        self.greenlets.spawn(self._serve, sock, session, started, ended)

    def _serve(self, sock: socket.socket, session: Session, started: Started, ended: Ended) -> None:
        def prog_started() -> None:
            assert session.child is not None
            started(session.child.pid)

        status = None
        try:
            status = run(self.service, sock, session, prog_started)
        finally:
            self.running.discard(session)
            ended(status)

    def signal_progs(self, signums: Sequence[int]) -> None:
        for session in list(self.running):
            if session.child is not None:
                for signum in signums:
                    session.child.signal(signum)

    def finish(self) -> None:
        if self.running and fork_gevent() == 0:
            # The drainer: finish the running sessions silently, then exit.
            self.service.log.verbosity = 0
            self.greenlets.join()
            os._exit(0)


class Server:
    """Accepts connections on one listening socket and hands them to a runner."""

    def __init__(self, service: Service, listener: socket.socket, runner: Runner) -> None:
        self.service = service
        self.listener = listener
        self.runner = runner
        self.slots = Semaphore(service.options.maxconn)
        self.per_ip: dict[str, int] = {}
        self.total = 0
        self.quit = Event()
        self.quit_signal: int = signal.SIGTERM

    # -- accepting

    def accept_loop(self) -> None:
        opts = self.service.options
        log = self.service.log
        starved = False
        while True:
            self.slots.acquire()
            try:
                sock, address = self.listener.accept()
            except OSError as e:
                self.slots.release()
                if e.errno in _BACKOFF_ERRNOS:
                    if not starved:  # once per episode: accept() fails until fds free up
                        log.warning(f"unable to accept: {e.strerror}; retrying")
                    starved = True
                    gevent.sleep(BACKOFF_SECONDS)
                elif self.listener.fileno() < 0:
                    return
                continue
            starved = False
            ip, port = canonical_ip(address[0]), address[1]
            count = self.per_ip.get(ip, 0)
            if count >= opts.localmaxconn:
                log.notice(logline.reject(ip, port, count, opts.localmaxconn))
                sock.close()
                self.slots.release()
                continue
            self.per_ip[ip] = count + 1
            self.total += 1
            session = Session(ip, port, connnum=count)
            self.runner.start(
                sock, session, partial(self._started, session), partial(self._ended, session)
            )

    def _started(self, session: Session, pid: int) -> None:
        session.pid = pid
        log = self.service.log
        if log.verbose:
            opts = self.service.options
            count = self.per_ip[session.remote_ip]
            ip, port = session.remote_ip, session.remote_port
            log.info(logline.accept(ip, port, pid, count, opts.localmaxconn))
            log.info(logline.status(self.total, opts.maxconn))

    def _ended(self, session: Session, status: int | None) -> None:
        left = self.per_ip[session.remote_ip] - 1
        if left:
            self.per_ip[session.remote_ip] = left
        else:
            del self.per_ip[session.remote_ip]
        self.total -= 1
        self.slots.release()
        log = self.service.log
        if status is not None and log.verbose:
            opts = self.service.options
            log.info(logline.end(session.pid, status, left, opts.localmaxconn))
            log.info(logline.status(self.total, opts.maxconn))

    # -- signals

    def _on_signal(self, signum: int) -> None:
        log = self.service.log
        if signum == signal.SIGHUP:
            log.info("received SIGHUP, sending SIGTERM and SIGCONT to all connections")
            self.runner.signal_progs((signal.SIGTERM, signal.SIGCONT))
            return
        if signum == signal.SIGTERM:
            log.info("received SIGTERM, quitting")
        elif signum == signal.SIGQUIT:
            log.info(
                "received SIGQUIT, sending SIGTERM and SIGCONT to all connections and quitting"
            )
            self.runner.signal_progs((signal.SIGTERM, signal.SIGCONT))
        elif signum == signal.SIGABRT:
            log.info("received SIGABRT, sending SIGKILL to all connections and quitting")
            self.runner.signal_progs((signal.SIGKILL,))
        self.quit_signal = signum
        self.quit.set()

    # -- running

    def serve(self) -> int:
        """Serve until a quitting signal; return the exit code."""
        for signum in _SIGNALS:
            gevent.signal_handler(signum, self._on_signal, signum)
        acceptor = gevent.spawn(self.accept_loop)
        self.quit.wait()
        acceptor.kill()
        self.listener.close()
        self.runner.finish()
        if self.quit_signal == signal.SIGINT:
            # Upstream does not trap SIGINT: it dies of it, silently, and its
            # sessions (separate processes) live on; so do ours.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        self.service.log.info("exiting")
        return 0
