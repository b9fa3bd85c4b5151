"""systemd's side of its readiness protocol, for tests: the datagram socket
that NOTIFY_SOCKET names, bound by the test as systemd binds it for a
``Type=notify`` service."""

from __future__ import annotations

import socket
import struct
import uuid
from pathlib import Path


class NotifySocket:
    """What systemd does for Type=notify: a datagram socket whose messages
    carry their sender's pid (SO_PASSCRED)."""

    def __init__(self, address: str, path: str) -> None:
        self.address = address  # NOTIFY_SOCKET's value
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(path)

    def receive(self, timeout: float = 5.0) -> tuple[str, int] | None:
        """The next message and its sender's pid; None if none came in time."""
        self.sock.settimeout(timeout)
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            return None
        pid = 0
        for level, kind, value in ancillary:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                pid = struct.unpack("iII", value[:12])[0]
        return data.decode(errors="replace"), pid

    def close(self) -> None:
        self.sock.close()


def notify_socket(kind: str, directory: Path) -> NotifySocket:
    """A path, or an abstract name (``@name``), with a name of its own."""
    name = f"s6tls-test-{uuid.uuid4().hex[:12]}"
    if kind == "abstract":
        return NotifySocket(f"@{name}", f"\0{name}")
    return NotifySocket(str(directory / name), str(directory / name))
