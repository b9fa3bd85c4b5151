"""The long-lived server: accept, connection limits, per-IP counts, signals.

This is upstream's s6-tcpserverd. At ``-c`` sessions it stops accepting, so
extra clients wait in the kernel's backlog; past ``-C`` sessions from one IP
it accepts and closes at once. Sessions run in this process; on SIGTERM the
listener closes and the supervised process exits at once, while a forked
copy that only drains the running sessions lets them finish.
"""

from __future__ import annotations

import errno
import os
import signal
import socket

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


class Server:
    """Accepts connections on one listening socket and runs their sessions."""

    def __init__(self, service: Service, listener: socket.socket) -> None:
        self.service = service
        self.listener = listener
        self.slots = Semaphore(service.options.maxconn)
        self.per_ip: dict[str, int] = {}
        self.sessions: set[Session] = set()
        self.greenlets = Group()
        self.quit = Event()
        self.quit_signal: int = signal.SIGTERM
        self.draining = False

    # -- accepting

    def accept_loop(self) -> None:
        opts = self.service.options
        log = self.service.log
        while True:
            self.slots.acquire()
            try:
                sock, address = self.listener.accept()
            except OSError as e:
                self.slots.release()
                if e.errno in _BACKOFF_ERRNOS:
                    log.warning(f"unable to accept: {e.strerror}; retrying")
                    gevent.sleep(BACKOFF_SECONDS)
                elif self.listener.fileno() < 0:
                    return
                continue
            ip, port = canonical_ip(address[0]), address[1]
            count = self.per_ip.get(ip, 0)
            if count >= opts.localmaxconn:
                log.notice(logline.reject(ip, port, count, opts.localmaxconn))
                sock.close()
                self.slots.release()
                continue
            self.per_ip[ip] = count + 1
            session = Session(ip, port, connnum=count)
            self.sessions.add(session)
            self.greenlets.spawn(self._serve, sock, session)

    def _serve(self, sock: socket.socket, session: Session) -> None:
        opts = self.service.options
        log = self.service.log

        def started() -> None:
            if not log.verbose:
                return
            assert session.child is not None
            count = self.per_ip[session.remote_ip]
            log.info(
                logline.accept(
                    session.remote_ip,
                    session.remote_port,
                    session.child.pid,
                    count,
                    opts.localmaxconn,
                )
            )
            log.info(logline.status(len(self.sessions), opts.maxconn))

        try:
            status = run(self.service, sock, session, started)
        finally:
            self._release(session)
        if status is not None and log.verbose and not self.draining:
            pid = session.child.pid if session.child else 0
            count = self.per_ip.get(session.remote_ip, 0)
            log.info(logline.end(pid, status, count, opts.localmaxconn))
            log.info(logline.status(len(self.sessions), opts.maxconn))

    def _release(self, session: Session) -> None:
        self.sessions.discard(session)
        left = self.per_ip[session.remote_ip] - 1
        if left:
            self.per_ip[session.remote_ip] = left
        else:
            del self.per_ip[session.remote_ip]
        self.slots.release()

    # -- signals

    def signal_progs(self, *signums: int) -> None:
        for session in list(self.sessions):
            if session.child is not None:
                for signum in signums:
                    session.child.signal(signum)

    def _on_signal(self, signum: int) -> None:
        log = self.service.log
        if signum == signal.SIGHUP:
            log.info("received SIGHUP, sending SIGTERM and SIGCONT to all connections")
            self.signal_progs(signal.SIGTERM, signal.SIGCONT)
            return
        if signum == signal.SIGTERM:
            log.info("received SIGTERM, quitting")
        elif signum == signal.SIGQUIT:
            log.info(
                "received SIGQUIT, sending SIGTERM and SIGCONT to all connections and quitting"
            )
            self.signal_progs(signal.SIGTERM, signal.SIGCONT)
        elif signum == signal.SIGABRT:
            log.info("received SIGABRT, sending SIGKILL to all connections and quitting")
            self.signal_progs(signal.SIGKILL)
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
        if self.sessions and fork_gevent() == 0:
            self._drain()
        if self.quit_signal == signal.SIGINT:
            # Upstream does not trap SIGINT: it dies of it, silently, and its
            # sessions (separate processes) live on; so do ours, in the drainer.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        self.service.log.info("exiting")
        return 0

    def _drain(self) -> None:
        """In the forked copy: finish the running sessions silently, then exit."""
        self.draining = True
        self.service.log.verbosity = 0
        self.greenlets.join()
        os._exit(0)
