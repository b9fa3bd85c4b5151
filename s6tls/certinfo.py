"""Read what the TLS rules need from a client's X.509 certificate, straight from its DER.

Python's ``ssl`` gives the peer certificate's DER but not its
SubjectPublicKeyInfo, and its ``getpeercert()`` raises UnicodeDecodeError on
a subject alternative name holding a byte that is not UTF-8; so this small
reader takes the DER apart itself. It is pure and bounded:

- Strict DER framing: one-byte tags (low tag numbers only, which is all
  X.509 uses), definite lengths in their shortest form, every element inside
  its parent, nothing after the certificate. INTEGERs in their shortest form.
- At most ``MAX_CERTIFICATE`` bytes, and a serial number of at most
  ``MAX_SERIAL`` bytes.
- Nesting is bounded by construction: the reader walks the fixed shape of a
  certificate (Certificate, TBSCertificate, Name, Extensions, GeneralNames)
  and never recurses into content it does not need.
- Anything else wrong raises ``CertificateError`` (a ValueError); no other
  exception comes out of ``read_certificate`` for any bytes.

Only what is read is checked: the validity dates, the algorithms and the
contents of other extensions are left to OpenSSL, which has verified the
certificate before this reader sees it.

``crl_next_update`` reads one more date, with the same reader: when a
certificate revocation list (CRLFILE, which OpenSSL has loaded) is past its
next update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from s6tls.sslvars import cert_hash

__all__ = [
    "MAX_CERTIFICATE",
    "MAX_SERIAL",
    "CertFacts",
    "CertificateError",
    "SanKind",
    "crl_next_update",
    "read_certificate",
    "subject_of",
]

MAX_CERTIFICATE = 64 * 1024
"""Longest DER certificate read; real ones are a few KiB at most."""

MAX_SERIAL = 64
"""Longest serial number in bytes (RFC 5280 allows 20; some CAs write a few more)."""

SanKind = Literal["DNS", "URI", "email"]
"""The subject alternative names read, by their OpenSSL names."""


class CertificateError(ValueError):
    """The bytes are not a DER X.509 certificate this reader can take apart."""


@dataclass(frozen=True)
class CertFacts:
    """What a certificate says about its holder, values as the raw bytes it holds.

    ``spki`` and ``issuer`` are whole DER elements (tag, length, content).
    ``subject_alt_names`` are the dNSName, uniformResourceIdentifier and
    rfc822Name entries in certificate order; other kinds are left out.
    ``subject`` holds the subject's attributes that upstream shows in
    SSL_PEER_CERT_SUBJECT (C, ST, L, O, OU, CN), by their short names, in
    certificate order: BMPString and UniversalString values re-encoded as
    UTF-8 (kept as they are if they do not decode), every other string type
    as its bytes.
    """

    serial: int
    spki: bytes
    issuer: bytes
    subject_alt_names: tuple[tuple[SanKind, bytes], ...]
    subject: tuple[tuple[str, bytes], ...]

    @property
    def common_names(self) -> tuple[bytes, ...]:
        """The subject's commonName values, in certificate order."""
        return tuple(value for name, value in self.subject if name == "CN")

    @property
    def spki_hash(self) -> str:
        """``SHA256:`` and the lowercase hex digest of the SubjectPublicKeyInfo (the key's pin)."""
        return cert_hash(self.spki)


# Universal tags.
_UTC_TIME = 0x17
_GENERALIZED_TIME = 0x18
_BOOLEAN = 0x01
_INTEGER = 0x02
_BIT_STRING = 0x03
_OCTET_STRING = 0x04
_OID = 0x06
_SEQUENCE = 0x30
_SET = 0x31
# TBSCertificate's context-specific fields.
_VERSION = 0xA0
_ISSUER_UID = 0x81
_SUBJECT_UID = 0x82
_EXTENSIONS = 0xA3

# The subject attributes upstream shows, by OID (2.5.4.6, 8, 7, 10, 11, 3).
_SUBJECT_ATTRIBUTES = {
    bytes.fromhex("550406"): "C",
    bytes.fromhex("550408"): "ST",
    bytes.fromhex("550407"): "L",
    bytes.fromhex("55040a"): "O",
    bytes.fromhex("55040b"): "OU",
    bytes.fromhex("550403"): "CN",
}
_OID_SUBJECT_ALT_NAME = bytes.fromhex("551d11")  # 2.5.29.17

# GeneralName choices read, as IMPLICIT IA5Strings (primitive).
_SAN_KINDS: dict[int, SanKind] = {0x81: "email", 0x82: "DNS", 0x86: "URI"}
# The other choices: otherName, x400Address, directoryName, ediPartyName
# (constructed), iPAddress and registeredID (primitive).
_SAN_SKIPPED = frozenset({0xA0, 0xA3, 0xA4, 0xA5, 0x87, 0x88})

# String types a commonName may have: UTF8String, NumericString,
# PrintableString, T61String, VideotexString, IA5String, GraphicString,
# VisibleString, GeneralString; then those with wide characters.
_BYTE_STRINGS = frozenset({0x0C, 0x12, 0x13, 0x14, 0x15, 0x16, 0x19, 0x1A, 0x1B})
_WIDE_STRINGS = {0x1E: "utf-16-be", 0x1C: "utf-32-be"}  # BMPString, UniversalString

_HIGH_TAG = 0x1F


def read_certificate(der: bytes) -> CertFacts:
    """Take a DER certificate apart; raise CertificateError if it is malformed."""
    if not isinstance(der, bytes):
        raise CertificateError("not bytes")
    if len(der) > MAX_CERTIFICATE:
        raise CertificateError(f"certificate over {MAX_CERTIFICATE} bytes")
    whole = _Reader(der, 0, len(der))
    cert = whole.inside(_SEQUENCE, "certificate")
    whole.end("DER")
    tbs = cert.inside(_SEQUENCE, "tbsCertificate")
    cert.skip(_SEQUENCE, "signatureAlgorithm")
    cert.skip(_BIT_STRING, "signatureValue")
    cert.end("certificate")
    return _read_tbs(tbs)


def _read_tbs(tbs: _Reader) -> CertFacts:
    if tbs.peek() == _VERSION:
        version = tbs.inside(_VERSION, "version")
        version.integer("version", 1)
        version.end("version")
    serial = tbs.integer("serialNumber", MAX_SERIAL)
    tbs.skip(_SEQUENCE, "signature")
    issuer = tbs.element(_SEQUENCE, "issuer")
    tbs.skip(_SEQUENCE, "validity")
    subject = _subject(tbs.inside(_SEQUENCE, "subject"))
    spki = tbs.element(_SEQUENCE, "subjectPublicKeyInfo")
    for tag, what in ((_ISSUER_UID, "issuerUniqueID"), (_SUBJECT_UID, "subjectUniqueID")):
        if tbs.peek() == tag:
            tbs.skip(tag, what)
    names: tuple[tuple[SanKind, bytes], ...] = ()
    if tbs.peek() == _EXTENSIONS:
        wrapper = tbs.inside(_EXTENSIONS, "extensions")
        names = _subject_alt_names(wrapper.inside(_SEQUENCE, "extensions"))
        wrapper.end("extensions")
    tbs.end("tbsCertificate")
    return CertFacts(serial, spki, issuer, names, subject)


def subject_of(der: bytes) -> tuple[tuple[str, str], ...] | None:
    """The subject's C, ST, L, O, OU and CN as text (bytes that are not
    UTF-8 replaced), for SSL_PEER_CERT_SUBJECT; None if the DER is unreadable."""
    try:
        subject = read_certificate(der).subject
    except CertificateError:
        return None
    return tuple((name, value.decode(errors="replace")) for name, value in subject)


def crl_next_update(der: bytes) -> int | None:
    """When a DER CRL is past its next update (RFC 5280 5.1.2.5), in seconds
    since the epoch; None if it names no next update. CertificateError if the
    framing up to that date is malformed."""
    if not isinstance(der, bytes):
        raise CertificateError("not bytes")
    crl = _Reader(der, 0, len(der)).inside(_SEQUENCE, "CertificateList")
    tbs = crl.inside(_SEQUENCE, "tbsCertList")
    if tbs.peek() == _INTEGER:
        tbs.integer("version", 1)
    tbs.skip(_SEQUENCE, "signature")
    tbs.skip(_SEQUENCE, "issuer")
    tbs.skip(tbs.peek() if tbs.peek() in (_UTC_TIME, _GENERALIZED_TIME) else None, "thisUpdate")
    tag = tbs.peek()
    if tag not in (_UTC_TIME, _GENERALIZED_TIME):
        return None
    return _time(tag, tbs.content(tag, "nextUpdate"))


def _time(tag: int, value: bytes) -> int:
    """A UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ), as
    RFC 5280 4.1.2.5 has them written, in seconds since the epoch."""
    digits = value[:-1]
    size = 12 if tag == _UTC_TIME else 14
    if len(value) != size + 1 or value[-1:] != b"Z" or not digits.isdigit():
        raise CertificateError("bad time")
    if tag == _UTC_TIME:
        year = int(digits[:2])
        digits = str(year + (1900 if year >= 50 else 2000)).encode() + digits[2:]
    year, month, day, hour, minute, second = (
        int(digits[:4]),
        *(int(digits[i : i + 2]) for i in range(4, 14, 2)),
    )
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 60):
        raise CertificateError("bad time")
    return _days_since_epoch(year, month, day) * 86400 + hour * 3600 + minute * 60 + second


def _days_since_epoch(year: int, month: int, day: int) -> int:
    """Days from 1970-01-01 to a date of the proleptic Gregorian calendar
    (the civil-from-days algorithm run backwards; calendar.timegm would
    import datetime and locale, half a MiB, into every server)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _subject(subject: _Reader) -> tuple[tuple[str, bytes], ...]:
    found = []
    while not subject.done():
        rdn = subject.inside(_SET, "RelativeDistinguishedName")
        while not rdn.done():
            pair = rdn.inside(_SEQUENCE, "AttributeTypeAndValue")
            oid = pair.content(_OID, "attribute type")
            tag = pair.peek()
            value = pair.content(tag, "attribute value")
            pair.end("AttributeTypeAndValue")
            name = _SUBJECT_ATTRIBUTES.get(oid)
            if name is not None:
                if tag in _BYTE_STRINGS:
                    found.append((name, value))
                elif tag in _WIDE_STRINGS:
                    found.append((name, _utf8(value, _WIDE_STRINGS[tag])))
    return tuple(found)


def _utf8(value: bytes, encoding: str) -> bytes:
    try:
        return value.decode(encoding).encode()
    except UnicodeError:
        # Odd lengths, lone surrogates, code points past U+10FFFF: the raw
        # bytes go on, and the key escaping makes them harmless.
        return value


def _subject_alt_names(extensions: _Reader) -> tuple[tuple[SanKind, bytes], ...]:
    names: tuple[tuple[SanKind, bytes], ...] | None = None
    while not extensions.done():
        extension = extensions.inside(_SEQUENCE, "extension")
        oid = extension.content(_OID, "extension id")
        if extension.peek() == _BOOLEAN:
            extension.skip(_BOOLEAN, "critical")
        value = extension.inside(_OCTET_STRING, "extension value")
        extension.end("extension")
        if oid == _OID_SUBJECT_ALT_NAME:
            if names is not None:
                # RFC 5280 4.2 and OpenSSL: an extension appears once.
                raise CertificateError("two subjectAltName extensions")
            general_names = value.inside(_SEQUENCE, "subjectAltName")
            value.end("subjectAltName")
            names = _general_names(general_names)
    return names or ()


def _general_names(general_names: _Reader) -> tuple[tuple[SanKind, bytes], ...]:
    found = []
    while not general_names.done():
        tag = general_names.peek()
        value = general_names.content(tag, "GeneralName")
        if tag in _SAN_KINDS:
            found.append((_SAN_KINDS[tag], value))
        elif tag not in _SAN_SKIPPED:
            raise CertificateError(f"bad GeneralName tag 0x{tag:02x}")
    return tuple(found)


class _Reader:
    """The elements between ``pos`` and ``stop`` of ``data``, read one after the other."""

    __slots__ = ("data", "pos", "stop")

    def __init__(self, data: bytes, pos: int, stop: int) -> None:
        self.data = data
        self.pos = pos
        self.stop = stop

    def done(self) -> bool:
        """Tell whether every element has been read."""
        return self.pos >= self.stop

    def end(self, what: str) -> None:
        """Check that every element has been read."""
        if not self.done():
            raise CertificateError(f"unexpected data at the end of {what}")

    def peek(self) -> int | None:
        """The tag of the next element, or None at the end."""
        return None if self.done() else self.data[self.pos]

    def _next(self, tag: int | None, what: str) -> tuple[int, int, int]:
        """Read the next element's header: (its start, its content's start, its end)."""
        data, start, end = self.data, self.pos, self.stop
        if start + 2 > end:
            raise CertificateError(f"truncated {what}")
        if tag is None or data[start] != tag:
            raise CertificateError(f"bad {what}: tag 0x{data[start]:02x}")
        if tag & _HIGH_TAG == _HIGH_TAG:
            raise CertificateError(f"bad {what}: high tag number")
        first = data[start + 1]
        pos = start + 2
        if first < 0x80:
            length = first
        else:
            count = first & 0x7F
            # 0x80 is BER's indefinite length; more than 3 bytes exceeds any
            # certificate this reader takes.
            if count == 0 or count > 3:
                raise CertificateError(f"bad {what}: length")
            if pos + count > end:
                raise CertificateError(f"truncated {what}")
            length = int.from_bytes(data[pos : pos + count], "big")
            pos += count
            if length < 0x80 or length >> (8 * (count - 1)) == 0:
                raise CertificateError(f"bad {what}: length not in its shortest form")
        if length > end - pos:
            raise CertificateError(f"truncated {what}")
        self.pos = pos + length
        return start, pos, pos + length

    def inside(self, tag: int | None, what: str) -> _Reader:
        """Read the next element, which must have ``tag``; return a reader of its content."""
        _, content, end = self._next(tag, what)
        return _Reader(self.data, content, end)

    def content(self, tag: int | None, what: str) -> bytes:
        """Read the next element, which must have ``tag``; return its content."""
        _, content, end = self._next(tag, what)
        return self.data[content:end]

    def element(self, tag: int | None, what: str) -> bytes:
        """Read the next element, which must have ``tag``; return it whole, header included."""
        start, _, end = self._next(tag, what)
        return self.data[start:end]

    def skip(self, tag: int | None, what: str) -> None:
        """Read past the next element, which must have ``tag``."""
        self._next(tag, what)

    def integer(self, what: str, limit: int) -> int:
        """Read an INTEGER of at most ``limit`` bytes, in its shortest form."""
        value = self.content(_INTEGER, what)
        if not value:
            raise CertificateError(f"bad {what}: empty INTEGER")
        if len(value) > limit:
            raise CertificateError(f"bad {what}: over {limit} bytes")
        if len(value) > 1 and (value[0], value[1] & 0x80) in ((0, 0), (0xFF, 0x80)):
            raise CertificateError(f"bad {what}: INTEGER not in its shortest form")
        return int.from_bytes(value, "big", signed=True)
