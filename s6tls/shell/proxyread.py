"""Reading a PROXY protocol header off a fresh connection (-L)."""

from __future__ import annotations

import socket

import gevent

from s6tls.proxy import Header, ProxyError, parse


class ProxyFailed(Exception):
    """No valid PROXY header arrived; the message says why."""


# A header must arrive promptly even when -K sets no handshake deadline.
DEFAULT_DEADLINE = 10.0


def read_proxy_header(sock: socket.socket, deadline: float | None) -> tuple[Header, bytes]:
    """Read exactly the header; return it and any bytes read past it (for TLS)."""
    data = b""
    try:
        with gevent.Timeout(deadline or DEFAULT_DEADLINE, ProxyFailed("PROXY header timed out")):
            while isinstance(need := parse(data), int):
                chunk = sock.recv(need - len(data))
                if not chunk:
                    raise ProxyFailed("connection closed before the end of the PROXY header")
                data += chunk
    except ProxyError as e:
        raise ProxyFailed(f"bad PROXY header: {e}") from None
    except OSError as e:
        raise ProxyFailed(f"unable to read the PROXY header: {e.strerror or e}") from None
    return need, data[need.length :]
