"""The SSL_* variables that describe a finished TLS handshake to prog."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Upstream names these six attributes, always in this order, and no others.
_SUBJECT_ORDER = ("C", "ST", "L", "O", "OU", "CN")
_ESCAPED = ",+=<>#\\\n"

# A subject as (short attribute name, value) pairs, in certificate order
# (s6tls.certinfo.subject_of).
Subject = Iterable[tuple[str, str]]


def escape(value: str) -> str:
    """Backslash-escape the characters upstream escapes in a DN value."""
    return "".join("\\" + c if c in _ESCAPED else c for c in value)


def subject_string(subject: Subject) -> str:
    """Format a certificate subject as upstream does: ``C=.., O=.., CN=..``."""
    found: dict[str, str] = {}
    for attribute, value in subject:
        found.setdefault(attribute, value)
    return ", ".join(f"{name}={escape(found[name])}" for name in _SUBJECT_ORDER if name in found)


def cert_hash(der: bytes) -> str:
    """``SHA256:`` and the lowercase hex digest of a certificate's DER form."""
    import hashlib  # here only: a server without client certificates never needs it

    return "SHA256:" + hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class TlsInfo:
    """What prog learns about its TLS session."""

    protocol: str
    cipher: str
    servername: str | None = None
    peer_der: bytes | None = None
    peer_subject: tuple[tuple[str, str], ...] | None = None
    alpn: str | None = None  # the negotiated application protocol

    def variables(self) -> dict[str, str]:
        """The SSL_* variables; those that do not apply are absent."""
        env = {"SSL_PROTOCOL": self.protocol, "SSL_CIPHER": self.cipher}
        if self.servername is not None:
            env["SSL_TLS_SNI_SERVERNAME"] = self.servername
        if self.peer_der is not None:
            env["SSL_PEER_CERT_HASH"] = cert_hash(self.peer_der)
            if self.peer_subject is not None:
                env["SSL_PEER_CERT_SUBJECT"] = subject_string(self.peer_subject)
        if self.alpn is not None:
            env["SSL_ALPN_PROTOCOL"] = self.alpn
        return env
