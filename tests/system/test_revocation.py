"""Revoked client certificates (CRLFILE, SPEC.md §4b) through the real server.

The CRLs are PEM files written with cryptography's
CertificateRevocationListBuilder and replaced by rename under a running
server, which reloads them at the next connection; a client is checked
against its issuer's CRL (its own certificate only).
"""

from __future__ import annotations

import datetime
import functools
import os
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography import x509

from tests.support import client
from tests.support.certs import Authority, Pair
from tests.support.server import S6_TLSSERVER, Running, run_command

if TYPE_CHECKING:
    from tests.conftest import PKI, ServerFactory

pytestmark = [pytest.mark.timeout(60), pytest.mark.both_engines]

# How a client talks: its version, and for TLS 1.2, tickets or the server's session cache.
TLS13, TLS12, TLS12_ID = "TLSv1.3", "TLSv1.2", "TLSv1.2, session id"
REVOKED = "CERTIFICATE_VERIFY_FAILED (certificate revoked)"
EXPIRED_CRL = (
    "revocation list {} is past its next update:"
    " every client certificate is refused until it is replaced"
)


@pytest.fixture(scope="module")
def alice(pki: PKI) -> Pair:
    return pki.ca.issue("crl-alice", client=True, subject={"CN": "alice"})


@pytest.fixture(scope="module")
def bob(pki: PKI) -> Pair:
    return pki.ca.issue("crl-bob", client=True, subject={"CN": "bob"})


def replace(path: Path, data: bytes) -> None:
    """Replace path by rename, as an administrator (or a CA's tool) would."""
    temp = path.with_name(path.name + ".new")
    temp.write_bytes(data)
    os.rename(temp, path)


def marker_prog(marker: Path) -> tuple[str, ...]:
    """Reads a line first (so a TLS 1.3 client gets its ticket), then env;
    adds a line to marker, so a test counts the progs that ran."""
    return ("/bin/sh", "-c", f"echo ran >> {marker}; read x; exec /usr/bin/env")


def ran(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


@functools.cache
def context(pair: Pair, mode: str | None) -> ssl.SSLContext:
    """One client context per certificate and mode (TLS13...): a session
    resumes only with the context that made it."""
    version = None if mode is None else ssl.TLSVersion[mode[:7].replace(".", "_")]
    ctx = client.context(cert=(pair.key, pair.cert), version=version)
    if mode == TLS12_ID:
        ctx.options |= ssl.OP_NO_TICKET  # resumption by session id only
    return ctx


def serve(
    srv: Running,
    pair: Pair,
    mode: str | None = None,
    session: ssl.SSLSession | None = None,
) -> tuple[dict[str, str], ssl.SSLSession | None, bool]:
    """prog's environment, the session to resume later, whether this one was resumed."""
    with client.connect(srv.port, ctx=context(pair, mode), session=session) as s:
        s.sendall(b"go\n")
        data, _ = client.read_all(s)
        return client.env_of(data), s.session, s.session_reused


def refused(
    srv: Running,
    pair: Pair,
    mode: str | None = None,
    session: ssl.SSLSession | None = None,
) -> str:
    """The alert a refused client gets (a TLS 1.3 client sees it at its first read)."""
    with pytest.raises(ssl.SSLError) as caught:
        serve(srv, pair, mode, session)
    return str(caught.value)


def crl_server(server: ServerFactory, pki: PKI, crl: Path, prog: tuple[str, ...]) -> Running:
    """-S: sessions end with close_notify, without which OpenSSL drops a
    session from the server's cache, and TLS 1.2 session ids never resume."""
    env = {**pki.env(), "CAFILE": str(pki.ca.pem), "CRLFILE": str(crl)}
    return server("-H", "-S", "-Y", "127.0.0.1", "0", *prog, env=env)


def test_a_revoked_client_is_refused_until_the_crl_says_otherwise(
    server: ServerFactory, pki: PKI, alice: Pair, bob: Pair, tmp_path: Path
) -> None:
    crl = tmp_path / "ca.crl"
    crl.write_bytes(pki.ca.crl([alice.serial]))
    marker = tmp_path / "ran"
    srv = crl_server(server, pki, crl, marker_prog(marker))
    for version in (TLS13, TLS12):
        assert "alert certificate revoked" in refused(srv, alice, version)
    assert srv.wait_log(REVOKED, count=2)
    assert f"{alice.serial}" not in srv.log()  # (the line names why, not whom)
    assert ran(marker) == 0
    assert serve(srv, bob)[0]["SSL_PEER_CERT_SUBJECT"] == "CN=bob"
    # A CRL without alice, replaced under the running server: she is served again.
    replace(crl, pki.ca.crl([bob.serial]))
    assert serve(srv, alice)[0]["SSL_PEER_CERT_SUBJECT"] == "CN=alice"
    assert "alert certificate revoked" in refused(srv, bob)
    replace(crl, pki.ca.crl([alice.serial, bob.serial]))
    assert "alert certificate revoked" in refused(srv, alice)
    assert ran(marker) == 2
    assert srv.wait_log(REVOKED, count=4)
    # A client that sends no certificate (-Y) is not checked against the CRL.
    with client.connect(srv.port) as s:
        s.sendall(b"go\n")
        assert "SSL_PEER_CERT_HASH" not in client.env_of(client.read_all(s)[0])
    assert "Traceback" not in srv.log()


@pytest.mark.parametrize("mode", [TLS13, TLS12, TLS12_ID])
def test_a_revoked_client_cannot_resume_an_earlier_session(
    server: ServerFactory, pki: PKI, alice: Pair, bob: Pair, tmp_path: Path, mode: str
) -> None:
    crl = tmp_path / "ca.crl"
    crl.write_bytes(pki.ca.crl([]))
    marker = tmp_path / "ran"
    srv = crl_server(server, pki, crl, marker_prog(marker))
    _, session, _ = serve(srv, alice, mode)
    _, kept, _ = serve(srv, alice, mode)
    _, bobs, _ = serve(srv, bob, mode)
    assert session is not None and kept is not None and bobs is not None
    # Resumption works (TLS 1.3 ticket, TLS 1.2 ticket or session id) ...
    got, _, reused = serve(srv, alice, mode, session)
    assert reused and got["SSL_PEER_CERT_HASH"] == alice.cert_hash
    assert ran(marker) == 4
    # ... but not once alice is revoked: no resumption, a full handshake, refused.
    replace(crl, pki.ca.crl([alice.serial]))
    assert "alert certificate revoked" in refused(srv, alice, mode, kept)
    assert srv.wait_log(REVOKED)
    assert ran(marker) == 4
    # bob lost his session with the reload, not his access.
    got, _, reused = serve(srv, bob, mode, bobs)
    assert got["SSL_PEER_CERT_HASH"] == bob.cert_hash and not reused


@pytest.mark.parametrize("version", [TLS13, TLS12])
def test_an_expired_crl_refuses_every_client_certificate(
    server: ServerFactory, pki: PKI, alice: Pair, bob: Pair, tmp_path: Path, version: str
) -> None:
    crl = tmp_path / "ca.crl"
    crl.write_bytes(pki.ca.crl([], next_update=-datetime.timedelta(hours=1)))
    marker = tmp_path / "ran"
    srv = crl_server(server, pki, crl, marker_prog(marker))
    for pair in (alice, bob, alice):
        assert "alert certificate expired" in refused(srv, pair, version)
    assert srv.wait_log("CERTIFICATE_VERIFY_FAILED (CRL has expired)", count=3)
    assert srv.log().count(EXPIRED_CRL.format(crl)) == 1
    assert ran(marker) == 0
    # Replaced by a current one: served, and an expiry later is reported again.
    replace(crl, pki.ca.crl([]))
    assert serve(srv, bob, version)[0]["SSL_PEER_CERT_SUBJECT"] == "CN=bob"
    replace(crl, pki.ca.crl([], next_update=-datetime.timedelta(minutes=1)))
    assert "alert certificate expired" in refused(srv, alice, version)
    assert "alert certificate expired" in refused(srv, bob, version)
    assert srv.wait_log(EXPIRED_CRL.format(crl), count=2)
    time.sleep(0.1)
    assert srv.log().count(EXPIRED_CRL.format(crl)) == 2


def test_a_crl_that_expires_ends_resumption_too(
    server: ServerFactory, pki: PKI, alice: Pair, tmp_path: Path
) -> None:
    """A session made while the CRL was current is not resumed once the CRL
    is past its next update (the file unchanged): the client is refused."""
    crl = tmp_path / "ca.crl"
    data = pki.ca.crl([], next_update=datetime.timedelta(seconds=2))
    crl.write_bytes(data)
    next_update = x509.load_pem_x509_crl(data).next_update_utc
    assert next_update is not None
    marker = tmp_path / "ran"
    srv = crl_server(server, pki, crl, marker_prog(marker))
    sessions = {mode: serve(srv, alice, mode)[1] for mode in (TLS13, TLS12, TLS12_ID)}
    for mode, session in sessions.items():
        assert serve(srv, alice, mode, session)[2]  # resumed, while current
    # OpenSSL sees the CRL as past its next update from the second after it.
    time.sleep(max(0.0, next_update.timestamp() + 1.05 - time.time()))
    for mode, session in sessions.items():
        assert "alert certificate expired" in refused(srv, alice, mode, session)
    assert srv.wait_log("CERTIFICATE_VERIFY_FAILED (CRL has expired)", count=3)
    assert srv.log().count(EXPIRED_CRL.format(crl)) == 1
    assert ran(marker) == 6


def test_a_crlfile_that_does_not_load_at_start_up_exits_111(
    server: ServerFactory, pki: PKI, tmp_path: Path, engine: str
) -> None:
    confined = {"TLS_UID": "65534", "TLS_GID": "65534"} if engine == "confined" else {}
    garbage = tmp_path / "garbage.crl"
    garbage.write_bytes(b"-----BEGIN X509 CRL-----\nnot base64\n-----END X509 CRL-----\n")
    for path, message in (
        (tmp_path / "missing.crl", "unable to read {}: No such file or directory"),
        # a certificate, not a CRL
        (pki.ca.pem, "unable to read revocation list {}: no PEM X509 CRL in it"),
        (garbage, "unable to read revocation list {}: bad PEM data"),
    ):
        env = {**pki.env(), "CAFILE": str(pki.ca.pem), "CRLFILE": str(path), **confined}
        r = run_command([S6_TLSSERVER, "-H", "-Y", "127.0.0.1", "0", "cat"], env)
        assert (r.returncode, r.stderr) == (111, f"s6-tlsserver: fatal: {message.format(path)}\n")
    # Without -Y or -y, no client certificate is checked and CRLFILE is not read.
    env = {**pki.env(), "CRLFILE": str(tmp_path / "missing.crl")}
    srv = server("-H", "127.0.0.1", "0", "/usr/bin/env", env=env)
    with client.connect(srv.port) as s:
        assert "SSL_PROTOCOL" in client.env_of(client.read_all(s)[0])


def test_a_replacement_that_does_not_load_keeps_the_last_good_crl(
    server: ServerFactory, pki: PKI, alice: Pair, bob: Pair, tmp_path: Path
) -> None:
    crl = tmp_path / "ca.crl"
    crl.write_bytes(pki.ca.crl([alice.serial]))
    srv = crl_server(server, pki, crl, marker_prog(tmp_path / "ran"))
    assert "alert certificate revoked" in refused(srv, alice)
    replace(crl, b"-----BEGIN X509 CRL-----\ntruncated\n")
    for _ in range(3):
        assert "alert certificate revoked" in refused(srv, alice)
        assert serve(srv, bob)[0]["SSL_PEER_CERT_SUBJECT"] == "CN=bob"
    warnings = [line for line in srv.lines() if str(crl) in line]
    assert warnings == [
        f"s6-tlsserver: warning: unable to read revocation list {crl}: bad PEM data;"
        " still serving the previous one"
    ]
    # A good one again is taken at once.
    replace(crl, pki.ca.crl([]))
    assert serve(srv, alice)[0]["SSL_PEER_CERT_SUBJECT"] == "CN=alice"


def test_a_client_whose_issuer_has_no_crl_in_the_file_is_refused(
    server: ServerFactory, pki: PKI, alice: Pair, tmp_path: Path
) -> None:
    """CRLFILE makes revocation checking mandatory for every client
    certificate: one from a CA whose CRL is not in the file is refused, as
    OpenSSL's CRL check does (``unable to get certificate CRL``)."""
    other = Authority(tmp_path, cn="Other CA")
    theirs = other.issue("theirs", client=True, subject={"CN": "theirs"})
    cafile = tmp_path / "cas.pem"
    cafile.write_bytes(pki.ca.pem.read_bytes() + other.pem.read_bytes())
    crl = tmp_path / "ca.crl"
    crl.write_bytes(pki.ca.crl([]))
    marker = tmp_path / "ran"
    env = {**pki.env(), "CAFILE": str(cafile), "CRLFILE": str(crl)}
    srv = server("-H", "-Y", "127.0.0.1", "0", *marker_prog(marker), env=env)
    assert serve(srv, alice)[0]["SSL_PEER_CERT_SUBJECT"] == "CN=alice"
    refused(srv, theirs)
    assert srv.wait_log("CERTIFICATE_VERIFY_FAILED (unable to get certificate CRL)")
    assert ran(marker) == 1
    # With both CRLs in the file (PEM blocks one after the other), both are served.
    replace(crl, pki.ca.crl([]) + other.crl([]))
    assert serve(srv, theirs)[0]["SSL_PEER_CERT_SUBJECT"] == "CN=theirs"
    replace(crl, pki.ca.crl([]) + other.crl([theirs.serial]))
    assert "alert certificate revoked" in refused(srv, theirs)
    assert serve(srv, alice)[0]["SSL_PEER_CERT_SUBJECT"] == "CN=alice"
