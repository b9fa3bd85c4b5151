"""TLS over a gevent socket: the handshake, then records both ways.

OpenSSL runs on memory BIOs (``ssl.SSLObject``), not on the socket itself:
that is what lets the server half-close TCP while TLS stays usable, send
close_notify only when asked, and hand TLS the bytes read past a PROXY header.
The contexts it runs with come from ``s6tls.shell.contexts``.
"""

from __future__ import annotations

import socket
import ssl
import sys
from typing import cast

from gevent.event import Event
from gevent.socket import socket as GeventSocket

from s6tls.logline import PROG, one_line, say
from s6tls.shell.fdio import read_into, shared_buffer, write_all
from s6tls.sslvars import TlsInfo

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


# Python's ssl reports an SNI name it cannot decode (one that is not ASCII)
# through sys.unraisablehook, with a traceback, then fails the handshake with
# CALLBACK_FAILED: the hook below keeps the reason for that handshake's log
# line instead. It runs inside do_handshake, in the session's own greenlet.
_unreadable_name: str | None = None


def unraisable(hook_args: sys.UnraisableHookArgs) -> None:
    """sys.unraisablehook: an undecodable SNI name becomes the reason of its
    handshake's failure; anything else, one warning line (never a traceback)."""
    global _unreadable_name
    error = hook_args.exc_value
    if isinstance(error, UnicodeDecodeError) and isinstance(hook_args.object, bytes):
        _unreadable_name = f"SNI name not ASCII: {hook_args.object!r}"
        return
    say(PROG, "warning", one_line(f"{hook_args.exc_type.__name__}: {error}"))


def _subject(der: bytes) -> tuple[tuple[str, str], ...] | None:
    """The client certificate's subject, read from its DER (ssl's own decoder
    fails on bytes that are not UTF-8)."""
    from s6tls.certinfo import subject_of  # with client certificates only

    return subject_of(der)


class HandshakeFailed(Exception):
    """The handshake did not complete; the message says why, in one line.

    ``verify_code``: OpenSSL's reason for refusing the client's certificate,
    when that was why.
    """

    def __init__(self, message: str, verify_code: int | None = None) -> None:
        super().__init__(message)
        self.verify_code = verify_code


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
        # With ALPN, the ClientHello is read again by the SNI callback
        # (s6tls.shell.contexts): keep what the client sends until the end
        # of the handshake, up to what that reader looks at.
        self._hello: bytearray | None = None
        if getattr(self.ssl, "keeps_hello", False):
            from s6tls.clienthello import MAX_HELLO_BYTES

            self._hello_max = MAX_HELLO_BYTES
            self._hello = self.ssl.hello = bytearray(pending[:MAX_HELLO_BYTES])  # type: ignore[attr-defined]
        self._sending = _OneAtATime()
        self._unsent_ticket = 0  # bytes of output that need not go out before we wait
        self.clean_eof = False

    def _fill(self) -> None:
        """Move what the socket has into OpenSSL; at EOF, tell OpenSSL so."""
        n = read_into(self.sock.fileno(), _RECV_BUFFER)
        if n:
            self._in.write(_RECV_BUFFER[:n])
            if self._hello is not None and len(self._hello) < self._hello_max:
                self._hello += _RECV_BUFFER[: min(n, self._hello_max - len(self._hello))]
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
            if self._hello is not None:  # read: a session need not keep it
                self._hello = self.ssl.hello = None  # type: ignore[attr-defined]
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
            global _unreadable_name
            reason = getattr(self.ssl, "refusal", None) or _unreadable_name
            reason = reason or e.reason or e.strerror or str(e)
            _unreadable_name = None  # read before anything else may run
            try:
                self.flush()  # the alert, so the client learns why
            except OSError:
                pass
            code = None
            if isinstance(e, ssl.SSLCertVerificationError):
                reason, code = f"{reason} ({e.verify_message})", e.verify_code
            raise HandshakeFailed(
                f"the TLS engine closed the connection during the handshake: {reason}", code
            ) from None
        except OSError as e:
            raise HandshakeFailed(f"unable to talk to remote: {e.strerror or e}") from None
        return self.info()

    def info(self) -> TlsInfo:
        obj = self.ssl
        cipher = obj.cipher()
        der = obj.getpeercert(binary_form=True)
        return TlsInfo(
            protocol=obj.version() or "",
            cipher=cipher[0] if cipher else "",
            servername=getattr(obj, "servername", None),
            peer_der=der,
            peer_subject=_subject(der) if der else None,
            alpn=obj.selected_alpn_protocol(),
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
