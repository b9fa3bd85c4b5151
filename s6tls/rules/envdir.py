"""Read an environment directory the way s6-envdir (without options) does."""

from __future__ import annotations

import errno
import os
import stat

from s6tls.rules.errors import RulesError

# skalibs' envdir reads at most this many bytes of each file.
VALUE_MAX = 4095


def read_envdir(path: str, *, missing_ok: bool = False) -> tuple[tuple[str, str | None], ...]:
    """Return the (NAME, value) changes an envdir holds, sorted by name; None means unset.

    A missing directory gives () with ``missing_ok``; anything unreadable raises
    RulesError naming the path.
    """
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        if missing_ok:
            return ()
        raise RulesError(f"unable to envdir {path}: No such file or directory") from None
    except OSError as e:
        raise RulesError(f"unable to envdir {path}: {e.strerror}") from None
    env: list[tuple[str, str | None]] = []
    for name in sorted(names):
        if name.startswith(".") or "=" in name:
            continue
        file = f"{path}/{name}"
        try:
            # A file that vanished between listing and reading is an error
            # upstream too (it reports EIDRM), not an unset variable.
            content = read_head(file, VALUE_MAX)
        except OSError as e:
            raise RulesError(f"unable to read {file}: {e.strerror}") from None
        env.append((name, parse_value(content)))
    return tuple(env)


def parse_value(content: bytes) -> str | None:
    """Turn an envdir file's bytes into the variable's value, None for an empty file.

    The value is the first line with trailing spaces, tabs and CRs removed, then
    NUL bytes turned into newlines (how envdirs carry multi-line values).
    """
    if not content:
        return None
    line = content.split(b"\n", 1)[0].rstrip(b" \t\r")
    return os.fsdecode(line.replace(b"\0", b"\n"))


def read_head(path: str, limit: int) -> bytes:
    """Return at most ``limit`` bytes from the start of a regular file.

    Raises OSError: IsADirectoryError for a directory, as reading one fails
    upstream, and EINVAL for FIFOs, sockets and devices, which could block.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
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
