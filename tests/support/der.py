"""A small DER writer, for certificates cryptography refuses to build (SAN bytes that are
not UTF-8, odd string types, broken framing). Its certificates are not signed: they are for
readers, not for TLS."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

EC_KEY = ec.generate_private_key(ec.SECP256R1())


def spki_of(key: Key) -> bytes:
    """The key's SubjectPublicKeyInfo, as OpenSSL writes it."""
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


SPKI = spki_of(EC_KEY)


def tlv(tag: int, content: bytes) -> bytes:
    """One DER element: tag, length in its shortest form, content."""
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def seq(*items: bytes) -> bytes:
    """A SEQUENCE of the items."""
    return tlv(0x30, b"".join(items))


def oid(dotted: str) -> bytes:
    """An OBJECT IDENTIFIER from its dotted form."""
    first, second, *rest = (int(part) for part in dotted.split("."))
    out = bytearray([40 * first + second])
    for arc in rest:
        chunk = [arc & 0x7F]
        while arc := arc >> 7:
            chunk.append(0x80 | (arc & 0x7F))
        out += bytes(reversed(chunk))
    return tlv(0x06, bytes(out))


def integer(value: int) -> bytes:
    """An INTEGER in its shortest form."""
    return tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def name(*attributes: tuple[str, int, bytes]) -> bytes:
    """A Name with one attribute per RDN: (OID, string tag, value)."""
    return seq(*(tlv(0x31, seq(oid(o), tlv(tag, value))) for o, tag, value in attributes))


def extension(ext_oid: str, value: bytes, critical: bool = False) -> bytes:
    """An Extension holding ``value`` (DER) in its OCTET STRING."""
    flag = tlv(0x01, b"\xff") if critical else b""
    return seq(oid(ext_oid), flag, tlv(0x04, value))


SAN_OID = "2.5.29.17"
CN_OID = "2.5.4.3"
ALGORITHM = seq(oid("1.2.840.10045.4.3.2"))
VALIDITY = seq(tlv(0x17, b"240101000000Z"), tlv(0x17, b"240102000000Z"))
ISSUER = name(("2.5.4.6", 0x13, b"FR"), (CN_OID, 0x0C, b"CA"))


def hand_cert(
    *,
    version: bytes | None = tlv(0xA0, integer(2)),
    serial: bytes = integer(7),
    subject: bytes = name((CN_OID, 0x0C, b"client")),
    extensions: list[bytes] | None = None,
    tbs_tail: bytes = b"",
    cert_tail: bytes = b"",
    spki: bytes | None = None,
) -> bytes:
    """A certificate written field by field; its signature is not a signature."""
    fields = [version or b"", serial, ALGORITHM, ISSUER, VALIDITY, subject, spki or SPKI]
    if extensions is not None:
        fields.append(tlv(0xA3, seq(*extensions)))
    tbs = seq(*fields, tbs_tail)
    return seq(tbs, ALGORITHM, tlv(0x03, b"\x00" + b"\x01" * 64), cert_tail)


def sans(*names: bytes) -> bytes:
    """A subjectAltName extension of GeneralNames written with tlv (0x82 dNSName...)."""
    return extension(SAN_OID, seq(*names))
