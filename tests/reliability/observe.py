"""What a running server holds, as seen from /proc: descriptors by type, children, memory, CPU.

The reliability tests compare these before and after a load to prove that
nothing leaked: every session's socket, pipes and pidfd closed, every prog
reaped, memory back where it was.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tests.support import probes
from tests.support.server import wait_for

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """pid's resident memory (VmRSS) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def private_kib(pid: int) -> int:
    """Memory that is pid's alone (private clean + dirty pages, "USS"), in KiB:
    what one more such process costs the machine, whatever else shares its libraries."""
    fields = dict(
        line.split(":") for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]
    )
    return int(fields["Private_Clean"].split()[0]) + int(fields["Private_Dirty"].split()[0])


def mapped_files(pid: int) -> set[str]:
    """The files pid has mapped: its executable, shared libraries, extension modules."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {fields[5] for fields in (line.split(maxsplit=5) for line in lines) if len(fields) > 5}


def cpu_seconds(pid: int) -> float:
    """CPU time pid has used so far (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


@dataclass(frozen=True)
class Snapshot:
    """A server's resources at one moment."""

    fds: Counter[str]
    children: int  # every descendant
    zombies: int
    rss_kib: int

    def describe(self) -> str:
        fds = ",".join(f"{k}={v}" for k, v in sorted(self.fds.items()))
        return (
            f"fds {sum(self.fds.values())} ({fds}) children {self.children} "
            f"zombies {self.zombies} RSS {self.rss_kib / 1024:.1f} MiB"
        )


def descendants(pid: int) -> list[int]:
    """pid's children, their children, and so on (with -U or TLS_UID, progs are a helper's)."""
    found: list[int] = []
    stack = probes.children(pid)
    while stack:
        child = stack.pop()
        found.append(child)
        stack += probes.children(child)
    return found


def snapshot(pid: int) -> Snapshot:
    kids = descendants(pid)
    zombies = [k for k in kids if probes.state(k) == "Z"]
    return Snapshot(probes.fd_kinds(pid), len(kids), len(zombies), rss_kib(pid))


def idle(pid: int) -> Snapshot:
    """The baseline of a server that serves nothing yet, once -1 has closed its stdout."""
    assert wait_for(lambda: os.readlink(f"/proc/{pid}/fd/1") == os.devnull)
    return snapshot(pid)


def settle(pid: int, idle: Snapshot, timeout: float = 20.0) -> Snapshot:
    """Wait until pid holds the descriptors and children it held at idle; return what it holds then.

    Sessions end a moment after their clients saw EOF, and workers that the
    load added retire once it has been quiet for ten seconds, so the count is
    polled; the caller compares the result with the idle snapshot.
    """
    deadline = time.monotonic() + timeout
    while True:
        now = snapshot(pid)
        if (now.fds == idle.fds and now.children == idle.children) or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


class RssWatch:
    """Samples a process's RSS in the caller's loop and keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = rss_kib(pid)
        self.peak = self.start

    def sample(self) -> int:
        now = rss_kib(self.pid)
        self.peak = max(self.peak, now)
        return now

    def watch(self, seconds: float, interval: float = 0.05) -> None:
        """Sample for a while, e.g. while the server is under backpressure."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.sample()
            time.sleep(interval)

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.start) / 1024
