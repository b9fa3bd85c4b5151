"""Key material into a TLS context: the key pair (PEM or DER), the trust
anchors (CADIR with any file names, or CAFILE) and the revocation lists
(CRLFILE), each read through a Files (the root helper's, with TLS_UID), and
handed to OpenSSL through memory files that never touch a disk.
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import re
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager

from s6tls.errors import SystemFailure
from s6tls.shell.files import Files


class TlsConfigError(SystemFailure):
    """A key, certificate or trust anchor file cannot be used.

    ``transient`` is true when the system, not the file, was the problem (out
    of descriptors or memory): the same file may load at the next try.
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


_TRANSIENT = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EINTR}


def _read(files: Files, path: str, what: str) -> bytes:
    try:
        return files.read(path)
    except OSError as e:
        message = f"unable to read {what} {path}: {e.strerror}"
        raise TlsConfigError(message, transient=e.errno in _TRANSIENT) from None


def _pem(der: bytes, label: str) -> bytes:
    body = base64.encodebytes(der).decode("ascii")
    return f"-----BEGIN {label}-----\n{body}-----END {label}-----\n".encode()


def _is_pem(data: bytes) -> bool:
    return b"-----BEGIN " in data


def _cert_pem(data: bytes) -> bytes:
    return data if _is_pem(data) else ssl.DER_cert_to_PEM_cert(data).encode("ascii")


def _key_pems(data: bytes) -> list[bytes]:
    """PEM forms to try for a key: a DER key may be PKCS#8, SEC1 or PKCS#1."""
    if _is_pem(data):
        return [data]
    return [_pem(data, label) for label in ("PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY")]


@contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path to data that never touches a disk (key material included)."""
    fd = os.memfd_create("s6tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


# OpenSSL's names for a key that does not go with its certificate.
_PAIR_REASONS = {
    "KEY_VALUES_MISMATCH": "the key does not match the certificate",
    "NO_CERTIFICATE_ASSIGNED": "the key does not match the certificate",
}


def load_pair(ctx: ssl.SSLContext, files: Files, keyfile: str, certfile: str) -> None:
    cert = _cert_pem(_read(files, certfile, "certificate"))
    key = _read(files, keyfile, "key")
    reason = "no usable key"
    with _memory_file(cert) as cert_path:
        for candidate in _key_pems(key):
            with _memory_file(candidate) as key_path:
                try:
                    ctx.load_cert_chain(cert_path, key_path)
                    return
                except ssl.SSLError as e:
                    reason = _PAIR_REASONS.get(e.reason or "", e.reason or "not a PEM or DER key")
    raise TlsConfigError(f"unable to use key {keyfile} with certificate {certfile}: {reason}")


def load_trust(ctx: ssl.SSLContext, files: Files, cafile: str | None, cadir: str | None) -> None:
    """Trust anchors from CADIR (any file names, PEM or DER) or else CAFILE (PEM)."""
    if cadir:
        try:
            paths = files.listdir(cadir)
        except OSError as e:
            raise TlsConfigError(f"unable to read CADIR {cadir}: {e.strerror}") from None
    else:
        paths = [cafile] if cafile else []
    for path in paths:
        data = _read(files, path, "trust anchors in")
        try:
            if _is_pem(data):
                ctx.load_verify_locations(cadata=data.decode("ascii", "replace"))
            else:
                ctx.load_verify_locations(cadata=data)
        except (ssl.SSLError, ValueError) as e:
            reason = getattr(e, "reason", None) or str(e)
            raise TlsConfigError(f"unable to read trust anchors in {path}: {reason}") from None


def load_crls(ctx: ssl.SSLContext, files: Files, crlfile: str) -> float | None:
    """CRLFILE: the PEM CRLs that client certificates are checked against.

    Only the client's own certificate is checked (its issuer's CRL must be
    in the file, or it is refused): OpenSSL's check of the whole chain would
    refuse every client whose intermediate CAs have no CRL here.

    Returns when the context must be built again for a CRL that passes its
    next update (``s6tls.shell.contexts.ServerContext.crl_deadline``).
    """
    data = _read(files, crlfile, "revocation list")
    before = ctx.cert_store_stats()["crl"]
    try:
        with _memory_file(data) as path:
            ctx.load_verify_locations(cafile=path)
    except ssl.SSLError as e:
        # OpenSSL gives no reason for a PEM block it cannot decode ("PEM lib").
        reason = e.reason or "bad PEM data"
        raise TlsConfigError(f"unable to read revocation list {crlfile}: {reason}") from None
    if ctx.cert_store_stats()["crl"] == before:
        raise TlsConfigError(f"unable to read revocation list {crlfile}: no PEM X509 CRL in it")
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return _crl_deadline(data, time.time())


_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----(.*?)-----END X509 CRL-----", re.DOTALL)


def _crl_deadline(data: bytes, now: float) -> float | None:
    """A second after the earliest next update of the CRLs in data that OpenSSL
    does not already see as past (it is past once the second after it begins)."""
    from s6tls.certinfo import CertificateError, crl_next_update  # with CRLFILE only

    deadlines = []
    for block in _PEM_CRL.findall(data):
        try:
            next_update = crl_next_update(base64.b64decode(block))
        except (CertificateError, binascii.Error, ValueError):
            continue  # OpenSSL loaded it: only its date is unknown
        if next_update is not None and next_update + 1 > now:
            deadlines.append(next_update + 1.0)
    return min(deadlines, default=None)
