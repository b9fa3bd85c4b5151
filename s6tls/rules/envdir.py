"""Read an environment directory the way s6-envdir (without options) does."""

from __future__ import annotations

import errno
import os
import stat

from s6tls.rules.errors import RulesError

# skalibs' envdir reads at most this many bytes of each file.
VALUE_MAX = 4095


def read_envdir(
    path: str, *, missing_ok: bool = False, dir_fd: int | None = None, shown: str | None = None
) -> tuple[tuple[str, str | None], ...]:
    """Return the (NAME, value) changes an envdir holds, sorted by name; None means unset.

    ``path`` may be relative to ``dir_fd``; messages name ``shown`` (default
    ``path``). A missing directory gives () with ``missing_ok``; anything
    unreadable raises RulesError naming the path.
    """
    shown = shown or path
    try:
        envfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        if missing_ok:
            return ()
        raise RulesError(f"unable to envdir {shown}: No such file or directory") from None
    except OSError as e:
        raise RulesError(f"unable to envdir {shown}: {e.strerror}") from None
    try:
        # Everything is read through the directory's descriptor: a directory
        # swapped in meanwhile cannot mix its files with ours.
        names = os.listdir(envfd)
        env: list[tuple[str, str | None]] = []
        for name in sorted(names):
            if name.startswith(".") or "=" in name:
                continue
            try:
                # A file that vanished between listing and reading is an error
                # upstream too (it reports EIDRM), not an unset variable.
                content = read_head(name, VALUE_MAX, dir_fd=envfd)
            except FileNotFoundError as e:
                raise Vanished(f"unable to read {shown}/{name}: {e.strerror}") from None
            except OSError as e:
                raise RulesError(f"unable to read {shown}/{name}: {e.strerror}") from None
            env.append((name, parse_value(content)))
        return tuple(env)
    except OSError as e:
        raise RulesError(f"unable to envdir {shown}: {e.strerror}") from None
    finally:
        os.close(envfd)


class Vanished(RulesError):
    """A file went away while its directory was being read (it was replaced)."""


def parse_value(content: bytes) -> str | None:
    """Turn an envdir file's bytes into the variable's value, None for an empty file.

    The value is the first line with trailing spaces, tabs and CRs removed, then
    NUL bytes turned into newlines (how envdirs carry multi-line values).
    """
    if not content:
        return None
    line = content.split(b"\n", 1)[0].rstrip(b" \t\r")
    return os.fsdecode(line.replace(b"\0", b"\n"))


def read_head(path: str, limit: int, *, dir_fd: int | None = None) -> bytes:
    """Return at most ``limit`` bytes from the start of a regular file.

    Raises OSError: IsADirectoryError for a directory, as reading one fails
    upstream, and EINVAL for FIFOs, sockets and devices, which could block.
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
    fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, "Not a regular file", path)
        chunks = []
        left = limit
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
