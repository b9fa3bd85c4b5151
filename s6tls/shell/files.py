"""How the TLS engine and the lookups reach their files: directly, or, once the
server runs as TLS_UID, through the privileged helper (``s6tls.shell.privsep``),
which offers the same three calls."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

FileIdentity = tuple[int, int, int, int, int]


class Files(Protocol):
    """How the TLS engine reaches its files: directly, or through the
    privileged helper once the server runs as TLS_UID."""

    def read(self, path: str) -> bytes: ...

    def identity(self, path: str) -> FileIdentity: ...

    def listdir(self, path: str) -> list[str]:
        """The regular files in a directory, as full paths, sorted."""


class LocalFiles:
    """Files read by this process itself."""

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def identity(self, path: str) -> FileIdentity:
        st = os.stat(path)
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def listdir(self, path: str) -> list[str]:
        paths = (os.path.join(path, name) for name in sorted(os.listdir(path)))
        return [p for p in paths if os.path.isfile(p)]


T = TypeVar("T")


class WatchedFile(Generic[T]):
    """A file parsed on first use, and again when it changes (upstream reads it per connection).

    Read through a Files: with privilege separation, the root helper reads it.
    """

    def __init__(self, path: str, parse: Callable[[bytes], T], missing: T) -> None:
        self.path = path
        self._parse = parse
        self._missing = missing
        self._stamp: FileIdentity | None = None
        self._value = missing

    def get(self, files: Files) -> T:
        """The parsed content, or the value for a missing file; OSError if unreadable."""
        try:
            stamp = files.identity(self.path)
        except FileNotFoundError:
            return self._missing
        if stamp != self._stamp:
            self._value = self._parse(files.read(self.path))
            self._stamp = stamp
        return self._value
