"""The descriptor limit: as many as ``-c`` needs for the server, the original for prog.

Upstream forks a process per connection, so every session has a descriptor
table of its own. Here one process holds every session's socket, pipes and
pidfd, so the soft ``RLIMIT_NOFILE`` most supervisors leave (1024) would stop
it at about 250 sessions. At start-up the soft limit is raised to what ``-c``
needs, up to the hard limit; prog still starts with the soft limit the server
was given, as upstream's progs do (programs built on select(), or that close
every descriptor up to the limit, suffer from a high one).
"""

from __future__ import annotations

import itertools
import os
import resource
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from s6tls.shell.fdio import NULL

# Per session: the socket, our ends of prog's two pipes and its pidfd, and
# one more while a DNS or IDENT lookup or prog's start holds another.
PER_SESSION = 5
# The rest: standard descriptors, the listening socket, the event loop, the
# limits table, the pipes between processes, the helper's channels, key files
# being loaded, a pidfd per worker (at most 64).
FIXED = 128

_NOFILE = resource.RLIMIT_NOFILE


@dataclass(frozen=True)
class _ProgLimit:
    """What starting prog under a lower limit takes (see start_prog)."""

    soft: int  # the soft limit prog gets
    low: tuple[int, int]  # two descriptor numbers below it, kept for prog's pipes


# Set once at start-up, when the server raised its soft limit.
_prog: _ProgLimit | None = None


def needed(maxconn: int) -> int:
    """Descriptors a process must be able to open to hold maxconn sessions."""
    return PER_SESSION * maxconn + FIXED


def raise_for(maxconn: int) -> str | None:
    """Raise the soft limit to what maxconn sessions need, up to the hard limit.

    Returns a warning when the hard limit falls short, None otherwise.
    """
    global _prog
    soft, hard = resource.getrlimit(_NOFILE)
    want = needed(maxconn)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return None
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if new > soft:
        low = (os.dup(NULL), os.dup(NULL))
        for fd in low:
            os.set_inheritable(fd, False)
        if max(low) < soft:  # always, unless stdio is all the old limit allows
            _prog = _ProgLimit(soft, low)
            resource.setrlimit(_NOFILE, (new, hard))
        else:
            for fd in low:
                os.close(fd)
    if new >= want:
        return None
    return (
        f"-c {maxconn} needs {want} descriptors but the hard limit is {hard}: "
        f"at about {(hard - FIXED) // PER_SESSION} sessions new clients will wait; "
        "raise it (ulimit -n, LimitNOFILE= in a systemd unit, "
        "s6-softlimit -o / s6-hardlimit -o in a run script) or lower -c"
    )


def reserved() -> list[int]:
    """Descriptors kept open for the life of the process."""
    return [NULL] if _prog is None else [*_prog.low, NULL]


def start_prog(stdin: int, stdout: int, spawn: Callable[[int, int], int]) -> int:
    """Start prog with ``spawn(stdin, stdout) -> pid`` under the soft limit it must get.

    posix_spawn cannot set a limit in the child, so the server lowers its own
    soft limit for the duration of the spawn: the child, made by vfork,
    copies it. Nothing else runs meanwhile (one thread), and a lower soft
    limit only refuses new descriptors: those open stay. glibc refuses to
    pass a descriptor at or above the soft limit to the child, so pipe ends
    numbered that high are first moved to the two low numbers kept for them.
    """
    if _prog is None:
        return spawn(stdin, stdout)
    low_in, low_out = _prog.low
    if stdin >= _prog.soft:
        stdin = os.dup2(stdin, low_in, inheritable=False)
    if stdout >= _prog.soft:
        stdout = os.dup2(stdout, low_out, inheritable=False)
    soft, hard = resource.getrlimit(_NOFILE)
    resource.setrlimit(_NOFILE, (_prog.soft, hard))
    try:
        return spawn(stdin, stdout)
    finally:
        resource.setrlimit(_NOFILE, (soft, hard))
        for fd in _prog.low:
            os.dup2(NULL, fd, inheritable=False)  # let the pipes go


def close_all_but(keep: Iterable[int]) -> None:
    """Close every descriptor of this process but those in keep (without
    listing /proc/self/fd, which a confined process cannot read)."""
    bounds = [-1, *sorted(set(keep)), resource.getrlimit(_NOFILE)[0]]
    for kept, next_kept in itertools.pairwise(bounds):
        if next_kept > kept + 1:  # closerange(a, b) with b <= a would close all from a
            os.closerange(kept + 1, next_kept)
