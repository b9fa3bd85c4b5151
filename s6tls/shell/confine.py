"""Confinement of the TLS engine: what a taken-over TLS process can still do.

With privilege separation (``s6tls.shell.privsep``) the process that parses
TLS from the network needs, once it has dropped to TLS_UID, no file, no new
program and no new identity: the root helper opens files, starts progs and
looks up rules for it. So, after the drop, that process confines itself for
good, and every worker it forks inherits it:

- ``no_new_privs``: no exec could give privileges back (nor any exec at all,
  below);
- not dumpable, and no core files: no memory image with key material on
  disk, and no process of TLS_UID may ptrace it or read its memory;
- Landlock: no file system access at all (every right the kernel knows is
  handled, none granted); TCP ``bind``/``connect`` only to what the lookups
  need (connect to port 53 for DNS, and a bind to an ephemeral port plus a
  connect to port 113 for IDENT); no signal to a process outside the
  confined ones, no abstract UNIX socket outside them;
- a seccomp filter (libseccomp's, for its handling of every architecture's
  syscall numbers and compat ABIs) that refuses with EPERM: ``execve``,
  ``execveat``, ``ptrace``, ``process_vm_readv``/``writev``, mounts and
  namespaces, ``bpf``, ``perf_event_open``, ``userfaultfd``, io_uring, the
  kernel keyring, every ``set*id`` and ``setgroups``, ``capset``, changes
  of file ownership, modes, times and extended attributes, and ``socket``
  itself, but for UDP and TCP over IPv4 or IPv6 when lookups are on.

A kernel without Landlock, or a system without libseccomp, does not stop
the server: what could not be applied is named in one start-up warning.
Without privilege separation the server starts prog itself, and prog would
inherit all this (under no_new_privs, no setuid program such as qmail-queue
works), so nothing is applied there.

How: Landlock through three syscalls called with ctypes here (their numbers
are the same on every architecture; a binding would be one more dependency,
and those on PyPI are young); seccomp through libseccomp, also with ctypes,
rather than a filter of our own: the syscall numbers of each architecture
and the compat ABIs (i386's int 0x80 and x32 on x86-64, which a deny-list
must refuse) are what it gets right. libseccomp compiles the filter in a
short-lived child at start-up, and the TLS engine only loads the program
(prctl): it never maps libseccomp, and neither it nor the root helper keeps
the memory the compiler took. Of the resource limits only the core
size is set: RLIMIT_NPROC counts every process of TLS_UID on the machine,
a memory limit would turn a busy moment into a crash, and the engine writes
no file.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import os
import resource
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial

from s6tls.ident import IDENT_PORT
from s6tls.options import ClientCert, Options
from s6tls.resolvconf import DNS_PORT

_PR_SET_DUMPABLE = 4
_PR_SET_SECCOMP = 22
_PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(None, use_errno=True)


class Unavailable(Exception):
    """A layer of confinement could not be applied: "what (why)"."""


def _call(what: str, function: Callable[..., int], *args: object) -> int:
    """Call a C function of the variadic kind (prctl, syscall), integers as longs."""
    result = function(*(ctypes.c_long(a) if isinstance(a, int) else a for a in args))
    if result < 0:
        raise Unavailable(f"{what} ({os.strerror(ctypes.get_errno())})")
    return result


# -- Landlock (linux/landlock.h; the syscall numbers are the same on every
# architecture but alpha)

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
    syscall = _libc.syscall
    abi = _call("Landlock", syscall, _SYS_LANDLOCK_CREATE_RULESET, None, 0,
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
    ruleset = _call("Landlock", syscall, _SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
    try:
        if abi >= 4:
            ports = [(_ACCESS_NET_BIND_TCP, p) for p in net.bind]
            ports += [(_ACCESS_NET_CONNECT_TCP, p) for p in net.connect]
            for access, port in ports:
                rule = _NetPortAttr(allowed_access=access, port=port)
                _call("Landlock", syscall, _SYS_LANDLOCK_ADD_RULE, ruleset,
                      _LANDLOCK_RULE_NET_PORT, ctypes.byref(rule), 0)  # fmt: skip
        _call("Landlock", syscall, _SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0)
    finally:
        os.close(ruleset)
    return missing


# -- seccomp, through libseccomp (seccomp.h)

_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_CMP_EQ = 4
_SCMP_CMP_GE = 5
_SCMP_CMP_MASKED_EQ = 7
_AF_MAX = 64  # above every address family Linux has (46 in 6.x)
_SOCK_TYPE_MASK = 0xF


def _scmp_act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class Filter:
    """A seccomp filter that allows every call but the ones refused."""

    def __init__(self) -> None:
        try:
            self._lib = ctypes.CDLL("libseccomp.so.2")
        except OSError:
            raise Unavailable("seccomp (no libseccomp.so.2)") from None
        self._lib.seccomp_init.restype = ctypes.c_void_p
        self._lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(_ArgCmp),
        ]
        self._lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self._lib.seccomp_release.argtypes = [ctypes.c_void_p]
        self._ctx = self._lib.seccomp_init(_SCMP_ACT_ALLOW)
        if not self._ctx:
            raise Unavailable("seccomp (seccomp_init failed)")

    def refuse(self, name: str, code: int = errno.EPERM, *args: tuple[int, int, int, int]) -> None:
        """Refuse syscall name with code, where every (arg, op, a, b) comparison holds.

        A call this architecture does not have is skipped.
        """
        number = self._lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:
            return
        cmps = (_ArgCmp * max(1, len(args)))(*(_ArgCmp(*a) for a in args))
        result = self._lib.seccomp_rule_add_array(
            self._ctx, _scmp_act_errno(code), number, len(args), cmps
        )
        if result < 0:
            raise Unavailable(f"seccomp ({name}: {os.strerror(-result)})")

    def export(self, fd: int) -> None:
        """Write the filter's BPF program to fd, in the kernel's format (and release it)."""
        try:
            result = self._lib.seccomp_export_bpf(self._ctx, fd)
            if result < 0:
                raise Unavailable(f"seccomp ({os.strerror(-result)})")
        finally:
            self._lib.seccomp_release(self._ctx)


def compiled(make: Callable[[], Filter]) -> bytes:
    """The program of the filter make() builds, compiled in a child process:
    this process neither maps libseccomp nor keeps what it allocates (the
    root helper, forked later, would keep a copy of that too)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            make().export(w)
            code = 0
        except Unavailable as e:
            os.write(w, str(e).encode())
        finally:
            os._exit(code)
    os.close(w)
    with open(r, "rb") as f:
        output = f.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise Unavailable(output.decode(errors="replace") or "seccomp (its compiler failed)")
    return output


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_SECCOMP_MODE_FILTER = 2
_BPF_INSTRUCTION = 8  # bytes: struct sock_filter


def no_new_privs() -> None:
    """No exec may give this process privileges (seccomp asks for it)."""
    _call("no_new_privs", _libc.prctl, _PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def load(program: bytes) -> None:
    """Apply a seccomp filter's program to this process (after no_new_privs)."""
    code = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // _BPF_INSTRUCTION, ctypes.addressof(code))
    _call("seccomp", _libc.prctl, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0)


# Calls a confined TLS engine never makes, and an attacker would.
REFUSED = (
    "execve", "execveat",
    "ptrace", "process_vm_readv", "process_vm_writev",
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree",
    "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "unshare", "setns",
    "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "keyctl", "add_key", "request_key",
    "setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid",
    "setfsuid", "setfsgid", "setgroups", "capset",
    "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
    "utime", "utimes", "futimesat", "utimensat",
    "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr",
)  # fmt: skip

# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET and NEWTIME.
_CLONE_NAMESPACES = (
    0x20000, 0x2000000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000, 0x80,
)  # fmt: skip


def engine_filter(sockets: Iterable[int]) -> Filter:
    """The filter for the TLS engine: REFUSED, new namespaces, and sockets
    but UDP or TCP of the families in sockets."""
    f = Filter()
    for name in REFUSED:
        f.refuse(name)
    # fork (clone) stays, without new namespaces; clone3 passes its flags in
    # memory a filter cannot read, so it fails as on a kernel without it, and
    # glibc falls back to clone.
    for flag in _CLONE_NAMESPACES:  # the flags are clone's first argument (but on s390)
        f.refuse("clone", errno.EPERM, (0, _SCMP_CMP_MASKED_EQ, flag, flag))
    f.refuse("clone3", errno.ENOSYS)
    allowed = set(sockets)
    if not allowed:
        f.refuse("socket")
    else:
        for family in range(_AF_MAX):
            if family not in allowed:
                f.refuse("socket", errno.EAFNOSUPPORT, (0, _SCMP_CMP_EQ, family, 0))
        f.refuse("socket", errno.EAFNOSUPPORT, (0, _SCMP_CMP_GE, _AF_MAX, 0))
        for kind in range(_SOCK_TYPE_MASK + 1):
            if kind not in (1, 2):  # SOCK_STREAM, SOCK_DGRAM
                f.refuse("socket", errno.EPERM, (1, _SCMP_CMP_MASKED_EQ, _SOCK_TYPE_MASK, kind))
    return f


# Modules that load on first use, where a confined process could not read
# them: the digest of a client certificate. (gevent also imports pickle when
# a greenlet fails, to keep its traceback; it does without when it cannot.)
_CLIENT_CERT_PRELOAD: tuple[str, ...] = ("hashlib",)


def engine_needs(opts: Options) -> tuple[Network, tuple[int, ...], tuple[str, ...]]:
    """What the TLS engine still needs under these options: its TCP, the
    socket families it creates, and the modules to load before confinement."""
    bind, connect = [], []
    if opts.dns:
        connect.append(DNS_PORT)  # a truncated UDP answer is asked again over TCP
    if opts.ident:
        bind.append(0)  # from the connection's local address, any port
        connect.append(IDENT_PORT)
    families = (socket.AF_INET, socket.AF_INET6) if opts.dns or opts.ident else ()
    preload = _CLIENT_CERT_PRELOAD if opts.client_cert is not ClientCert.NONE else ()
    return Network(tuple(bind), tuple(connect)), families, preload


def prepare(opts: Options) -> Callable[[], list[str]]:
    """Load what confining the TLS engine under these options needs, while
    files can still be read; return what confines this process for good,
    once it has dropped to TLS_UID, and returns what it could not apply,
    each as "what (why)"."""
    net, families, preload = engine_needs(opts)
    for name in preload:
        importlib.import_module(name)
    missing: list[str] = []

    def apply(layer: Callable[[], object]) -> None:
        try:
            layer()
        except Unavailable as e:
            missing.append(str(e))

    seccomp: list[bytes] = []  # compiled now, while libseccomp can be loaded
    apply(lambda: seccomp.append(compiled(partial(engine_filter, families))))

    def confine() -> list[str]:
        threads = len(os.listdir("/proc/self/task"))
        if threads != 1:  # Landlock and seccomp confine the calling thread only
            return [f"any confinement ({threads} threads)"]
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        apply(no_new_privs)
        apply(partial(_call, "no dumping", _libc.prctl, _PR_SET_DUMPABLE, 0, 0, 0, 0))
        apply(lambda: missing.extend(landlock(net)))
        for program in seccomp:
            apply(partial(load, program))
        return missing

    return confine
