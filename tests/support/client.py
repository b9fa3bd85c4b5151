"""Real TLS clients for the tests, built on Python's ssl module."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path


def context(
    cafile: Path | None = None,
    cert: tuple[Path, Path] | None = None,
    version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A client context; without cafile it does not verify the server."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Tell a bare FIN from close_notify, as REFERENCE-BEHAVIOUR's harness did.
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(cafile)
    if cert is not None:
        ctx.load_cert_chain(str(cert[1]), str(cert[0]))
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


def connect(
    port: int,
    host: str = "127.0.0.1",
    *,
    ctx: ssl.SSLContext | None = None,
    sni: str | None = None,
    source: str | None = None,
    timeout: float = 10.0,
    session: ssl.SSLSession | None = None,
) -> ssl.SSLSocket:
    """Connect and handshake; source binds the client to a loopback address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    raw = socket.socket(family, socket.SOCK_STREAM)
    raw.settimeout(timeout)
    if source is not None:
        raw.bind((source, 0))
    raw.connect((host, port))
    return (ctx or context()).wrap_socket(
        raw, server_hostname=sni, session=session, suppress_ragged_eofs=False
    )


def read_all(sock: ssl.SSLSocket) -> tuple[bytes, str]:
    """Read to the end; return the data and how it ended: 'close_notify' or 'eof'."""
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except ssl.SSLEOFError:
            return b"".join(chunks), "eof"
        except ssl.SSLError as e:
            if "UNEXPECTED_EOF" in str(e):
                return b"".join(chunks), "eof"
            raise
        if not data:
            return b"".join(chunks), "close_notify"
        chunks.append(data)


def echo(s: ssl.SSLSocket, data: bytes = b"ping\n") -> bytes:
    """Send data and read back as many bytes (an echoing prog such as cat)."""
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(65536)
        assert chunk, "connection ended before the echo"
        got += chunk
    return got


def half_close(sock: ssl.SSLSocket) -> None:
    """Send a bare TCP FIN (no close_notify) and keep reading.

    SSLSocket.shutdown() would drop the TLS state, so the plain socket's is used.
    """
    socket.socket.shutdown(sock, socket.SHUT_WR)


def env_of(data: bytes) -> dict[str, str]:
    """Parse ``env`` output (NAME=value lines) into a dict."""
    out = {}
    for line in data.decode().splitlines():
        name, _, value = line.partition("=")
        out[name] = value
    return out
