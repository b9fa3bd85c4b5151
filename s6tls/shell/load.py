"""How busy a process is, from /proc: what the worker pool grows and shrinks by.

Its own module, so that both the pool (``s6tls.shell.workers``) and the root
helper (``s6tls.shell.privsep.helper``), which reads /proc for a confined
server, use it without importing each other.
"""

from __future__ import annotations

import os


def busy_ns(pids: list[int]) -> dict[int, int]:
    """For each process, how long it ran or waited to run, in ns (since it started).

    Read in /proc, which a confined server cannot open: the root helper then
    reads it (s6tls.shell.privsep.helper).
    """
    busy = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat", "rb") as f:
                running, waiting = f.read().split()[:2]
            busy[pid] = int(running) + int(waiting)
        except (OSError, ValueError):
            busy[pid] = _cpu_ns(pid)
    return busy


_TICK_NS = 1e9 / os.sysconf("SC_CLK_TCK")


def _cpu_ns(pid: int) -> int:
    """CPU time of a process, in ns, where the kernel keeps no schedstat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int((int(fields[11]) + int(fields[12])) * _TICK_NS)
    except (OSError, ValueError, IndexError):
        return 0
