"""TLS features through the real server: client certificates, SNI, rotation, resumption."""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import subprocess

import pytest

from tests.support import client
from tests.support.server import S6_TLSSERVER, run_command

pytestmark = pytest.mark.both_engines

ENV_PROG = ("/usr/bin/env",)


def env_via(port, **kw):
    with client.connect(port, **kw) as s:
        peer = s.getpeercert(binary_form=True)
        reused = s.session_reused
        return client.env_of(client.read_all(s)[0]), peer, reused


def marker_prog(tmp_path):
    marker = tmp_path / "ran"
    return marker, ("/bin/sh", "-c", f"touch {marker}; exec /usr/bin/env")


# -- client certificates


def test_optional_client_cert_absent(server, pki):
    srv = server(
        "-H", "-Y", "127.0.0.1", "0", *ENV_PROG, env={**pki.env(), "CAFILE": str(pki.ca.pem)}
    )
    got, _, _ = env_via(srv.port)
    assert "SSL_PEER_CERT_HASH" not in got and "SSL_PEER_CERT_SUBJECT" not in got


@pytest.mark.parametrize("flag", ["-Y", "-y"])
def test_client_cert_variables(server, pki, flag):
    srv = server(
        "-H", flag, "127.0.0.1", "0", *ENV_PROG, env={**pki.env(), "CAFILE": str(pki.ca.pem)}
    )
    ctx = client.context(cert=(pki.client2.key, pki.client2.cert))
    got, _, _ = env_via(srv.port, ctx=ctx)
    assert (
        got["SSL_PEER_CERT_HASH"]
        == "SHA256:" + hashlib.sha256(pki.client2.cert_der_bytes).hexdigest()
    )
    assert got["SSL_PEER_CERT_SUBJECT"] == (
        r"C=FR, ST=Ile-de-France, L=Paris, O=Example\, Inc., OU=R\+D, CN=client  two"
    )


@pytest.mark.parametrize("flag", ["-Y", "-y"])
def test_untrusted_client_cert_fails_the_handshake(server, pki, tmp_path, flag):
    marker, prog = marker_prog(tmp_path)
    srv = server("-H", flag, "127.0.0.1", "0", *prog, env={**pki.env(), "CAFILE": str(pki.ca.pem)})
    ctx = client.context(cert=(pki.rogue.key, pki.rogue.cert))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        env_via(srv.port, ctx=ctx)
    assert srv.wait_log("warning: 127.0.0.1_")
    assert not marker.exists()
    assert env_via(srv.port, ctx=client.context(cert=(pki.client.key, pki.client.cert)))[0]


def test_mandatory_client_cert_missing(server, pki, tmp_path):
    marker, prog = marker_prog(tmp_path)
    srv = server("-H", "-y", "127.0.0.1", "0", *prog, env={**pki.env(), "CAFILE": str(pki.ca.pem)})
    with pytest.raises((ssl.SSLError, ConnectionError)):
        env_via(srv.port)
    assert srv.wait_log("warning: 127.0.0.1_")
    assert not marker.exists()


def test_cadir_reads_any_file_names_pem_and_der(server, pki, tmp_path):
    other = type(pki.ca)(tmp_path, cn="Another CA")
    cadir = tmp_path / "cadir"
    cadir.mkdir()
    (cadir / "our ca, in DER.bin").write_bytes(pki.ca.der)
    (cadir / "another.pem").write_bytes(other.pem.read_bytes())
    env = {**pki.env(), "CADIR": str(cadir)}
    srv = server("-H", "-y", "127.0.0.1", "0", *ENV_PROG, env=env)
    got, _, _ = env_via(srv.port, ctx=client.context(cert=(pki.client.key, pki.client.cert)))
    assert got["SSL_PEER_CERT_SUBJECT"] == "CN=s6tls client"
    theirs = other.issue("theirs", client=True, subject={"CN": "theirs"})
    got, _, _ = env_via(srv.port, ctx=client.context(cert=(theirs.key, theirs.cert)))
    assert got["SSL_PEER_CERT_SUBJECT"] == "CN=theirs"


def test_client_cert_without_ca_is_a_usage_error(pki):
    r = run_command([S6_TLSSERVER, "-Y", "127.0.0.1", "0", "cat"], pki.env())
    assert r.returncode == 100
    assert r.stderr == "s6-tlsserver: fatal: CADIR or CAFILE not set\n"


def test_curl_with_client_cert(server, pki):
    srv = server(
        "-H",
        "-y",
        "127.0.0.1",
        "0",
        "/bin/sh",
        "-c",
        "read x; printf 'HTTP/1.0 200 OK\\r\\n\\r\\n%s\\n' \"$SSL_PEER_CERT_SUBJECT\"",
        env={**pki.env(), "CAFILE": str(pki.ca.pem)},
    )
    r = run_command(
        [
            "curl",
            "-sS",
            "--cacert",
            str(pki.ca.pem),
            "--cert",
            str(pki.client.cert),
            "--key",
            str(pki.client.key),
            f"https://127.0.0.1:{srv.port}/",
        ]
    )
    assert r.stdout == "CN=s6tls client\n", r.stderr


# -- SNI


def sni_env(pki):
    return {
        **pki.env(),
        "KEYFILE:alt.test": str(pki.alt.key),
        "CERTFILE:alt.test": str(pki.alt.cert),
        "KEYFILE:*.example.test": str(pki.wild.key),
        "CERTFILE:*.example.test": str(pki.wild.cert),
    }


@pytest.mark.parametrize(
    ("sni", "pair"),
    [
        ("alt.test", "alt"),
        ("ALT.TEST", "alt"),
        (None, "ec"),
        ("unknown.test", "ec"),
        ("a.example.test", "wild"),
        ("a.b.example.test", "ec"),
        ("example.test", "ec"),
    ],
)
def test_snilevel_1(server, pki, sni, pair):
    srv = server("-H", "-k", "1", "127.0.0.1", "0", *ENV_PROG, env=sni_env(pki))
    got, peer, _ = env_via(srv.port, sni=sni)
    assert peer == getattr(pki, pair).cert_der_bytes
    assert got.get("SSL_TLS_SNI_SERVERNAME") == sni
    assert "KEYFILE:alt.test" not in got


@pytest.mark.parametrize(("sni", "ok"), [("alt.test", True), (None, False), ("localhost", False)])
def test_snilevel_2(server, pki, tmp_path, sni, ok):
    marker, prog = marker_prog(tmp_path)
    env = sni_env(pki)
    srv = server("-H", "-k2", "127.0.0.1", "0", *prog, env=env)
    if ok:
        assert env_via(srv.port, sni=sni)[1] == pki.alt.cert_der_bytes
    else:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            env_via(srv.port, sni=sni)
        assert srv.wait_log("warning:")
        assert not marker.exists()


def test_snilevel_0_ignores_named_pairs(server, pki):
    srv = server("-H", "127.0.0.1", "0", *ENV_PROG, env=sni_env(pki))
    got, peer, _ = env_via(srv.port, sni="alt.test")
    assert peer == pki.ec.cert_der_bytes
    assert got["SSL_TLS_SNI_SERVERNAME"] == "alt.test"


@pytest.mark.parametrize(
    ("extra", "k", "message"),
    [
        (
            {"KEYFILE:alt.test": "x"},
            "1",
            "environment variable KEYFILE:alt.test not paired with the corresponding CERTFILE",
        ),
        (
            {"CERTFILE:alt.test": "x"},
            "1",
            "environment variable CERTFILE:alt.test not paired with the corresponding KEYFILE",
        ),
        ({}, "2", "no suitable keypairs found in the environment"),
        (
            {"KEYFILE:*.com": "x", "CERTFILE:*.com": "x"},
            "1",
            "KEYFILE:*.com: a wildcard may only stand for the first label,"
            " before at least two others",
        ),
    ],
)
def test_sni_configuration_errors(pki, extra, k, message):
    r = run_command([S6_TLSSERVER, "-k", k, "127.0.0.1", "0", "cat"], {**pki.env(), **extra})
    assert (r.returncode, r.stderr) == (100, f"s6-tlsserver: fatal: {message}\n")


def test_openssl_servername(server, pki):
    srv = server("-H", "-k1", "127.0.0.1", "0", *ENV_PROG, env=sni_env(pki))
    r = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{srv.port}",
            "-servername",
            "alt.test",
            "-CAfile",
            str(pki.ca.pem),
            "-verify_return_error",
            "-verify_hostname",
            "alt.test",
            "-ign_eof",
        ],
        input=b"",
        capture_output=True,
        timeout=10,
    )
    assert b"SSL_TLS_SNI_SERVERNAME=alt.test" in r.stdout
    assert b"s:CN = alt.test" in r.stdout
    assert b"Verify return code: 0 (ok)" in r.stdout


# -- rotation


def copy_pair(pair, directory, stem="live"):
    key, cert = directory / f"{stem}.key", directory / f"{stem}.pem"
    shutil.copy(pair.key, key)
    shutil.copy(pair.cert, cert)
    return key, cert


def replace(path, data):
    tmp = path.with_suffix(".new")
    tmp.write_bytes(data)
    os.rename(tmp, path)


def test_rotation_by_rename_and_by_rewrite(server, pki, tmp_path):
    key, cert = copy_pair(pki.ec, tmp_path)
    srv = server(
        "-H", "127.0.0.1", "0", *ENV_PROG, env={"KEYFILE": str(key), "CERTFILE": str(cert)}
    )
    assert env_via(srv.port)[1] == pki.ec.cert_der_bytes
    # rename over: key first, then certificate (the window between serves the old pair)
    replace(key, pki.rsa.key.read_bytes())
    replace(cert, pki.rsa.cert.read_bytes())
    assert env_via(srv.port)[1] == pki.rsa.cert_der_bytes
    # rewritten in place
    key.write_bytes(pki.alt.key.read_bytes())
    cert.write_bytes(pki.alt.cert.read_bytes())
    assert env_via(srv.port)[1] == pki.alt.cert_der_bytes
    assert "warning" not in srv.log()


def test_bad_replacement_keeps_the_last_good_pair(server, pki, tmp_path):
    key, cert = copy_pair(pki.ec, tmp_path)
    srv = server(
        "-H", "127.0.0.1", "0", *ENV_PROG, env={"KEYFILE": str(key), "CERTFILE": str(cert)}
    )
    assert env_via(srv.port)[1] == pki.ec.cert_der_bytes
    replace(cert, b"not a certificate\n")
    for _ in range(3):
        assert env_via(srv.port)[1] == pki.ec.cert_der_bytes
    warnings = [line for line in srv.lines() if "warning" in line]
    assert len(warnings) == 1 and str(cert) in warnings[0], warnings
    replace(cert, pki.ec.cert.read_bytes())
    assert env_via(srv.port)[1] == pki.ec.cert_der_bytes


# -- cipher suites


@pytest.mark.parametrize("pair", ["ec", "rsa"])
def test_tls12_suites_are_ecdhe_with_aead_in_the_servers_order(server, pki, pair):
    srv = server("-H", "127.0.0.1", "0", "/bin/cat", env=pki.env(getattr(pki, pair)))
    ctx = client.context(version=ssl.TLSVersion.TLSv1_2)
    auth = "ECDSA" if pair == "ec" else "RSA"
    # The client would rather have ChaCha20; the server picks AES-256-GCM.
    ctx.set_ciphers(f"ECDHE-{auth}-CHACHA20-POLY1305:ECDHE-{auth}-AES256-GCM-SHA384")
    with client.connect(srv.port, ctx=ctx) as s:
        assert s.cipher()[0] == f"ECDHE-{auth}-AES256-GCM-SHA384"
        assert client.echo(s) == b"ping\n"


def test_a_client_with_only_cbc_suites_gets_a_handshake_failure(server, tmp_path):
    marker, prog = marker_prog(tmp_path)
    srv = server("-H", "127.0.0.1", "0", *prog)
    ctx = client.context(version=ssl.TLSVersion.TLSv1_2)
    ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:AES128-SHA")
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
        client.connect(srv.port, ctx=ctx)
    assert srv.wait_log("during the handshake: NO_SHARED_CIPHER")
    assert not marker.exists()
    assert env_via(srv.port)[0]["SSL_PROTOCOL"] == "TLSv1.3"


# -- resumption


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_session_resumption(server, version):
    srv = server("-v", "-H", "127.0.0.1", "0", "/bin/sh", "-c", "read x; env")
    ctx = client.context(version=version)
    with client.connect(srv.port, ctx=ctx) as s:
        s.sendall(b"go\n")
        first = client.env_of(client.read_all(s)[0])
        session = s.session
        assert not s.session_reused
    assert srv.wait_log("end pid")  # so that TCPCONNNUM is 0 again
    with client.connect(srv.port, ctx=ctx, session=session) as s:
        assert s.session_reused
        s.sendall(b"go\n")
        second = client.env_of(client.read_all(s)[0])
    for name in ("TCPREMOTEPORT",):
        first.pop(name), second.pop(name)
    assert first == second


def test_ticket_reaches_a_client_that_gets_no_data(server):
    # The TLS 1.3 ticket waits to share a send with prog's first bytes; a prog
    # that writes nothing must not keep the client from resuming.
    srv = server("-H", "127.0.0.1", "0", "/bin/sh", "-c", "read x")
    ctx = client.context(version=ssl.TLSVersion.TLSv1_3)
    with client.connect(srv.port, ctx=ctx) as s:
        s.sendall(b"go\n")
        assert client.read_all(s) == (b"", "eof")
        session = s.session
    with client.connect(srv.port, ctx=ctx, session=session) as s:
        assert s.session_reused


def test_openssl_sess_out_sess_in(server, tmp_path):
    srv = server("-H", "127.0.0.1", "0", "/bin/echo", "hi")
    sess = tmp_path / "sess.pem"
    base = ["openssl", "s_client", "-connect", f"127.0.0.1:{srv.port}", "-tls1_2"]
    subprocess.run([*base, "-sess_out", str(sess)], input=b"", capture_output=True, timeout=10)
    r = subprocess.run([*base, "-sess_in", str(sess)], input=b"", capture_output=True, timeout=10)
    assert b"Reused, TLSv1.2" in r.stdout
