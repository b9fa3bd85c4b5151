"""The C calls confinement makes through ctypes (prctl, syscall), and the
error that names a layer that could not be applied."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

_PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
_PR_SET_NO_NEW_PRIVS = 38

libc = ctypes.CDLL(None, use_errno=True)


class Unavailable(Exception):
    """A layer of confinement could not be applied: "what (why)"."""


def call(what: str, function: Callable[..., int], *args: object) -> int:
    """Call a C function of the variadic kind (prctl, syscall), integers as longs."""
    result = function(*(ctypes.c_long(a) if isinstance(a, int) else a for a in args))
    if result < 0:
        raise Unavailable(f"{what} ({os.strerror(ctypes.get_errno())})")
    return result


def prctl(what: str, *args: object) -> int:
    """prctl(args), raising Unavailable(what) on failure."""
    return call(what, libc.prctl, *args)


def no_new_privs() -> None:
    """No exec may give this process privileges (seccomp asks for it)."""
    prctl("no_new_privs", _PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def no_dumping() -> None:
    """No core file, and no process of the same user may ptrace this one."""
    prctl("no dumping", _PR_SET_DUMPABLE, 0, 0, 0, 0)
