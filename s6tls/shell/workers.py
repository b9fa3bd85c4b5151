"""Worker processes: every core the load needs, one process when it is quiet.

The process that was started serves, as a lone server would
(``s6tls.shell.server``), and forks workers that serve beside it:

- by default, half as many again whenever every serving process had work
  all through the last second and there are more sessions than processes
  (one session cannot be split), up to the CPUs the server may run on; once
  the load of the last QUIET_SAMPLES seconds would have fitted in fewer
  processes, at RETIRE_SHARE of a core each, the newest workers retire: they
  stop accepting, finish their sessions and exit. Idle, the server is one
  process again, and costs what a lone server costs;
- with S6TLS_WORKERS=N, N-1 workers, always.

A worker that dies is replaced. Workers share only the listening socket and
the limits table (``s6tls.shell.limits``), which keeps -c, -C and TCPCONNNUM
exact however many processes accept; each gets every signal the server gets
and acts on it, silently, for its own progs.

A worker is forked from a process that is serving, so it inherits that
process's sessions and must leave them alone: it never runs the inherited
event loop again (its greenlets stay suspended, and referenced, so that none
ever resumes or cleans up), it closes every inherited descriptor but those
it serves with, and it starts an event loop of its own.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, Protocol

import gevent
from gevent import socket as gsocket
from gevent.event import Event
from gevent.hub import Hub, get_hub, set_hub
from gevent.socket import wait_read

from s6tls import logline
from s6tls.shell.descriptors import close_all_but, reserved
from s6tls.shell.fdio import to_null
from s6tls.shell.load import busy_ns
from s6tls.shell.server import REACTIONS, Server
from s6tls.shell.sigmask import fork_holding, release
from s6tls.shell.spawn import reap

MAX_WORKERS = 64

# Every SAMPLE_SECONDS, the share of a core each serving process wanted
# (running, or runnable and waiting for a CPU).
SAMPLE_SECONDS = 1.0
# A process that wanted a core this much of a sample was saturated: one that
# holds many sessions waits on their peers for a part of the time, however
# busy (16 cores, 192 sessions on two processes: 86% each).
BUSY_SHARE = 0.8
# Workers retire once the others could have carried the load of the last
# QUIET_SAMPLES samples at this share of a core each.
RETIRE_SHARE = 0.6
QUIET_SAMPLES = 10
# Below this share, the lone server is idle: the next sample waits for a client.
IDLE_SHARE = 0.02
# A worker that dies younger than this is replaced only once this long has passed.
RESTART_SECONDS = 1.0
# How long the server, told to quit, waits for the workers to stop accepting.
STOP_ACCEPTING_SECONDS = 5.0


@dataclass(frozen=True)
class Policy:
    """How many processes serve, the server included: at least least, at most most."""

    least: int
    most: int

    @classmethod
    def default(cls) -> Policy:
        """One process, growing while busy up to one per CPU the server may run on."""
        return cls(1, max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS)))


class Root(Protocol):
    """With privilege separation, what the root helper does for the pool."""

    def channel(self) -> int:
        """A new channel to the helper, for a new worker."""

    def busy_ns(self, pids: list[int]) -> dict[int, int]:
        """busy_ns, read by the helper."""


@dataclass
class _Worker:
    born: float
    retiring: bool = False


class Pool:
    """The workers of a server, seen from the server."""

    def __init__(self, server: Server, policy: Policy, root: Root | None = None) -> None:
        """root: with privilege separation, the root helper."""
        self.server = server
        self.policy = policy
        self.root = root
        self.busy_ns = root.busy_ns if root else busy_ns
        self.workers: dict[int, _Worker] = {}
        self.stopping = False
        self._activity = Event()
        self._greenlets: set[gevent.Greenlet] = set()
        # Every serving process holds the writing end while it accepts: at the
        # end-of-file, no process accepts any more.
        self._accepting_r, self._accepting_w = os.pipe2(os.O_CLOEXEC)
        # Only the server holds the writing end: at the end-of-file, the
        # workers know it is gone.
        self._alive_r, self._alive_w = os.pipe2(os.O_CLOEXEC)

    def start(self) -> None:
        for _ in range(self.policy.least - 1):
            self._fork()
        if self.policy.most > self.policy.least:
            self._spawn(self._scale)

    # -- what the server tells us (s6tls.shell.server.Beside)

    def signal(self, signum: int) -> None:
        for pid in list(self.workers):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def accepted(self) -> None:
        self._activity.set()

    def stop(self) -> None:
        self.stopping = True
        gevent.killall(list(self._greenlets))
        os.close(self._alive_w)
        os.close(self._accepting_w)  # the server itself no longer accepts

    def wait_stopped(self) -> None:
        with gevent.Timeout(STOP_ACCEPTING_SECONDS, False):
            _wait_end(self._accepting_r)

    # -- workers coming and going

    def _spawn(self, run: Callable[..., None], *args: object) -> None:
        greenlet = gevent.spawn(run, *args)
        self._greenlets.add(greenlet)
        greenlet.link(self._greenlets.discard)

    def _fork(self) -> None:
        log = self.server.service.log
        try:
            channel = self.root.channel() if self.root else None
            pid = fork_holding(REACTIONS)  # until the worker reacts to them (_work)
        except OSError as e:
            log.warning(f"unable to start a worker: {e.strerror or e}")
            return
        if pid == 0:
            _work(self.server, channel, self._alive_r, self._accepting_w)
        if channel is not None:
            os.close(channel)
        self.workers[pid] = _Worker(time.monotonic())
        self._spawn(self._watch, pid, os.pidfd_open(pid))
        log.info(f"worker {pid} started, {1 + len(self.workers)} processes serve")

    def _retire(self, pid: int) -> None:
        self.workers[pid].retiring = True
        os.kill(pid, signal.SIGTERM)  # it stops accepting, finishes its sessions and exits

    def _watch(self, pid: int, pidfd: int) -> None:
        status = reap(pidfd, pid)
        worker = self.workers.pop(pid)
        freed = self.server.limits.reclaim(pid)
        log = self.server.service.log
        if worker.retiring and status == 0:
            log.info(f"worker {pid} retired")
            return
        how = logline.how_ended(status) if status is not None else "its end unknown"
        replace = not worker.retiring and not self.stopping
        log.warning(
            f"worker {pid} died ({how}); {freed} of its slots given back"
            + ("; starting another" if replace else "")
        )
        if replace:
            gevent.sleep(max(0.0, worker.born + RESTART_SECONDS - time.monotonic()))
            self._fork()

    def _scale(self) -> None:
        """Add workers while every serving process is saturated; retire the
        newest once the load of the last samples fits in fewer. The load is
        read through the root helper, with TLS_UID: once it is gone, the
        server stops (exit 111), and so does this."""
        try:
            self._follow_the_load()
        except OSError:
            pass

    def _follow_the_load(self) -> None:
        loads: deque[float] = deque(maxlen=QUIET_SAMPLES)
        me = os.getpid()
        busy, then = self.busy_ns([me]), time.monotonic()
        while True:
            if not self.workers and loads and loads[-1] < IDLE_SHARE:
                self._activity.clear()
                self._activity.wait()
                loads.clear()
                busy, then = self.busy_ns([me]), time.monotonic()
            gevent.sleep(SAMPLE_SECONDS)
            serving = [me, *(pid for pid, w in self.workers.items() if not w.retiring)]
            now, busy_now = time.monotonic(), self.busy_ns(serving)
            shares = []
            for pid in serving:
                born = self.workers[pid].born if pid in self.workers else then
                span = now - max(then, born)
                shares.append((busy_now[pid] - busy.get(pid, 0)) / 1e9 / span if span else 0)
            busy, then = busy_now, now
            loads.append(sum(shares))
            # One session cannot be split: a worker helps only if there are more.
            more = self.server.limits.total() > len(serving)
            if min(shares) >= BUSY_SHARE and more and len(serving) < self.policy.most:
                # Half as many again: 1, 2, 3, 5, 8, 12 ... processes, a second apart.
                for _ in range(min(self.policy.most - len(serving), (len(serving) + 1) // 2)):
                    self._fork()
                loads.clear()
            elif len(loads) == QUIET_SAMPLES:
                keep = max(self.policy.least, math.ceil(max(loads) / RETIRE_SHARE))
                newest = sorted(serving[1:], key=lambda pid: self.workers[pid].born)[::-1]
                for pid in newest[: len(serving) - keep]:
                    self._retire(pid)


def _wait_end(fd: int) -> None:
    """Wait cooperatively for the end-of-file of the pipe fd."""
    while True:
        wait_read(fd)
        if not os.read(fd, 1):
            return


# The event loops a worker inherited: kept, never run, so that nothing
# they hold is ever finalized (which would close descriptors by number).
_INHERITED: list[object] = []


def _leave_inherited(server: Server, keep: set[int]) -> None:
    """Turn away from the parent's event loop and sessions, for good."""
    _INHERITED.append(get_hub())
    for handler in server.signal_handlers:
        handler.cancel()  # from now on, signals wake the new loop
    close_all_but(keep)
    set_hub(Hub(default=False))


def _work(server: Server, channel: int | None, alive: int, accepting: int) -> NoReturn:
    """A new worker: serve on server's socket until a quitting signal, or
    until the server is gone."""
    code = 111
    try:
        listener = server.listener.fileno()
        keep = {0, 1, 2, listener, alive, accepting, *server.limits.fds(), *reserved()}
        if channel is not None:
            keep.add(channel)
        _leave_inherited(server, keep)
        to_null(1)  # -1: only the server holds the stdout whose end is awaited
        service = server.service
        if channel is not None:
            from s6tls.shell.privsep.client import HelperClient  # with TLS_UID only
            from s6tls.shell.privsep.startup import serve_through

            serve_through(service, HelperClient(socket.socket(fileno=channel)))
        worker = Server(
            service,
            gsocket.socket(fileno=listener),
            server.limits,
            announce=False,
            stopped_accepting=lambda: os.close(accepting),
        )
        worker.handle_signals()
        release(REACTIONS)  # held since the fork: now they get their reaction

        def orphaned() -> None:
            _wait_end(alive)
            worker.quit.set()

        gevent.spawn(orphaned)
        code = worker.serve()
    except Exception as e:
        server.service.log.warning(f"worker {os.getpid()}: {e}")
    finally:
        sys.stderr.flush()
        os._exit(code)
