"""Forking so that no signal finds the new process without its handlers.

A process forked from one that serves must set up its own handlers (a
worker, on an event loop of its own) or different ones (the root helper).
Until it has, a signal sent to it would take its default action, killing it,
or wake the parent's event loop and be lost. So those signals are blocked
across the fork: in the child they wait, pending, until it has its handlers
and releases them; the parent gets its own back at once.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable


def fork_holding(signums: Iterable[int]) -> int:
    """os.fork(), the child starting with signums blocked, until release(signums)."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, set(signums))
    try:
        pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
        raise
    if pid != 0:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
    return pid


def release(signums: Iterable[int]) -> None:
    """Unblock signums: one that arrived meanwhile gets the handler set now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(signums))
