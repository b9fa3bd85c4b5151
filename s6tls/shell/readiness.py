"""systemd's readiness protocol: READY=1 and STOPPING=1 to NOTIFY_SOCKET.

Under ``Type=notify`` systemd passes the address of a datagram socket in
NOTIFY_SOCKET (a path, or ``@name`` for an abstract one), and counts the
service as started once the main process sends ``READY=1`` there. The
server sends it at the moment it writes ``-1``'s line: once it listens and
reacts to every signal as documented (``s6tls.shell.main``); and
``STOPPING=1`` when it stops accepting. One datagram each: no dependency.

The socket is opened and connected at start-up, while the process may still
make sockets: with TLS_UID, the confined TLS engine (``s6tls.shell.confine``)
may not, and Landlock's scope keeps it from reaching an abstract socket it
has not connected to already. NOTIFY_SOCKET itself is taken out of the
environment, so that no prog ever sends to it.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable, MutableMapping

VARIABLE = "NOTIFY_SOCKET"
# How long a datagram may wait for room in systemd's queue before it is given up.
SEND_SECONDS = 1


def notify_address(env: MutableMapping[str, str]) -> str | None:
    """NOTIFY_SOCKET, taken out of env and out of this process's environment
    (the root helper's too, which is forked from it)."""
    os.environ.pop(VARIABLE, None)
    return env.pop(VARIABLE, None) or None


class Notifier:
    """A connected datagram socket to systemd, or nothing outside systemd.

    A problem (no such socket, systemd gone) is a warning: the server
    serves all the same, as a daemon with sd_notify does.
    """

    def __init__(self, address: str | None, warn: Callable[[str], None]) -> None:
        self.warn = warn
        self.sock: socket.socket | None = None
        if address is None:
            return
        if address[0] not in "/@":
            warn(f"{VARIABLE}={address}: only a path or an @abstract name is supported")
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", SEND_SECONDS, 0))
        try:
            sock.connect("\0" + address[1:] if address[0] == "@" else address)
        except OSError as e:
            sock.close()
            warn(f"unable to connect to {VARIABLE} {address}: {e.strerror or e}")
            return
        self.sock = sock

    def fds(self) -> list[int]:
        """What a process forked for another job (the root helper) closes."""
        return [self.sock.fileno()] if self.sock else []

    def send(self, state: str) -> None:
        """Tell systemd state (``READY=1``, ``STOPPING=1``)."""
        if self.sock is None:
            return
        try:
            self.sock.send(state.encode())
        except OSError as e:
            self.warn(f"unable to send {state} to {VARIABLE}: {e.strerror or e}")

    def ready(self) -> None:
        self.send("READY=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")
