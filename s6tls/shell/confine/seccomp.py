"""The seccomp filter of the TLS engine, built with libseccomp in a short-lived
child (which knows every architecture's syscall numbers and compat ABIs),
and loaded by this process with prctl alone.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable, Iterable

from s6tls.shell.confine.syscalls import PR_SET_SECCOMP, Unavailable, prctl

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


def load(program: bytes) -> None:
    """Apply a seccomp filter's program to this process (after no_new_privs)."""
    code = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // _BPF_INSTRUCTION, ctypes.addressof(code))
    prctl("seccomp", PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0)


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
