"""Server-side memory (PSS) and CPU time, and the machine's idle time, read from /proc.

The server side of a server under test is its own process plus every
descendant still running the same executable: socat's per-connection forks
count, the progs that any server spawned (``cat`` and the like) do not.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from the 3rd on


def _parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                parents[int(name)] = int(_stat_fields(int(name))[1])
            except (OSError, ValueError, IndexError):
                pass
    return parents


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _split(root: int) -> tuple[list[int], list[int]]:
    """root's side (root and its descendants that run root's executable), and the rest
    of its descendants (the progs)."""
    parents = _parents()
    exe = _exe(root)
    found, frontier = [root], [root]
    others: list[int] = []
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent:
                frontier.append(pid)
                (found if _exe(pid) == exe else others).append(pid)
    return found, others


def server_pids(root: int) -> list[int]:
    """root and its descendants that run root's executable."""
    return _split(root)[0]


def progs_left(root: int) -> int:
    """How many of root's descendants run another executable (progs not yet reaped)."""
    return len(_split(root)[1])


def _field(path: str, name: str) -> int:
    """The number after ``name`` in a /proc file of ``Name: value`` lines (0 if gone)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(name):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size of one process, in KiB (0 if it is gone)."""
    return _field(f"/proc/{pid}/smaps_rollup", "Pss:")


def rss_kib(pid: int) -> int:
    """Resident set size of one process, in KiB (0 if it is gone)."""
    return _field(f"/proc/{pid}/smaps_rollup", "Rss:")


def server_pss_kib(root: int) -> tuple[int, int]:
    """Total PSS of the server side of root, and how many processes that is."""
    pids = server_pids(root)
    return sum(pss_kib(p) for p in pids), len(pids)


def server_memory_kib(root: int) -> tuple[int, int, int]:
    """PSS and RSS summed over the server side of root, and how many processes."""
    pids = server_pids(root)
    return sum(pss_kib(p) for p in pids), sum(rss_kib(p) for p in pids), len(pids)


def switches(pids: list[int]) -> dict[int, int]:
    """Voluntary context switches of each process (the times it went to sleep)."""
    return {p: _field(f"/proc/{p}/status", "voluntary_ctxt_switches:") for p in pids}


CpuSnapshot = dict[int, tuple[float, float]]


def server_cpu(root: int) -> CpuSnapshot:
    """Each process of the server side of root: its own CPU seconds, and its
    reaped children's."""
    return {pid: cpu_seconds(pid) for pid in server_pids(root)}


def cpu_used(before: CpuSnapshot, after: CpuSnapshot) -> tuple[float, float] | None:
    """Own and reaped children's CPU seconds used between two snapshots.

    None when a process of the first is gone: a worker that ended, whose time
    has moved into its parent's children's figure with the progs'.
    """
    if not before.keys() <= after.keys():
        return None
    own = sum(a[0] - before.get(pid, (0.0, 0.0))[0] for pid, a in after.items())
    children = sum(a[1] - before.get(pid, (0.0, 0.0))[1] for pid, a in after.items())
    return own, children


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User + system time of one process (all its threads), and of its reaped children."""
    try:
        fields = _stat_fields(pid)
    except OSError:
        return 0.0, 0.0
    own = (int(fields[11]) + int(fields[12])) / _TICK
    children = (int(fields[13]) + int(fields[14])) / _TICK
    return own, children


def machine_ticks() -> tuple[int, int]:
    """The whole machine's CPU ticks since boot: idle (with iowait), and all."""
    first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, first[1:9])
    return idle + iowait, user + nice + system + idle + iowait + irq + softirq + steal
