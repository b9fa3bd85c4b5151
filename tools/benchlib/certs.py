"""The one key and certificate every server under test presents."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KeyPair:
    """A private key and its self-signed certificate, as PEM files."""

    key: Path
    cert: Path
    kind: str  # what the table header says, e.g. "ECDSA P-256"


def make_pair(directory: Path, rsa: bool = False) -> KeyPair:
    """A throwaway pair for localhost and 127.0.0.1: ECDSA P-256, or RSA-2048."""
    key, cert = directory / "key.pem", directory / "cert.pem"
    algorithm = (
        ["-newkey", "rsa:2048"] if rsa else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    )
    subprocess.run(
        [
            "openssl", "req", "-x509", *algorithm, "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    key.chmod(0o600)
    return KeyPair(key=key, cert=cert, kind="RSA-2048" if rsa else "ECDSA P-256")
