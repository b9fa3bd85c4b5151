"""How the TLS engine and the lookups reach their files: directly, or, once the
server runs as TLS_UID, through the privileged helper (``s6tls.shell.privsep``),
which offers the same three calls."""

from __future__ import annotations

import os
from typing import Protocol

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
