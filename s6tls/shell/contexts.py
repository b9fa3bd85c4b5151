"""TLS contexts: built from the key, certificate, trust anchor and revocation
files (``s6tls.shell.keyfiles`` loads them), chosen by SNI, and rebuilt when
a file changes.

Upstream reads its files for every connection (a process each), so a
replaced certificate serves the next client; here one context serves many
connections, and ``ContextCache`` keeps that promise for a stat per file.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Mapping
from functools import partial

from s6tls.options import ClientCert
from s6tls.shell.files import FileIdentity, Files, LocalFiles
from s6tls.shell.keyfiles import TlsConfigError, load_crls, load_pair, load_trust
from s6tls.tlsconfig import TlsSettings, match_name

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


# RFC 7301, section 3.2: the server supports none of the client's protocols.
ALERT_NO_APPLICATION_PROTOCOL = 120
# OpenSSL's X509_V_ERR_CRL_HAS_EXPIRED: the CRL is past its next update.
CRL_HAS_EXPIRED = 12


class ServerSSLObject(ssl.SSLObject):
    """An SSLObject that remembers the SNI name the client sent, and why our
    own callback refused the handshake, if it did."""

    servername: str | None = None
    refusal: str | None = None
    # With ALPN, the stream (s6tls.shell.tls) keeps the bytes the client
    # sends during the handshake in hello, for the callback to read.
    keeps_hello = False
    hello: bytearray | None = None


class AlpnSSLObject(ServerSSLObject):
    """A ServerSSLObject whose stream keeps the client's first bytes."""

    keeps_hello = True


def _on_client_hello(
    named: Mapping[str, ssl.SSLContext],
    required: bool,
    alpn: frozenset[bytes],
    obj: ssl.SSLObject,
    servername: str | None,
    _ctx: ssl.SSLContext,
) -> int | None:
    """OpenSSL's SNI callback, which it runs for every ClientHello, with or
    without SNI, before it negotiates ALPN: remember the name, switch to its
    pair if one is configured, and refuse a client whose ALPN offer has no
    protocol of ours (OpenSSL would go on without ALPN)."""
    if isinstance(obj, ServerSSLObject):
        obj.servername = servername
        if alpn and obj.hello is not None and (refusal := _alpn_refusal(alpn, obj.hello)):
            obj.refusal = refusal
            return ALERT_NO_APPLICATION_PROTOCOL
    chosen = match_name(named, servername) if named and servername else None
    if chosen is not None:
        obj.context = chosen
    elif required:
        if isinstance(obj, ServerSSLObject):  # else the log line says CALLBACK_FAILED
            obj.refusal = (
                f"no certificate for SNI name {servername}" if servername else "no SNI name sent"
            )
        return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
    return None


def _alpn_refusal(alpn: frozenset[bytes], received: bytes | bytearray) -> str | None:
    """Why a client that sent these bytes must be refused, or None to go on."""
    from s6tls.clienthello import ClientHelloError, read_client_hello  # with ALPN only

    try:
        hello = read_client_hello(bytes(received))
    except ClientHelloError as e:
        return f"unreadable ClientHello ({e})"  # OpenSSL read it: fail closed
    if hello is None:
        return "unreadable ClientHello (incomplete)"
    if hello.alpn is None or not alpn.isdisjoint(hello.alpn):
        return None
    offered = ", ".join(p.decode("ascii", "backslashreplace") for p in hello.alpn)
    return f"no application protocol in common (offered: {offered})"


class ServerContext(ssl.SSLContext):
    """A server context, and when it must be built again although no file
    changed: ``crl_deadline``, a second after the next of its CRLs to pass
    its next update (None: never). From then on OpenSSL refuses the clients
    of that CRL's issuer, but a session made before would still resume, and
    resumption checks no certificate: a new context (new ticket keys, an
    empty session cache) resumes none of them."""

    crl_deadline: float | None = None


def make_context(settings: TlsSettings, files: Files) -> ServerContext:
    """The context a handshake starts with; SNI may switch it to a named pair."""
    named = {name: _pair_context(settings, files, key, cert) for name, key, cert in settings.named}
    if settings.keyfile and settings.certfile:
        initial = _pair_context(settings, files, settings.keyfile, settings.certfile)
    else:
        initial = next(iter(named.values()))
    ours = frozenset(p.encode() for p in settings.alpn)
    initial.sni_callback = partial(_on_client_hello, named, settings.sni_required, ours)
    return initial


def _pair_context(
    settings: TlsSettings, files: Files, keyfile: str, certfile: str
) -> ServerContext:
    """A server context: TLS 1.2 and 1.3, ECDHE and AEAD suites in the
    server's order, no renegotiation, no compression.

    Each context carries the client-certificate policy itself: OpenSSL keeps
    the first context's verify mode when SNI switches to another one.
    """
    ctx = ServerContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    # A bare FIN must not poison the TLS object: the reply still has to go out.
    ctx.options |= (
        ssl.OP_NO_RENEGOTIATION
        | ssl.OP_NO_COMPRESSION
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_IGNORE_UNEXPECTED_EOF
    )
    ctx.sslobject_class = AlpnSSLObject if settings.alpn else ServerSSLObject
    if settings.alpn:
        ctx.set_alpn_protocols(settings.alpn)
    # One ticket is all a client needs to resume; OpenSSL's default of two
    # costs a second ticket's encryption (about 40 us) per full handshake.
    ctx.num_tickets = 1
    load_pair(ctx, files, keyfile, certfile)
    ctx.verify_mode = _VERIFY[settings.client_cert]
    if settings.client_cert is not ClientCert.NONE:
        load_trust(ctx, files, settings.cafile, settings.cadir)
        if settings.crlfile:
            ctx.crl_deadline = load_crls(ctx, files, settings.crlfile)
    return ctx


class ContextCache:
    """One context per settings, rebuilt only when one of its files changes
    (or, once, when one of its CRLs passes its next update: ServerContext).

    A stat per file and connection is the whole cost of noticing a rotated
    certificate; a replacement that fails to load keeps the last good context
    and is reported once.
    """

    def __init__(self, warn: Callable[[str], None], files: Files | None = None) -> None:
        self._warn = warn
        self.files: Files = files or LocalFiles()
        self._entries: dict[TlsSettings, tuple[tuple[FileIdentity, ...], ServerContext]] = {}
        self._failed: dict[TlsSettings, tuple[FileIdentity, ...]] = {}
        self._expired: set[int] = set()  # contexts whose CRL was reported past its date

    def get(self, settings: TlsSettings) -> ServerContext:
        entry = self._entries.get(settings)
        try:
            ids = tuple(self.files.identity(p) for p in settings.paths())
        except OSError as e:
            if entry is None:
                raise TlsConfigError(f"unable to read {e.filename}: {e.strerror}") from None
            return entry[1]
        if entry is not None and (entry[0] == ids or self._failed.get(settings) == ids):
            deadline = entry[1].crl_deadline
            if deadline is None or time.time() < deadline:
                return entry[1]
        try:
            ctx = make_context(settings, self.files)
        except TlsConfigError as e:
            if entry is None:
                raise
            if e.transient:
                return entry[1]  # try again with the next connection
            entry[1].crl_deadline = None  # rebuilt at the next change only
            self._failed[settings] = ids
            self._warn(f"{e}; still serving the previous one")
            return entry[1]
        self._entries[settings] = (ids, ctx)
        self._failed.pop(settings, None)
        if entry is not None:
            self._expired.discard(id(entry[1]))
        return ctx

    def crl_expired(self, settings: TlsSettings) -> None:
        """A client certificate was refused because CRLFILE is past its next
        update: say so once for the CRL in force (every client certificate is
        refused until it is replaced)."""
        entry = self._entries.get(settings)
        if entry is None or id(entry[1]) in self._expired:
            return
        self._expired.add(id(entry[1]))
        self._warn(
            f"revocation list {settings.crlfile} is past its next update:"
            " every client certificate is refused until it is replaced"
        )
