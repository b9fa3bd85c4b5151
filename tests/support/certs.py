"""Throwaway certificates for tests: a CA, server pairs (EC, RSA), clients, CRLs."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_NOW = datetime.datetime.now(datetime.UTC)


@dataclass(frozen=True)
class Pair:
    """A key and certificate, written as PEM (and DER) files."""

    key: Path
    cert: Path
    key_der: Path
    cert_der: Path
    cert_der_bytes: bytes

    @property
    def serial(self) -> int:
        return _certificate(self.cert_der_bytes).serial_number

    @property
    def private_key(self) -> object:
        return serialization.load_pem_private_key(self.key.read_bytes(), None)

    @property
    def cert_hash(self) -> str:
        """SSL_PEER_CERT_HASH for this certificate (and its certhash/ key)."""
        return "SHA256:" + hashlib.sha256(self.cert_der_bytes).hexdigest()

    @property
    def spki_hash(self) -> str:
        """The key's pin: the digest of its SubjectPublicKeyInfo (its spki/ key)."""
        spki = (
            _certificate(self.cert_der_bytes)
            .public_key()
            .public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return "SHA256:" + hashlib.sha256(spki).hexdigest()


def _certificate(der: bytes) -> x509.Certificate:
    return x509.load_der_x509_certificate(der)


def _name(**attrs: str) -> x509.Name:
    oids = {
        "C": NameOID.COUNTRY_NAME,
        "ST": NameOID.STATE_OR_PROVINCE_NAME,
        "L": NameOID.LOCALITY_NAME,
        "O": NameOID.ORGANIZATION_NAME,
        "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
        "CN": NameOID.COMMON_NAME,
    }
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in attrs.items()])


class Authority:
    """A test CA that issues server and client certificates into a directory."""

    def __init__(self, directory: Path, cn: str = "s6tls Test CA") -> None:
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(CN=cn)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - datetime.timedelta(days=1))
            .not_valid_after(_NOW + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.pem = directory / f"{cn.replace(' ', '_')}.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.der = self.cert.public_bytes(serialization.Encoding.DER)

    def issue(
        self,
        stem: str,
        *,
        names: tuple[str, ...] = ("localhost",),
        ips: tuple[str, ...] = ("127.0.0.1", "::1"),
        client: bool = False,
        rsa_key: bool = False,
        rsa_bits: int = 2048,
        subject: dict[str, str] | None = None,
        sans: Sequence[x509.GeneralName] = (),
        key: object | None = None,
    ) -> Pair:
        """A certificate for a server (SANs from names and ips) or a client
        (SANs from ``sans``); ``key``: an existing private key (a re-issue)."""
        key = key or (
            rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
            if rsa_key
            else ec.generate_private_key(ec.SECP256R1())
        )
        cert = self._builder(stem, names, ips, client, subject, sans, key).sign(
            self.key, hashes.SHA256()
        )
        return write_pair(self.dir, stem, key, cert)

    def _builder(
        self,
        stem: str,
        names: tuple[str, ...],
        ips: tuple[str, ...],
        client: bool,
        subject: dict[str, str] | None,
        sans: Sequence[x509.GeneralName],
        key: object,
    ) -> x509.CertificateBuilder:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(**(subject or {"CN": names[0] if names else stem})))
            .issuer_name(self.name)
            .public_key(key.public_key())  # type: ignore[attr-defined]
            .serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - datetime.timedelta(days=1))
            .not_valid_after(_NOW + datetime.timedelta(days=30))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        alt: list[x509.GeneralName] = list(sans)
        if not client:
            alt += [x509.DNSName(n) for n in names]
            alt += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return builder

    def issue_raw_uri(self, stem: str, uri: bytes, cn: str) -> Pair:
        """A client certificate whose URI SAN holds ``uri`` as it is, bytes that
        are not UTF-8 included (cryptography writes only text): built with a
        placeholder of the same length, patched in the TBSCertificate, signed."""
        from tests.support.der import ALGORITHM, seq, tlv

        key = ec.generate_private_key(ec.SECP256R1())
        placeholder = "u" * len(uri)
        sans = [x509.UniformResourceIdentifier(placeholder)]
        made = self._builder(stem, (), (), True, {"CN": cn}, sans, key).sign(
            self.key, hashes.SHA256()
        )
        tbs = made.tbs_certificate_bytes
        marker = bytes([0x86, len(uri)]) + placeholder.encode()
        assert len(uri) < 0x80 and tbs.count(marker) == 1
        tbs = tbs.replace(marker, bytes([0x86, len(uri)]) + uri)
        signature = self.key.sign(tbs, ec.ECDSA(hashes.SHA256()))
        der = seq(tbs, ALGORITHM, tlv(0x03, b"\x00" + signature))
        return write_pair(self.dir, stem, key, x509.load_der_x509_certificate(der))

    def crl(
        self,
        revoked: Iterable[int] = (),
        *,
        next_update: datetime.timedelta = datetime.timedelta(days=1),
    ) -> bytes:
        """A PEM CRL of this CA listing the serial numbers ``revoked``; its next
        update ``next_update`` from now (in the past when negative)."""
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.name)
            .last_update(min(now, now + next_update) - datetime.timedelta(hours=1))
            .next_update(now + next_update)
        )
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(now - datetime.timedelta(minutes=5))
                .build()
            )
        return builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def write_pair(directory: Path, stem: str, key: object, cert: x509.Certificate) -> Pair:
    pem_key = key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    der_key = key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    der_cert = cert.public_bytes(serialization.Encoding.DER)
    paths = Pair(
        key=directory / f"{stem}.key",
        cert=directory / f"{stem}.pem",
        key_der=directory / f"{stem}.key.der",
        cert_der=directory / f"{stem}.der",
        cert_der_bytes=der_cert,
    )
    paths.key.write_bytes(pem_key)
    paths.key.chmod(0o600)
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key_der.write_bytes(der_key)
    paths.cert_der.write_bytes(der_cert)
    return paths


def self_signed(directory: Path, stem: str, cn: str) -> Pair:
    """A certificate no test CA vouches for."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(CN=cn)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW - datetime.timedelta(days=1))
        .not_valid_after(_NOW + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return write_pair(directory, stem, key, cert)
