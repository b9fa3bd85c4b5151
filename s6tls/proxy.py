"""Parse the PROXY protocol header (v1 text line or v2 binary block) that -L expects.

The parser is pure and incremental: ``parse`` looks at the bytes received so
far and either returns the finished ``Header``, or says how many bytes it needs
before it can decide, or raises ``ProxyError`` as soon as the bytes can no
longer be the start of a valid header. It never looks past the header: bytes
after ``Header.length`` belong to TLS and stay with the caller.

Decisions, following haproxy's doc/proxy-protocol.txt strictly:

- Needed count. An int result is a lower bound of the total header length,
  computed from the shortest valid header that still starts with the data, so
  ``while (n := parse(buf)) is int: buf += recv(n - len(buf))`` never reads a
  byte past the header. It is always greater than ``len(data)``. For v2 it is
  exact once the 16-byte fixed part is in; for v1 it grows field by field (at
  least one byte per call) up to the CRLF, and never exceeds 107.
- v1. "PROXY" SP ("TCP4" | "TCP6") SP src SP dst SP sport SP dport CRLF, single
  spaces, at most 107 bytes. IPv4: four decimal octets without leading zeros.
  IPv6: hex groups (either case, up to four digits) with at most one "::" and
  an optional dotted IPv4 tail, as inet_pton reads it; no zone index. Ports:
  decimal 0..65535 without leading zeros or sign. "PROXY UNKNOWN" keeps the
  real addresses and ignores anything between "UNKNOWN " and the CRLF. A CR or
  LF anywhere but in the final CRLF is an error.
- v2. Version 2 only; command LOCAL (0) or PROXY (1); family 0..3 and
  protocol 0..2, other values rejected even with LOCAL. LOCAL keeps the real
  addresses and skips the whole block unread. PROXY over TCP/IPv4 or
  TCP/IPv6 gives the addresses. PROXY with UNSPEC, UDP or AF_UNIX keeps the
  real addresses: the spec lets a receiver fall back to UNSPEC for valid
  combinations it does not support. Whenever the address block size is known
  (PROXY with a family and protocol set) the length must cover it, and the
  bytes after it must be well-framed TLVs (type, 16-bit length, value), whose
  contents, a CRC32C included, are ignored.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

__all__ = ["MAX_HEADER", "Address", "Header", "ProxyError", "parse"]


@dataclass(frozen=True)
class Address:
    """An IP address in canonical text form (compressed, lowercase) and a port."""

    ip: str
    port: int


@dataclass(frozen=True)
class Header:
    """A parsed PROXY header; addresses are None when the real ones are kept."""

    source: Address | None
    destination: Address | None
    length: int


class ProxyError(Exception):
    """The connection does not start with a valid PROXY header."""


_V1_SIGNATURE = b"PROXY "
_V1_MAX = 107  # longest line the spec allows, CRLF included
_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_FIXED = 16  # signature, version/command, family/protocol, 16-bit length

MAX_HEADER = _V2_FIXED + 0xFFFF
"""No header is longer: the shell never needs to buffer more than this."""

_TCP4 = b"TCP4"
_TCP6 = b"TCP6"
_UNKNOWN = b"UNKNOWN"
# Shortest text of src, dst, sport, dport: "0.0.0.0" or "::", then "0".
_FIELD_MIN = {_TCP4: (7, 7, 1, 1), _TCP6: (2, 2, 1, 1)}

_DIGITS = frozenset("0123456789")
_IP4_CHARS = _DIGITS | {"."}
_IP6_CHARS = _DIGITS | frozenset("abcdefABCDEF:.")

# v2 address block sizes by family (AF_INET, AF_INET6, AF_UNIX).
_V2_BLOCK = {1: 12, 2: 36, 3: 216}
_V2_LOCAL, _V2_PROXY = 0, 1
_V2_STREAM = 1


def parse(data: bytes) -> Header | int:
    """Parse a PROXY header at the start of data.

    Return the Header when complete, else the number of bytes (> len(data),
    never past the end of the header) needed before it can decide; raise
    ProxyError as soon as data cannot be the start of a valid header.
    """
    if _V1_SIGNATURE.startswith(data[: len(_V1_SIGNATURE)]):
        if len(data) < len(_V1_SIGNATURE):
            # Either version may still follow an empty buffer; "PROXY UNKNOWN\r\n"
            # is the shortest header of all.
            return _v1_min_length(_UNKNOWN)
        return _parse_v1(data)
    if _V2_SIGNATURE.startswith(data[: len(_V2_SIGNATURE)]):
        return _parse_v2(data)
    raise ProxyError("bad PROXY signature")


# --- version 1 --------------------------------------------------------------


def _v1_min_length(protocol: bytes) -> int:
    """Length of the shortest valid v1 line for this protocol keyword."""
    head = len(_V1_SIGNATURE) + len(protocol)
    if protocol == _UNKNOWN:
        return head + 2
    return head + sum(1 + m for m in _FIELD_MIN[protocol]) + 2


def _parse_v1(data: bytes) -> Header | int:
    """Parse data that starts with "PROXY "."""
    end = data.find(b"\n", 0, _V1_MAX)
    if end >= 0:
        if end == 0 or data[end - 1] != 0x0D:
            raise ProxyError("bad PROXY v1 line")
        return _v1_line(data[: end - 1], end + 1)
    needed = _v1_needed(data[:_V1_MAX])
    if needed > _V1_MAX:
        raise ProxyError("PROXY v1 line too long")
    return needed


def _v1_needed(data: bytes) -> int:
    """Check a v1 line that has no LF yet; return the shortest length it can end at."""
    cr = data.find(b"\r")
    if cr >= 0:
        if cr != len(data) - 1:
            raise ProxyError("bad PROXY v1 line")
        _v1_line(data[:-1], len(data) + 1)
        return len(data) + 1
    protocol, space, rest = data[len(_V1_SIGNATURE) :].partition(b" ")
    if not space:
        candidates = [p for p in (_TCP4, _TCP6, _UNKNOWN) if p.startswith(protocol)]
        if not candidates:
            raise ProxyError("bad PROXY v1 line")
        return min(_v1_min_length(p) for p in candidates)
    if protocol == _UNKNOWN:
        return len(data) + 2
    if protocol not in _FIELD_MIN:
        raise ProxyError("bad PROXY v1 line")
    fields = rest.split(b" ")
    if len(fields) > len(_FIELD_MIN[protocol]):
        raise ProxyError("bad PROXY v1 line")
    *done, partial = fields
    for index, field in enumerate(done):
        if index < 2:
            _v1_ip(protocol, field)
        else:
            _v1_port(field)
    text = partial.decode("latin-1")
    index = len(done)
    ok = (
        (_ip4_prefix_ok(text) if protocol == _TCP4 else _ip6_prefix_ok(text))
        if index < 2
        else _port_prefix_ok(text)
    )
    if not ok:
        raise ProxyError("bad PROXY v1 address" if index < 2 else "bad PROXY v1 port")
    minimums = _FIELD_MIN[protocol]
    return (
        len(data)
        + max(0, minimums[index] - len(partial))
        + sum(1 + m for m in minimums[index + 1 :])
        + 2
    )


def _v1_line(body: bytes, length: int) -> Header:
    """Parse a complete v1 line given without its CRLF."""
    if b"\r" in body:
        raise ProxyError("bad PROXY v1 line")
    protocol, space, rest = body[len(_V1_SIGNATURE) :].partition(b" ")
    if protocol == _UNKNOWN:
        return Header(None, None, length)
    if protocol not in _FIELD_MIN or not space:
        raise ProxyError("bad PROXY v1 line")
    # Check the fields in order, as the incremental path does, for the same message.
    fields = rest.split(b" ")
    ips = [_v1_ip(protocol, field) for field in fields[:2]]
    ports = [_v1_port(field) for field in fields[2:4]]
    if len(fields) != 4:
        raise ProxyError("bad PROXY v1 line")
    return Header(Address(ips[0], ports[0]), Address(ips[1], ports[1]), length)


def _v1_ip(protocol: bytes, field: bytes) -> str:
    """Validate a complete v1 address of the line's family; return it canonical."""
    text = field.decode("latin-1")
    if protocol == _TCP4:
        parts = text.split(".")
        if len(parts) == 4 and all(_octet_ok(p) for p in parts):
            return ipaddress.IPv4Address(text).compressed
    elif text and set(text) <= _IP6_CHARS:
        try:
            return ipaddress.IPv6Address(text).compressed
        except ValueError:
            pass
    raise ProxyError("bad PROXY v1 address")


def _v1_port(field: bytes) -> int:
    """Validate a complete v1 port."""
    text = field.decode("latin-1")
    if not text or not _port_prefix_ok(text):
        raise ProxyError("bad PROXY v1 port")
    return int(text)


def _octet_ok(text: str) -> bool:
    """A decimal octet 0..255, no leading zero."""
    return (
        0 < len(text) <= 3
        and set(text) <= _DIGITS
        and (text == "0" or text[0] != "0")
        and int(text) <= 255
    )


def _port_prefix_ok(text: str) -> bool:
    """Can text still grow into a port? Digits only grow the value."""
    if not set(text) <= _DIGITS:
        return False
    if len(text) > 1 and text[0] == "0":
        return False
    return not text or int(text) <= 0xFFFF


def _ip4_prefix_ok(text: str) -> bool:
    """Can text still grow into a dotted-quad IPv4 address?"""
    if not set(text) <= _IP4_CHARS:
        return False
    *done, last = text.split(".")
    return len(done) <= 3 and all(_octet_ok(p) for p in done) and (not last or _octet_ok(last))


def _ip6_prefix_ok(text: str) -> bool:
    """Can text still grow into an IPv6 address? Count the groups it commits to."""
    if not set(text) <= _IP6_CHARS:
        return False
    if text.count("::") > 1 or ":::" in text:
        return False
    if text.startswith(":") and not text.startswith("::") and text != ":":
        return False
    *done, last = text.split(":")
    if any("." in p or len(p) > 4 for p in done):
        return False
    groups = sum(1 for p in done if p)  # empty parts come from "::" only
    elided = "::" in text
    if "." in last:
        # An IPv4 tail is the last 32 bits: nothing may follow it.
        if not _ip4_prefix_ok(last):
            return False
        return groups + 2 <= 7 if elided else groups == 6
    if len(last) > 4:
        return False
    if last or (text.endswith(":") and not text.endswith("::")):
        # One more group must come; a lone trailing ':' may instead become the
        # "::", which needs the same room (at most 7 explicit groups).
        groups += 1
    return groups <= 7 if elided else groups <= 8


# --- version 2 --------------------------------------------------------------


def _parse_v2(data: bytes) -> Header | int:
    """Parse data that starts with (a prefix of) the v2 signature."""
    if len(data) > 12:
        if data[12] >> 4 != 2:
            raise ProxyError("unsupported PROXY v2 version")
        if data[12] & 0x0F not in (_V2_LOCAL, _V2_PROXY):
            raise ProxyError("bad PROXY v2 command")
    if len(data) > 13:
        if data[13] >> 4 > 3:
            raise ProxyError("bad PROXY v2 address family")
        if data[13] & 0x0F > 2:
            raise ProxyError("bad PROXY v2 transport protocol")
    if len(data) < _V2_FIXED:
        return _V2_FIXED
    command, family, protocol = data[12] & 0x0F, data[13] >> 4, data[13] & 0x0F
    block = _V2_BLOCK[family] if command == _V2_PROXY and family and protocol else 0
    total = _V2_FIXED + int.from_bytes(data[14:16], "big")
    if total < _V2_FIXED + block:
        raise ProxyError("PROXY v2 length shorter than the address block")
    if len(data) < total:
        return total
    if not block:
        return Header(None, None, total)
    _v2_check_tlvs(data[_V2_FIXED + block : total])
    if protocol != _V2_STREAM or family not in (1, 2):
        return Header(None, None, total)
    size = 4 if family == 1 else 16
    ips = data[_V2_FIXED : _V2_FIXED + 2 * size]
    ports = data[_V2_FIXED + 2 * size : _V2_FIXED + block]
    make = ipaddress.IPv4Address if family == 1 else ipaddress.IPv6Address
    source = Address(make(ips[:size]).compressed, int.from_bytes(ports[:2], "big"))
    destination = Address(make(ips[size:]).compressed, int.from_bytes(ports[2:], "big"))
    return Header(source, destination, total)


def _v2_check_tlvs(tlvs: bytes) -> None:
    """Check that the bytes after the address block are whole TLVs."""
    offset = 0
    while offset < len(tlvs):
        if len(tlvs) - offset < 3:
            raise ProxyError("bad PROXY v2 TLV")
        offset += 3 + int.from_bytes(tlvs[offset + 1 : offset + 3], "big")
        if offset > len(tlvs):
            raise ProxyError("bad PROXY v2 TLV")
