"""Read the client's TLS ClientHello, so that the server can enforce its ALPN setting.

Python's ssl quietly goes on without ALPN when the client offers nothing the
server names; with the ``ALPN`` setting such a client must instead get the
``no_application_protocol`` alert. So the server looks at the offer itself,
from OpenSSL's SNI callback (run for every ClientHello, before ALPN), in the
bytes the client has sent so far. This module is that look, and the choice.

``read_client_hello`` is a function of the whole buffer, not an incremental
parser: the shell must keep the first bytes of the connection anyway (the
memory BIO consumes them), asks at most twice (the first ClientHello and,
after a HelloRetryRequest, the second), and a fresh parse of at most
``MAX_HELLO_BYTES`` takes well under a millisecond for a real hello. So there
is no state to get wrong, and a longer buffer never contradicts a shorter one:
once refused, refused for good.

Decisions, following RFC 8446 (§4.1.2, §5.1) and RFC 5246 strictly:

- Records. Handshake (22) records carry ClientHellos, possibly split over
  many records and several per record; none is empty or over 2^14 bytes; the
  record version's major byte is 3. ChangeCipherSpec (20) records, the single
  byte 1, may follow a ClientHello (TLS 1.3 middlebox compatibility) but never
  split a handshake message. Application data (23) after a complete
  ClientHello is 0-RTT early data, encrypted: skipped, since a second
  ClientHello may follow it after a HelloRetryRequest. An alert (21) ends
  what is read, as does a handshake message other than a ClientHello (a TLS
  1.2 client's next flight). Anything else is malformed, SSLv2-format hellos
  included.
- Result. The facts of the last complete ClientHello; None while there is
  none yet. Bytes after it are checked as far as they go but may be cut short.
- Limit. Only the first ``limit`` bytes are looked at. A record or handshake
  message that would reach past them, or a stream that needs a byte past
  them to be understood, is an error.
- Extensions. Every length is checked against what remains and must fill its
  vector exactly; no extension type twice. SNI holds exactly one host_name of
  1..255 bytes without NUL, and ALPN at least one name, none empty, as
  OpenSSL demands. Other extensions are skipped unread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from s6tls.errors import UsageError

__all__ = [
    "MAX_HELLO_BYTES",
    "AlpnListError",
    "ClientHello",
    "ClientHelloError",
    "parse_alpn_list",
    "read_client_hello",
    "select_alpn",
]

MAX_HELLO_BYTES = 65536
"""The default limit: bytes of the stream examined, all ClientHellos and records included.
A post-quantum key share (X25519MLKEM768) makes a ClientHello of about 1.8 KB."""


class ClientHelloError(ValueError):
    """The client's bytes are not the start of a valid TLS handshake."""


class AlpnListError(UsageError):
    """An ALPN setting that names no usable protocol list (exit 100 at start-up)."""


@dataclass(frozen=True)
class ClientHello:
    """What a ClientHello says; ``end`` is the offset just past its last record."""

    alpn: tuple[bytes, ...] | None  # the client's order; None without the extension
    server_name: bytes | None
    legacy_version: int
    supported_versions: tuple[int, ...] | None
    end: int


_CHANGE_CIPHER_SPEC, _ALERT, _HANDSHAKE, _APPLICATION_DATA = 20, 21, 22, 23
_CLIENT_HELLO = 1
_MAX_RECORD = 1 << 14
_SERVER_NAME, _ALPN, _SUPPORTED_VERSIONS = 0, 16, 43
_READ = frozenset((_SERVER_NAME, _ALPN, _SUPPORTED_VERSIONS))


def read_client_hello(
    data: bytes | bytearray | memoryview, limit: int = MAX_HELLO_BYTES
) -> ClientHello | None:
    """The last complete ClientHello in data (the client's bytes from the start).

    Return None while more bytes are needed for the first one; raise
    ClientHelloError as soon as data cannot be a valid start, or would need
    bytes past the first ``limit``.
    """
    view = bytes(data[:limit])
    hello: ClientHello | None = None
    pending = bytearray()  # handshake bytes of a message not complete yet
    pos = 0
    while pos < len(view):
        kind = view[pos]
        if kind == _ALERT and hello is not None and not pending:
            return hello
        # Early data (encrypted) may follow a ClientHello; after a
        # HelloRetryRequest a second ClientHello comes after it.
        early = kind == _APPLICATION_DATA and hello is not None and not pending
        if kind not in (_HANDSHAKE, _CHANGE_CIPHER_SPEC) and not early:
            raise ClientHelloError("not a TLS handshake record")
        if len(view) > pos + 1 and view[pos + 1] != 3:
            raise ClientHelloError("bad TLS record version")
        if len(view) < pos + 5:
            break
        length = int.from_bytes(view[pos + 3 : pos + 5], "big")
        if length == 0 or length > _MAX_RECORD:
            raise ClientHelloError("bad TLS record length")
        if pos + 5 + length > limit:
            raise ClientHelloError(f"ClientHello past the {limit}-byte limit")
        if kind == _CHANGE_CIPHER_SPEC and (hello is None or pending):
            raise ClientHelloError("unexpected ChangeCipherSpec")
        if len(view) < pos + 5 + length:
            break
        body = view[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if kind == _CHANGE_CIPHER_SPEC:
            if body != b"\x01":
                raise ClientHelloError("bad ChangeCipherSpec")
            continue
        if early:
            continue
        pending += body
        while pending:
            if pending[0] != _CLIENT_HELLO:
                if hello is None:
                    raise ClientHelloError("not a ClientHello")
                return hello  # the client is past its hellos
            if len(pending) < 4:
                break
            size = 4 + int.from_bytes(pending[1:4], "big")
            if pos + size - len(pending) > limit:
                raise ClientHelloError(f"ClientHello past the {limit}-byte limit")
            if len(pending) < size:
                break
            hello = _parse_hello(bytes(pending[4:size]), pos)
            del pending[:size]
    if len(data) >= limit and (hello is None or pending or pos < len(view)):
        raise ClientHelloError(f"ClientHello past the {limit}-byte limit")
    return hello


class _Cursor:
    """Bounds-checked reading of one structure; any overrun is malformed."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.pos, self.what = data, 0, what

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, size: int) -> bytes:
        start = self.pos
        self.pos = end = start + size
        if end > len(self.data):
            raise ClientHelloError(f"{self.what} truncated")
        return self.data[start:end]

    def number(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, size: int, low: int, high: int, what: str) -> _Cursor:
        """A vector with a size-byte length of low..high bytes, as a cursor of its own."""
        length = self.number(size)
        if not low <= length <= high:
            raise ClientHelloError(f"bad {what} length")
        return _Cursor(self.take(length), what)

    def done(self) -> None:
        if self.left():
            raise ClientHelloError(f"bytes after the {self.what}")


def _parse_hello(body: bytes, end: int) -> ClientHello:
    """Parse a ClientHello message body (after the type and length)."""
    if len(body) < 34:
        raise ClientHelloError("ClientHello truncated")
    legacy_version = body[0] << 8 | body[1]  # then 32 bytes of random
    _, pos = _vector(body, 34, 1, 0, 32, "session id")
    start, pos = _vector(body, pos, 2, 2, 0xFFFE, "cipher suites")
    if (pos - start) % 2:
        raise ClientHelloError("bad cipher suites length")
    _, pos = _vector(body, pos, 1, 1, 0xFF, "compression methods")
    extensions: dict[int, _Cursor] = {}
    if pos < len(body):  # TLS 1.2 lets a ClientHello end here
        start, pos = _vector(body, pos, 2, 0, 0xFFFF, "extensions")
        extensions = _extensions(body[start:pos])
    if pos != len(body):
        raise ClientHelloError("bytes after the ClientHello")
    sni = extensions.get(_SERVER_NAME)
    alpn = extensions.get(_ALPN)
    versions = extensions.get(_SUPPORTED_VERSIONS)
    return ClientHello(
        alpn=None if alpn is None else _alpn_offer(alpn),
        server_name=None if sni is None else _server_name(sni),
        legacy_version=legacy_version,
        supported_versions=None if versions is None else _versions(versions),
        end=end,
    )


def _vector(body: bytes, pos: int, size: int, low: int, high: int, what: str) -> tuple[int, int]:
    """Where the vector at pos of a ClientHello body starts and ends, its
    length in size bytes, of low..high bytes (what _Cursor.vector checks,
    for the fields every ClientHello has, without a cursor each)."""
    start = pos + size
    if start > len(body):
        raise ClientHelloError("ClientHello truncated")
    length = int.from_bytes(body[pos:start], "big")
    if not low <= length <= high:
        raise ClientHelloError(f"bad {what} length")
    if start + length > len(body):
        raise ClientHelloError("ClientHello truncated")
    return start, start + length


def _extensions(block: bytes) -> dict[int, _Cursor]:
    """The extensions this module reads, each as a cursor; the others are
    only framed (a ClientHello holds a dozen or more: this loop is most of
    the reader's time, so it reads the framing inline)."""
    wanted: dict[int, _Cursor] = {}
    seen = set()
    pos, stop = 0, len(block)
    while pos < stop:
        if stop - pos < 2:
            raise ClientHelloError("extensions truncated")
        kind = block[pos] << 8 | block[pos + 1]
        if kind in seen:
            raise ClientHelloError(f"extension {kind} sent twice")
        seen.add(kind)
        if stop - pos < 4:
            raise ClientHelloError("extensions truncated")
        start = pos + 4
        pos = start + (block[pos + 2] << 8 | block[pos + 3])
        if pos > stop:
            raise ClientHelloError("extensions truncated")
        if kind in _READ:
            wanted[kind] = _Cursor(block[start:pos], f"extension {kind}")
    return wanted


def _server_name(extension: _Cursor) -> bytes:
    """The one host_name of a server_name extension (RFC 6066 §3)."""
    names = extension.vector(2, 1, 0xFFFF, "server name list")
    extension.done()
    if names.number(1) != 0:
        raise ClientHelloError("server name not a host name")
    name = names.vector(2, 1, 255, "server name").data
    names.done()
    if b"\x00" in name:
        raise ClientHelloError("NUL in server name")
    return name


def _alpn_offer(extension: _Cursor) -> tuple[bytes, ...]:
    """The protocol names of an ALPN extension (RFC 7301 §3.1), in order."""
    names = extension.vector(2, 2, 0xFFFF, "ALPN list")
    extension.done()
    offer = []
    while names.left():
        offer.append(names.vector(1, 1, 0xFF, "ALPN protocol name").data)
    return tuple(offer)


def _versions(extension: _Cursor) -> tuple[int, ...]:
    """The versions of a ClientHello's supported_versions extension (RFC 8446 §4.2.1)."""
    versions = extension.vector(1, 2, 254, "supported versions")
    extension.done()
    data = versions.data
    if len(data) % 2:
        raise ClientHelloError("bad supported versions length")
    return tuple(data[i] << 8 | data[i + 1] for i in range(0, len(data), 2))


# --- the ALPN setting and the choice -------------------------------------------

P = TypeVar("P", str, bytes)


def parse_alpn_list(text: str) -> tuple[str, ...]:
    """The protocol names of an ALPN setting ("h2,http/1.1"), in preference order.

    Names are printable ASCII without spaces (Python's ssl takes ASCII only,
    and every registered name is printable), 1..255 bytes each.
    """
    if not text:
        raise AlpnListError("ALPN: empty protocol list")
    names = tuple(text.split(","))
    for name in names:
        if not name:
            raise AlpnListError("ALPN: empty protocol name")
        if not all("!" <= c <= "~" for c in name):
            raise AlpnListError(f"ALPN: protocol name {name!r} not printable ASCII")
        if len(name) > 255:
            raise AlpnListError("ALPN: protocol name over 255 bytes")
    return names


def select_alpn(ours: Sequence[P], offered: Sequence[bytes] | None) -> P | None:
    """The first of ours (server preference) that the client offered, as given in ours.

    None when there is no common protocol, or no offer at all (offered None):
    the caller tells the two apart, refusing only the first.
    """
    if offered is None:
        return None
    wanted = set(offered)
    for name in ours:
        if (name.encode() if isinstance(name, str) else name) in wanted:
            return name
    return None
