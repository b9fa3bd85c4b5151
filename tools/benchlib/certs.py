"""The keys and certificates of a bench run: the one every server under test
presents, and, when a server asks for client certificates, a CA and the
client certificate it signed, which the load client presents."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ClientPair:
    """A client's key and certificate, and the CA certificate that signed it, as PEM files."""

    key: Path
    cert: Path
    ca: Path  # the servers' CAFILE
    subject: str  # its commonName


@dataclass(frozen=True)
class KeyPair:
    """A private key and its self-signed certificate, as PEM files."""

    key: Path
    cert: Path
    kind: str  # what the table header says, e.g. "ECDSA P-256"
    client: ClientPair | None = None  # made when some server asks for a client certificate


def _algorithm(rsa: bool) -> list[str]:
    if rsa:
        return ["-newkey", "rsa:2048"]
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]


def _openssl(*argv: str) -> None:
    subprocess.run(["openssl", *argv], check=True, capture_output=True)


def make_pair(directory: Path, rsa: bool = False, client: bool = False) -> KeyPair:
    """A throwaway pair for localhost and 127.0.0.1: ECDSA P-256, or RSA-2048;
    with client, also a CA and a client certificate (same algorithm) it signed."""
    key, cert = directory / "key.pem", directory / "cert.pem"
    _openssl(
        "req", "-x509", *_algorithm(rsa), "-nodes", "-days", "2",
        "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
    )  # fmt: skip
    key.chmod(0o600)
    kind = "RSA-2048" if rsa else "ECDSA P-256"
    return KeyPair(key, cert, kind, make_client(directory, rsa) if client else None)


def make_client(directory: Path, rsa: bool = False) -> ClientPair:
    """A CA (self-signed) and a client certificate it signed, for clientAuth,
    with a DNS and an email subject alternative name, as a user's would have."""
    ca_key, ca = directory / "ca-key.pem", directory / "ca.pem"
    _openssl(
        "req", "-x509", *_algorithm(rsa), "-nodes", "-days", "2",
        "-keyout", str(ca_key), "-out", str(ca), "-subj", "/CN=s6tls bench CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    key, request, cert = (directory / f"client-{n}.pem" for n in ("key", "req", "cert"))
    subject = "bench-client-0001"
    _openssl(
        "req", "-new", *_algorithm(rsa), "-nodes", "-keyout", str(key), "-out", str(request),
        "-subj", f"/CN={subject}",
    )  # fmt: skip
    extensions = directory / "client.ext"
    extensions.write_text(
        "basicConstraints = critical,CA:FALSE\n"
        "keyUsage = critical,digitalSignature\n"
        "extendedKeyUsage = clientAuth\n"
        f"subjectAltName = DNS:{subject}.bench.invalid,email:{subject}@bench.invalid\n"
        "subjectKeyIdentifier = hash\n"
        "authorityKeyIdentifier = keyid\n"
    )
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-extfile", str(extensions), "-out", str(cert),
    )  # fmt: skip
    for private in (ca_key, key):
        private.chmod(0o600)
    return ClientPair(key=key, cert=cert, ca=ca, subject=subject)
