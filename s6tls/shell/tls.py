"""The TLS engine: contexts from key files, and TLS over a gevent socket.

OpenSSL runs on memory BIOs (``ssl.SSLObject``), not on the socket itself:
that is what lets the server half-close TCP while TLS stays usable, send
close_notify only when asked, and hand TLS the bytes read past a PROXY header.
"""

from __future__ import annotations

import base64
import errno
import os
import socket
import ssl
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from typing import Protocol, cast

from gevent.event import Event
from gevent.socket import socket as GeventSocket

from s6tls.errors import SystemFailure
from s6tls.options import ClientCert
from s6tls.shell.fdio import read_into, shared_buffer, write_all
from s6tls.sslvars import TlsInfo
from s6tls.tlsconfig import TlsSettings, match_name

# Large enough for a full TLS record with its overhead, so one read drains one.
RECV_SIZE = 65536 + 512
PLAIN_CHUNK = 65536
# What one read() hands to prog at most: several records, one pipe write.
PLAIN_BATCH = 4 * PLAIN_CHUNK

# One receive buffer for the whole process: _fill copies what it received into
# OpenSSL before anything else can run, so sessions never see each other's
# bytes, and an idle session holds no 64 KiB buffer of its own.
_RECV_BUFFER = shared_buffer(RECV_SIZE)
# Where read() decrypts to, likewise (see s6tls.shell.fdio).
_PLAIN_BUFFER = shared_buffer(PLAIN_BATCH)

# TLS 1.2 suites: forward secrecy (ECDHE) and AEAD only, in this order of
# preference, as Mozilla's "intermediate" profile (less its DHE suites). A
# client that offers only CBC suites gets a handshake_failure alert. TLS 1.3's
# suites are all AEAD; this string does not touch them.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"

_VERIFY = {
    ClientCert.NONE: ssl.CERT_NONE,
    ClientCert.OPTIONAL: ssl.CERT_OPTIONAL,
    ClientCert.REQUIRED: ssl.CERT_REQUIRED,
}


class TlsConfigError(SystemFailure):
    """A key, certificate or trust anchor file cannot be used.

    ``transient`` is true when the system, not the file, was the problem (out
    of descriptors or memory): the same file may load at the next try.
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


_TRANSIENT = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.EINTR}


class HandshakeFailed(Exception):
    """The handshake did not complete; the message says why, in one line."""


class ServerSSLObject(ssl.SSLObject):
    """An SSLObject that remembers the SNI name the client sent."""

    servername: str | None = None


def _choose_context(
    named: Mapping[str, ssl.SSLContext],
    required: bool,
    obj: ssl.SSLObject,
    servername: str | None,
    _ctx: ssl.SSLContext,
) -> int | None:
    """SNI: remember the name, and switch to its pair if one is configured."""
    if isinstance(obj, ServerSSLObject):
        obj.servername = servername
    chosen = match_name(named, servername) if servername else None
    if chosen is not None:
        obj.context = chosen
    elif required:
        return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
    return None


FileIdentity = tuple[int, int, int, int, int]


class Files(Protocol):
    """How the TLS engine reaches its files: directly, or through the
    privileged helper once the server runs as TLS_UID."""

    def read(self, path: str) -> bytes: ...

    def identity(self, path: str) -> FileIdentity: ...

    def listdir(self, path: str) -> list[str]:
        """The regular files in a directory, as full paths, sorted."""


class LocalFiles:
    """Files read by this process itself."""

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def identity(self, path: str) -> FileIdentity:
        st = os.stat(path)
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def listdir(self, path: str) -> list[str]:
        paths = (os.path.join(path, name) for name in sorted(os.listdir(path)))
        return [p for p in paths if os.path.isfile(p)]


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


def _load_pair(ctx: ssl.SSLContext, files: Files, keyfile: str, certfile: str) -> None:
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


def _load_trust(ctx: ssl.SSLContext, files: Files, cafile: str | None, cadir: str | None) -> None:
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


def make_context(settings: TlsSettings, files: Files) -> ssl.SSLContext:
    """The context a handshake starts with; SNI may switch it to a named pair."""
    named = {name: _pair_context(settings, files, key, cert) for name, key, cert in settings.named}
    if settings.keyfile and settings.certfile:
        initial = _pair_context(settings, files, settings.keyfile, settings.certfile)
    else:
        initial = next(iter(named.values()))
    initial.sni_callback = partial(_choose_context, named, settings.sni_required)
    return initial


def _pair_context(
    settings: TlsSettings, files: Files, keyfile: str, certfile: str
) -> ssl.SSLContext:
    """A server context: TLS 1.2 and 1.3, ECDHE and AEAD suites in the
    server's order, no renegotiation, no compression.

    Each context carries the client-certificate policy itself: OpenSSL keeps
    the first context's verify mode when SNI switches to another one.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    # A bare FIN must not poison the TLS object: the reply still has to go out.
    ctx.options |= (
        ssl.OP_NO_RENEGOTIATION
        | ssl.OP_NO_COMPRESSION
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_IGNORE_UNEXPECTED_EOF
    )
    ctx.sslobject_class = ServerSSLObject
    # One ticket is all a client needs to resume; OpenSSL's default of two
    # costs a second ticket's encryption (about 40 us) per full handshake.
    ctx.num_tickets = 1
    _load_pair(ctx, files, keyfile, certfile)
    ctx.verify_mode = _VERIFY[settings.client_cert]
    if settings.client_cert is not ClientCert.NONE:
        _load_trust(ctx, files, settings.cafile, settings.cadir)
    return ctx


class ContextCache:
    """One context per settings, rebuilt only when one of its files changes.

    A stat per file and connection is the whole cost of noticing a rotated
    certificate; a replacement that fails to load keeps the last good context
    and is reported once.
    """

    def __init__(self, warn: Callable[[str], None], files: Files | None = None) -> None:
        self._warn = warn
        self.files: Files = files or LocalFiles()
        self._entries: dict[TlsSettings, tuple[tuple[FileIdentity, ...], ssl.SSLContext]] = {}
        self._failed: dict[TlsSettings, tuple[FileIdentity, ...]] = {}

    def get(self, settings: TlsSettings) -> ssl.SSLContext:
        entry = self._entries.get(settings)
        try:
            ids = tuple(self.files.identity(p) for p in settings.paths())
        except OSError as e:
            if entry is None:
                raise TlsConfigError(f"unable to read {e.filename}: {e.strerror}") from None
            return entry[1]
        if entry is not None and entry[0] == ids:
            return entry[1]
        if entry is not None and self._failed.get(settings) == ids:
            return entry[1]
        try:
            ctx = make_context(settings, self.files)
        except TlsConfigError as e:
            if entry is None:
                raise
            if e.transient:
                return entry[1]  # try again with the next connection
            self._failed[settings] = ids
            self._warn(f"{e}; still serving the previous one")
            return entry[1]
        self._entries[settings] = (ids, ctx)
        self._failed.pop(settings, None)
        return ctx


def _decrypt(obj: ssl.SSLObject, buf: memoryview) -> int:
    """Decrypt into buf (at most one record); how many bytes.

    (typeshed's SSLObject.read is always bytes: with a buffer, it is the count.)
    """
    return cast(int, obj.read(len(buf), buf))


class _OneAtATime:
    """A lock for sending: a send that must wait keeps the other greenlet's out,
    so records reach the socket in the order OpenSSL made them. Taking it
    costs nothing while nobody waits."""

    def __init__(self) -> None:
        self._held = False
        self._freed: Event | None = None

    def __enter__(self) -> None:
        while self._held:
            if self._freed is None:
                self._freed = Event()
            self._freed.wait()
        self._held = True

    def __exit__(self, *_: object) -> None:
        self._held = False
        freed, self._freed = self._freed, None
        if freed is not None:
            freed.set()


class TlsStream:
    """A server-side TLS session over a gevent socket, driven through memory BIOs."""

    def __init__(self, sock: GeventSocket, ctx: ssl.SSLContext, pending: bytes = b"") -> None:
        self.sock = sock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        if pending:
            self._in.write(pending)
        self.ssl = ctx.wrap_bio(self._in, self._out, server_side=True)
        self._sending = _OneAtATime()
        self._unsent_ticket = 0  # bytes of output that need not go out before we wait
        self.clean_eof = False

    def _fill(self) -> None:
        """Move what the socket has into OpenSSL; at EOF, tell OpenSSL so."""
        n = read_into(self.sock.fileno(), _RECV_BUFFER)
        if n:
            self._in.write(_RECV_BUFFER[:n])
        else:
            self._in.write_eof()

    def flush(self) -> None:
        """Send whatever OpenSSL produced, in one send, in order."""
        self._unsent_ticket = 0
        with self._sending:
            data = self._out.read()
            if data:
                write_all(self.sock.fileno(), data)

    def handshake(self) -> TlsInfo:
        """Run the server handshake; raise HandshakeFailed with the reason."""
        try:
            while True:
                try:
                    self.ssl.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self.flush()
                    if self._in.eof:
                        raise HandshakeFailed("the client closed the connection") from None
                    self._fill()
            if self.ssl.version() == "TLSv1.3":
                # All that is left is the session ticket, which no client
                # waits for: it goes out with our first reply, in one send.
                self._unsent_ticket = self._out.pending
            else:
                self.flush()
        except ssl.SSLZeroReturnError:
            # With OP_IGNORE_UNEXPECTED_EOF a bare FIN reads as a close_notify.
            raise HandshakeFailed("the client closed the connection") from None
        except ssl.SSLError as e:
            try:
                self.flush()  # the alert, so the client learns why
            except OSError:
                pass
            reason = e.reason or e.strerror or str(e)
            raise HandshakeFailed(
                f"the TLS engine closed the connection during the handshake: {reason}"
            ) from None
        except OSError as e:
            raise HandshakeFailed(f"unable to talk to remote: {e.strerror or e}") from None
        return self.info()

    def info(self) -> TlsInfo:
        obj = self.ssl
        cipher = obj.cipher()
        der = obj.getpeercert(binary_form=True)
        decoded = obj.getpeercert() if der else None
        subject = decoded.get("subject") if decoded else None
        return TlsInfo(
            protocol=obj.version() or "",
            cipher=cipher[0] if cipher else "",
            servername=getattr(obj, "servername", None),
            peer_der=der,
            peer_subject=subject,  # type: ignore[arg-type]
        )

    def read(self) -> memoryview:
        """Cleartext from the peer; empty at its end (close_notify or bare EOF).

        Returns every record already received, up to PLAIN_BATCH, so that a
        bulk upload reaches prog in few large writes. The view is of a buffer
        the whole process shares: use it before anything can wait.
        """
        buf = _PLAIN_BUFFER
        size = 0
        while True:
            try:
                size = _decrypt(self.ssl, buf)
            except ssl.SSLWantReadError:
                if self._out.pending > self._unsent_ticket:
                    self.flush()
                self._fill()
                continue
            except ssl.SSLZeroReturnError:
                pass
            break
        if size:
            size = self._more(buf, size)
        else:
            # With OP_IGNORE_UNEXPECTED_EOF a bare FIN also reads as a clean
            # end; it was clean only if it came before the socket's EOF.
            self.clean_eof = not self._in.eof
        data = buf[:size]
        if self._out.pending > self._unsent_ticket:  # e.g. a TLS 1.3 key update answer
            data = memoryview(bytes(data))  # sending it may wait
            self.flush()
        return data

    def _more(self, buf: memoryview, size: int) -> int:
        """Add to buf[:size] what else is decryptable now without waiting."""
        while size < PLAIN_BATCH and (self._in.pending or self.ssl.pending()):
            try:
                more = _decrypt(self.ssl, buf[size:])
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break  # the end, if it is one, shows at the next read
            if not more:
                break
            size += more
        return size

    def write(self, data: bytes | memoryview) -> None:
        """Encrypt and send cleartext for the peer."""
        self.ssl.write(data)
        self.flush()

    def half_close(self) -> None:
        """Say we are done sending (TCP FIN), leaving TLS usable for reading."""
        self.flush()
        self.sock.shutdown(socket.SHUT_WR)

    def close_notify(self) -> None:
        """Send close_notify without waiting for the peer's."""
        try:
            self.ssl.unwrap()
        except ssl.SSLWantReadError:
            pass
        self.flush()
