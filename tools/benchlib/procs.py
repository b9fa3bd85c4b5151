"""Every process the bench starts, and stopping them all by pid, whatever happens.

Each server and client runs in its own process group whose id is its pid, so
one ``killpg(pid)`` also takes the programs it spawned. The bench makes itself
a child subreaper, so those programs, orphaned by the kill, come back to it to
be reaped instead of lingering as zombies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import IO, Any

_PR_SET_CHILD_SUBREAPER = 36


class Interrupted(Exception):
    """SIGTERM or SIGHUP reached the bench: stop everything and exit."""


class Processes:
    """The processes the bench has started and not yet stopped."""

    def __init__(self) -> None:
        self.running: dict[int, subprocess.Popen[Any]] = {}
        self.started: list[int] = []  # every pid ever started, for the report

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = subprocess.DEVNULL,
        stderr: int | IO[Any] | None = subprocess.DEVNULL,
        text: bool = False,
    ) -> subprocess.Popen[Any]:
        with _deferred_signals():  # a stop between fork and bookkeeping would lose it
            proc = subprocess.Popen(
                list(argv),
                env=dict(env) if env is not None else None,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                text=text,
                process_group=0,
            )
            self.running[proc.pid] = proc
            self.started.append(proc.pid)
        return proc

    def stop(self, proc: subprocess.Popen[Any]) -> None:
        """Kill proc and its process group, and reap everything that leaves."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.running.pop(proc.pid, None)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        self.reap_orphans()

    def stop_all(self) -> None:
        for proc in list(self.running.values()):
            self.stop(proc)

    def reap_orphans(self, timeout: float = 5.0, kill: bool = False) -> None:
        """Wait for children the bench did not start itself (orphaned progs);
        with kill, first make sure they end."""
        deadline = time.monotonic() + timeout
        while True:
            strays = [pid for pid in _children() if pid not in self.running]
            if not strays:
                return
            for pid in strays:
                if kill:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)


def _children() -> list[int]:
    pids: list[int] = []
    for tid in os.listdir("/proc/self/task"):
        try:
            pids += [int(p) for p in Path(f"/proc/self/task/{tid}/children").read_text().split()]
        except OSError:
            pass
    return pids


class _Deferral:
    """While depth > 0, a stopping signal is only noted, and acted on at depth 0."""

    depth = 0
    pending: int | None = None


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    if _Deferral.depth:
        _Deferral.pending = signum
        return
    raise Interrupted(signal.Signals(signum).name)


@contextmanager
def _deferred_signals() -> Iterator[None]:
    _Deferral.depth += 1
    try:
        yield
    finally:
        _Deferral.depth -= 1
        if not _Deferral.depth and _Deferral.pending is not None:
            signum, _Deferral.pending = _Deferral.pending, None
            raise Interrupted(signal.Signals(signum).name)


@contextmanager
def supervised() -> Iterator[Processes]:
    """A process registry whose members are all stopped on the way out, even on
    Ctrl-C, SIGTERM, SIGHUP or an error."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    stopping = [signal.SIGTERM, signal.SIGHUP]
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        stopping.append(signal.SIGINT)  # unless SIGINT is ignored (started in the background)
    previous = {s: signal.signal(s, _interrupt) for s in stopping}
    procs = Processes()
    try:
        yield procs
    finally:
        # A stop asked for during the clean-up is noted, not lost: the bench
        # then still says it was stopped (and exits nonzero).
        noted = {s: signal.signal(s, _note) for s in (signal.SIGINT, *previous)}
        try:
            procs.stop_all()
            procs.reap_orphans(kill=True)
        finally:
            for s, handler in {**noted, **previous}.items():
                signal.signal(s, handler)
        if _Deferral.pending is not None and sys.exc_info()[0] is None:
            signum, _Deferral.pending = _Deferral.pending, None
            raise Interrupted(signal.Signals(signum).name)


def _note(signum: int, _frame: FrameType | None) -> None:
    _Deferral.pending = signum
