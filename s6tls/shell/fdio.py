"""Descriptors: reads and writes that wait cooperatively, and pipe sizes.

The relay moves bulk data through buffers shared by the whole process, so
that an idle session holds none: data read into one is used before anything
can wait, and a write that must wait keeps its own copy of the rest.
"""

from __future__ import annotations

import fcntl
import mmap
import os

from gevent.socket import wait_read, wait_write


def shared_buffer(size: int) -> memoryview:
    """A buffer for the whole process whose pages take memory only once a
    session writes to them (a bytearray is zeroed, all of it resident, at
    start-up); private, so that forked workers each write to their own."""
    return memoryview(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE))


def read_into(fd: int, buf: memoryview) -> int:
    """Read into buf, waiting while there is nothing; 0 at end of file."""
    while True:
        try:
            return os.readv(fd, [buf])
        except BlockingIOError:
            wait_read(fd)


def write_all(fd: int, data: bytes | memoryview) -> bool:
    """Write all of data, waiting while fd is full; whether it had to wait.

    data may be a view of a shared buffer: it is not used after a wait.
    """
    try:
        done = os.write(fd, data)
    except BlockingIOError:
        done = 0
    if done == len(data):
        return False
    rest = memoryview(data)[done:] if isinstance(data, bytes) else memoryview(bytes(data[done:]))
    while rest:
        wait_write(fd)
        try:
            rest = rest[os.write(fd, rest) :]
        except BlockingIOError:
            pass
    return True


# /dev/null, open for the life of the process: a confined TLS engine
# (s6tls.shell.confine) can open no file.
NULL = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)


def to_null(*fds: int) -> None:
    """Point these descriptors at /dev/null (closing what they were, but
    keeping the numbers taken)."""
    for fd in fds:
        os.dup2(NULL, fd)


# A busy pipe is grown to this size.
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


def grow_pipe_to(fd: int, size: int) -> None:
    """Make the pipe behind fd hold at least size bytes (never shrink it);
    OSError if the kernel refuses."""
    if fcntl.fcntl(fd, _F_GETPIPE_SZ) < size:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, size)


def grow_pipe(fd: int) -> None:
    """Enlarge a pipe that carries bulk data: fewer wake-ups per megabyte.

    Done only once a direction proves busy: most sessions are short, and a
    big pipe costs kernel memory for as long as it lives.
    """
    try:
        grow_pipe_to(fd, PIPE_SIZE)
    except OSError:
        pass  # over /proc/sys/fs/pipe-max-size for this user: keep the default
