"""Several worker processes on one listening socket (S6TLS_WORKERS=N).

Each worker accepts on the shared socket and runs its sessions itself, as a
single server would: nothing passes between processes per connection, so a
session costs the same CPU in a worker as in a lone server. The limits stay
exact because every worker counts in the same shared table
(``s6tls.shell.limits``).

The first process only supervises. It logs the signals it gets and passes
them on: each worker signals its own progs, or stops accepting, finishes its
sessions and exits, while the supervisor exits as soon as no worker accepts
any more. A worker whose supervisor vanished (its pipe reads end-of-file)
does the same. If a worker dies, its slots are given back; with none left,
the server exits 111.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import gevent
from gevent.event import AsyncResult
from gevent.os import fork_gevent
from gevent.socket import wait_read

from s6tls.shell.fdio import to_null
from s6tls.shell.limits import Limits
from s6tls.shell.server import REACTIONS, Server, die_of_sigint
from s6tls.shell.service import Service
from s6tls.shell.spawn import reap


@dataclass
class Workers:
    """The supervisor's view of its workers."""

    pids: list[int]
    accepting: int  # end-of-file once no worker accepts any more


def start_workers(
    service: Service,
    listener: socket.socket,
    limits: Limits,
    count: int,
    in_worker: Callable[[list[int]], None],
) -> Workers:
    """Fork count workers that accept on listener.

    ``in_worker(fds)`` runs first in each worker; fds are what a process
    that never accepts can close.
    """
    # Only the supervisor keeps the writing end, open till it exits: its
    # end-of-file tells the workers that the supervisor is gone.
    alive_r, alive_w = os.pipe2(os.O_CLOEXEC)
    # Only the workers keep this one's writing end, each until it has closed
    # the listening socket: at its end-of-file, nothing accepts any more.
    accepting_r, accepting_w = os.pipe2(os.O_CLOEXEC)
    workers = []
    for _ in range(count):
        pid = fork_gevent()
        if pid == 0:
            os.close(alive_w)
            os.close(accepting_r)
            to_null(1)  # -1: only the supervisor holds the stdout whose end is awaited
            in_worker([listener.fileno(), alive_r, accepting_w, *limits.fds()])
            _work(service, listener, limits, alive_r, accepting_w)
        workers.append(pid)
    os.close(alive_r)
    os.close(accepting_w)
    listener.close()
    return Workers(workers, accepting_r)


# How long the supervisor, told to quit, waits for the workers to stop accepting.
STOP_ACCEPTING_SECONDS = 5.0


def supervise(service: Service, limits: Limits, pool: Workers) -> int:
    """Pass signals on to the workers until told to quit; the exit code.

    It exits once the listening socket is closed in every worker, so that
    when the supervised process is gone, no connection is accepted.
    """
    workers = pool.pids
    log = service.log
    quitting: AsyncResult[int] = AsyncResult()  # the signal, or 0: no worker left

    def on_signal(signum: int) -> None:
        reaction = REACTIONS[signum]
        if reaction.message:
            log.info(reaction.message)
        for pid in workers:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        if reaction.quits and not quitting.ready():
            quitting.set(signum)

    def watch(pid: int) -> None:
        reap(os.pidfd_open(pid), pid)
        workers.remove(pid)
        freed = limits.reclaim(pid)
        log.warning(f"worker {pid} is gone; {freed} of its slots given back")
        if not workers and not quitting.ready():
            quitting.set(0)

    for signum in REACTIONS:
        gevent.signal_handler(signum, on_signal, signum)
    watchers = [gevent.spawn(watch, pid) for pid in workers]
    signum = quitting.get()
    gevent.killall(watchers)
    with gevent.Timeout(STOP_ACCEPTING_SECONDS, False):
        _wait_end(pool.accepting)
    if signum == 0:
        log.fatal("no worker left")
        return 111
    if signum == signal.SIGINT:
        die_of_sigint()
    log.info("exiting")
    return 0


def _wait_end(fd: int) -> None:
    """Wait cooperatively for the end-of-file of the pipe fd."""
    while True:
        wait_read(fd)
        if not os.read(fd, 1):
            return


def _work(
    service: Service, listener: socket.socket, limits: Limits, alive: int, accepting: int
) -> NoReturn:
    """A worker: accept and serve until a quitting signal, or the supervisor's end."""
    server = Server(
        service, listener, limits, announce=False, stopped_accepting=lambda: os.close(accepting)
    )

    def orphaned() -> None:
        wait_read(alive)
        server.quit.set()

    gevent.spawn(orphaned)
    code = server.serve()
    sys.stderr.flush()
    os._exit(code)
