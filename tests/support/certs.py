"""Throwaway certificates for tests: a CA, server pairs (EC, RSA), clients."""

from __future__ import annotations

import datetime
import ipaddress
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
    ) -> Pair:
        key = (
            rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
            if rsa_key
            else ec.generate_private_key(ec.SECP256R1())
        )
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(**(subject or {"CN": names[0] if names else stem})))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_NOW - datetime.timedelta(days=1))
            .not_valid_after(_NOW + datetime.timedelta(days=30))
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if not client:
            alt: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
            alt += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return write_pair(self.dir, stem, key, cert)


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
