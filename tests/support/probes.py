"""Low-level probes for system tests: raw sockets, resets, and a look into /proc.

These observe what a user could see from outside the server: whether a
connection is open, how it ended, which processes and descriptors it holds.
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import struct
import time
from collections import Counter
from pathlib import Path

# The first 5 bytes of a TLS record carrying a ClientHello: handshake, TLS 1.0
# record version, 512 bytes announced (and never sent).
CLIENT_HELLO_HEADER = b"\x16\x03\x01\x02\x00"


def raw_connect(
    port: int, host: str = "127.0.0.1", *, source: str | None = None, timeout: float = 10.0
) -> socket.socket:
    """A plain TCP connection, optionally from a chosen loopback address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    if source is not None:
        sock.bind((source, 0))
    sock.connect((host, port))
    return sock


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0, so the peer gets a TCP RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def wait_closed(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the peer closed (EOF or RST), discarding what it sends; None if
    it is still open after timeout seconds."""
    start = time.monotonic()
    deadline = start + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sock], [], [], left)
        if not ready:
            break
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except ConnectionResetError:
            return time.monotonic() - start
    return None


def is_open(sock: socket.socket) -> bool:
    """Whether the peer has neither closed nor reset the connection (nothing is consumed)."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return True
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except ConnectionResetError:
        return False


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on host:port (a refused
    connect: no; any other failure is an error)."""
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        return False
    return True


def refuses(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a TCP connect to port is refused (nothing listens there)."""
    return not listening(port, host)


def fd_kinds(pid: int) -> Counter[str]:
    """A process's open descriptors by what they point to, inode numbers left out."""
    d = f"/proc/{pid}/fd"
    kinds: Counter[str] = Counter()
    for name in os.listdir(d):
        try:
            target = os.readlink(f"{d}/{name}")
        except FileNotFoundError:
            continue  # closed while we looked
        kind, bracket, rest = target.partition(":[")
        # socket:[123] and pipe:[123] lose their inode; anon_inode:[pidfd] keeps its name
        kinds[kind if bracket and rest[:-1].isdigit() else target] += 1
    return kinds


def state(pid: int) -> str | None:
    """A process's state letter (R, S, Z, ...), or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rpartition(")")[2].split()[0]


def children(pid: int) -> list[int]:
    """The pids whose parent is pid."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def zombie_children(pid: int) -> list[int]:
    """pid's children that ended and were never reaped."""
    return [c for c in children(pid) if state(c) == "Z"]


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes in session sid: a server started in its own
    session and everything it started, even once reparented."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(entry))
    return found


def status_fields(text: str) -> dict[str, str]:
    """The fields of a /proc/PID/status text, each as its first word."""
    fields = (line.partition(":") for line in text.splitlines())
    return {name: value.split()[0] for name, _, value in fields if value.split()}


def status(pid: int) -> dict[str, str]:
    """/proc/PID/status, each field as its first word (Uid: the real uid)."""
    return status_fields(Path(f"/proc/{pid}/status").read_text())


def uid(pid: int) -> str | None:
    """The real uid of pid, None if it is gone."""
    try:
        return status(pid)["Uid"]
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Whether pid exists and has not ended."""
    return state(pid) not in (None, "Z")


class BioClient:
    """A TLS client over memory BIOs, so a test decides exactly what goes on the
    wire: a close_notify with the connection kept open for reading, a bare FIN,
    or a reset half-way through the handshake."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext) -> None:
        self.sock = sock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self._in, self._out)

    def flush(self) -> None:
        data = self._out.read()
        if data:
            self.sock.sendall(data)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if data:
            self._in.write(data)
        else:
            self._in.write_eof()

    def hello(self) -> None:
        """Send the ClientHello and receive the server's first answer, no more."""
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self.flush()
        self._fill()

    def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                self._fill()
        self.flush()

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.flush()

    def close_notify(self) -> None:
        """Send close_notify and keep the connection open for reading."""
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:
            pass
        self.flush()

    def read_all(self) -> tuple[bytes, str]:
        """Read to the end: the data, and 'close_notify' or 'eof' (a bare FIN)."""
        chunks: list[bytes] = []
        while True:
            try:
                data = self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._fill()
                continue
            except ssl.SSLZeroReturnError:
                return b"".join(chunks), "close_notify"
            except ssl.SSLEOFError:
                return b"".join(chunks), "eof"
            except ssl.SSLError as e:
                if "UNEXPECTED_EOF" in str(e):
                    return b"".join(chunks), "eof"
                raise
            if not data:
                return b"".join(chunks), "close_notify"
            chunks.append(data)
