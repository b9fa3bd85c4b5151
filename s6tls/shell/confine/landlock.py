"""Landlock (linux/landlock.h): no file system at all, TCP only to the lookups'
ports, signals and abstract UNIX sockets only among the confined processes.
The syscall numbers are the same on every architecture but alpha.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

from s6tls.shell.confine.syscalls import call, libc

_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_NET_PORT = 2
_ACCESS_NET_BIND_TCP = 1
_ACCESS_NET_CONNECT_TCP = 2
_SCOPE_ABSTRACT_UNIX_SOCKET = 1
_SCOPE_SIGNAL = 2


def _fs_rights(abi: int) -> int:
    """Every file system access right a Landlock ABI version knows."""
    rights = (1 << 13) - 1  # ABI 1: execute ... make_sym
    if abi >= 2:
        rights |= 1 << 13  # refer
    if abi >= 3:
        rights |= 1 << 14  # truncate
    if abi >= 5:
        rights |= 1 << 15  # ioctl_dev
    return rights


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),  # ABI 4
        ("scoped", ctypes.c_uint64),  # ABI 6
    ]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


@dataclass(frozen=True)
class Network:
    """The TCP a confined process may still use (for its lookups)."""

    bind: tuple[int, ...] = ()  # local ports; 0 is any ephemeral one
    connect: tuple[int, ...] = ()  # remote ports


def landlock(net: Network) -> list[str]:
    """Restrict this process (and its future children) to no file system at
    all, TCP only as net allows, and signals and abstract UNIX sockets only
    among themselves. Returns what this kernel's Landlock cannot restrict."""
    syscall = libc.syscall
    abi = call("Landlock", syscall, _SYS_LANDLOCK_CREATE_RULESET, None, 0,
                _LANDLOCK_CREATE_RULESET_VERSION)  # fmt: skip
    attr = _RulesetAttr(handled_access_fs=_fs_rights(abi))
    size, missing = 8, []
    if abi >= 4:
        attr.handled_access_net = _ACCESS_NET_BIND_TCP | _ACCESS_NET_CONNECT_TCP
        size = 16
    else:
        missing.append(f"Landlock's TCP rules (ABI {abi})")
    if abi >= 6:
        attr.scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL
        size = 24
    else:
        missing.append(f"Landlock's signal and socket scopes (ABI {abi})")
    ruleset = call("Landlock", syscall, _SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
    try:
        if abi >= 4:
            ports = [(_ACCESS_NET_BIND_TCP, p) for p in net.bind]
            ports += [(_ACCESS_NET_CONNECT_TCP, p) for p in net.connect]
            for access, port in ports:
                rule = _NetPortAttr(allowed_access=access, port=port)
                call("Landlock", syscall, _SYS_LANDLOCK_ADD_RULE, ruleset,
                      _LANDLOCK_RULE_NET_PORT, ctypes.byref(rule), 0)  # fmt: skip
        call("Landlock", syscall, _SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0)
    finally:
        os.close(ruleset)
    return missing
