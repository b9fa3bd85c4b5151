"""The long-lived server: accept, connection limits, per-IP counts, signals.

This is upstream's s6-tcpserverd. At ``-c`` sessions it stops accepting, so
extra clients wait in the kernel's backlog; past ``-C`` sessions from one IP
it accepts and closes at once. The counts live in ``s6tls.shell.limits``,
exact however many processes accept. Sessions run as greenlets of the
accepting process; worker processes (``s6tls.shell.workers``) may serve
beside it. On SIGTERM the listener closes and the supervised process exits at
once, while the running sessions finish elsewhere.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import gevent
from gevent.event import Event
from gevent.os import fork_gevent

from s6tls import logline
from s6tls.shell.limits import Limits
from s6tls.shell.service import Service
from s6tls.shell.session import Session, canonical_ip, run

# accept() errors that mean "out of resources for now": back off, then retry.
_BACKOFF_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
BACKOFF_SECONDS = 0.1


@dataclass(frozen=True)
class Reaction:
    """What a signal does: the log line, the signals progs get, whether to quit."""

    message: str | None
    to_progs: tuple[int, ...] = ()
    quits: bool = True


_TERM_CONT = (signal.SIGTERM, signal.SIGCONT)
REACTIONS: dict[int, Reaction] = {
    signal.SIGHUP: Reaction(
        "received SIGHUP, sending SIGTERM and SIGCONT to all connections", _TERM_CONT, False
    ),
    signal.SIGTERM: Reaction("received SIGTERM, quitting"),
    signal.SIGQUIT: Reaction(
        "received SIGQUIT, sending SIGTERM and SIGCONT to all connections and quitting",
        _TERM_CONT,
    ),
    signal.SIGABRT: Reaction(
        "received SIGABRT, sending SIGKILL to all connections and quitting", (signal.SIGKILL,)
    ),
    # Upstream does not trap SIGINT: it dies of it, silently, and its sessions
    # (separate processes) live on; so do ours.
    signal.SIGINT: Reaction(None),
}


Started = Callable[[], None]
Ended = Callable[[int | None], None]  # prog's wait status, None if it never ran


def die_of_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)


class Sessions:
    """The running sessions, as greenlets of this process."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.greenlets: set[gevent.Greenlet] = set()
        self.running: set[Session] = set()

    def start(self, sock: socket.socket, session: Session, started: Started, ended: Ended) -> None:
        """Run the session; started() when prog runs, ended(wait status) at the end."""
        self.running.add(session)
        self.greenlets.add(gevent.spawn(self._serve, sock, session, started, ended))

    def _serve(self, sock: socket.socket, session: Session, started: Started, ended: Ended) -> None:
        status = None
        try:
            status = run(self.service, sock, session, started)
        finally:
            self.running.discard(session)
            self.greenlets.discard(gevent.getcurrent())
            ended(status)

    def join(self) -> None:
        """Wait for the end of every running session."""
        while self.greenlets:
            gevent.joinall(list(self.greenlets))

    def signal_progs(self, signums: Sequence[int]) -> None:
        for session in list(self.running):
            if session.child is not None:
                for signum in signums:
                    session.child.signal(signum)

    def detach(self, in_copy: Callable[[], None]) -> None:
        """This process quits now: a forked copy finishes the running sessions
        (and first calls in_copy)."""
        if self.running and fork_gevent() == 0:
            self.service.log.verbosity = 0
            in_copy()
            self.join()
            os._exit(0)


class Beside(Protocol):
    """Worker processes that serve beside the supervised one."""

    def signal(self, signum: int) -> None:
        """Pass on a signal the server got."""

    def accepted(self) -> None:
        """The server accepted a connection (there is load to watch)."""

    def stop(self) -> None:
        """The server stopped accepting: stop adding workers and tell them so."""

    def wait_stopped(self) -> None:
        """Wait (a few seconds at most) until no worker accepts any more."""


class Server:
    """Accepts connections on one listening socket and runs their sessions.

    ``announce``: this process speaks for the server (logs the signals it
    gets, and quits at once); a worker acts on them silently and finishes
    its sessions before it exits.
    """

    def __init__(
        self,
        service: Service,
        listener: socket.socket,
        limits: Limits,
        announce: bool = True,
        stopped_accepting: Callable[[], None] = lambda: None,
    ) -> None:
        self.service = service
        self.listener = listener
        self.limits = limits
        self.announce = announce
        self.stopped_accepting = stopped_accepting  # tells a worker's supervisor, or systemd
        self.sessions = Sessions(service)
        self.quit = Event()
        self.quit_signal: int = signal.SIGTERM
        self.exit_code = 0
        self.workers: Beside | None = None
        self.signal_handlers: list[Any] = []

    # -- accepting

    def accept_loop(self) -> None:
        log = self.service.log
        limits = self.limits
        starved = False
        while True:
            slot = limits.take()
            try:
                sock, address = self.listener.accept()
            except OSError as e:
                limits.give_back(slot)
                if e.errno in _BACKOFF_ERRNOS:
                    if not starved:  # once per episode: accept() fails until fds free up
                        log.warning(f"unable to accept: {e.strerror}; retrying")
                    starved = True
                    gevent.sleep(BACKOFF_SECONDS)
                elif self.listener.fileno() < 0:
                    return
                continue
            except BaseException:
                limits.give_back(slot)  # stopped while waiting: other processes go on
                raise
            starved = False
            if self.workers:
                self.workers.accepted()
            ip, port = canonical_ip(address[0]), address[1]
            admitted, count = limits.admit(slot, ip)
            if not admitted:
                log.notice(logline.reject(ip, port, count, limits.localmax))
                sock.close()
                limits.give_back(slot)
                continue
            session = Session(ip, port, connnum=count)
            self.sessions.start(
                sock, session, partial(self._started, session), partial(self._ended, session, slot)
            )

    def _started(self, session: Session) -> None:
        assert session.child is not None
        session.pid = session.child.pid
        log = self.service.log
        if log.verbose:
            count, total = self.limits.counts(session.remote_ip)
            ip, port = session.remote_ip, session.remote_port
            log.info(logline.accept(ip, port, session.pid, count, self.limits.localmax))
            log.info(logline.status(total, self.limits.maxconn))

    def _ended(self, session: Session, slot: int, status: int | None) -> None:
        self.limits.release(slot)
        log = self.service.log
        if status is not None and log.verbose:
            left, total = self.limits.counts(session.remote_ip)
            log.info(logline.end(session.pid, status, left, self.limits.localmax))
            log.info(logline.status(total, self.limits.maxconn))

    # -- signals

    def _on_signal(self, signum: int) -> None:
        reaction = REACTIONS[signum]
        if self.announce and reaction.message:
            self.service.log.info(reaction.message)
        if self.workers:
            self.workers.signal(signum)
        self.sessions.signal_progs(reaction.to_progs)
        if reaction.quits:
            self.quit_signal = signum
            self.quit.set()

    def fail(self, why: str) -> None:
        """Quit as on SIGTERM (running sessions go on), and exit 111: for
        what leaves the server unable to serve, unless it is quitting already."""
        if not self.quit.is_set():
            self.service.log.fatal(why)
            self.exit_code = 111
            self.quit.set()

    # -- running

    def handle_signals(self) -> None:
        """React to every signal of REACTIONS from now on, even before serve()
        runs the event loop: done before readiness is announced."""
        if not self.signal_handlers:
            for signum in REACTIONS:
                self.signal_handlers.append(gevent.signal_handler(signum, self._on_signal, signum))

    def serve(self) -> int:
        """Serve until a quitting signal; return the exit code."""
        self.handle_signals()
        acceptor = gevent.spawn(self.accept_loop)
        self.quit.wait()
        acceptor.kill()
        self.listener.close()
        self.stopped_accepting()
        if not self.announce:
            self.sessions.join()
            return 0
        if self.workers:
            self.workers.stop()
        # The copy that drains passes no signal on: the workers get their
        # own, and their pids may be reused by then.
        self.sessions.detach(in_copy=partial(setattr, self, "workers", None))
        if self.workers:
            self.workers.wait_stopped()
        if self.quit_signal == signal.SIGINT:
            die_of_sigint()
        self.service.log.info("exiting")
        return self.exit_code
