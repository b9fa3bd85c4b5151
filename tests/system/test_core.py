"""The core server through its real command line: TLS, prog, environment."""

from __future__ import annotations

import hashlib
import os
import select
import socket
import ssl
import subprocess

import pytest

from tests.support import client
from tests.support.server import run_command
from tests.support.traffic import exchange

ENV_PROG = ("/usr/bin/env",)


def test_echo_16_mib_byte_exact(server):
    srv = server("-H", "127.0.0.1", "0", "/bin/cat")
    payload = os.urandom(16 << 20)
    # One thread drives both directions (a shared SSLSocket across threads races).
    result = exchange(srv.port, memoryview(payload), ctx=client.context())
    assert result.error is None
    assert hashlib.sha256(result.received).digest() == hashlib.sha256(payload).digest()


def test_prog_environment(server, pki):
    env = {
        **pki.env(),
        "OTHER": "kept",
        "TCPREMOTEHOST": "inherited",
        "SSL_PEER_CERT_HASH": "inherited",
        "CAFILE": "/nonexistent",
    }
    srv = server("-H", "127.0.0.1", "0", *ENV_PROG, env=env)
    with client.connect(srv.port) as s:
        local_port = s.getsockname()[1]
        version, cipher = s.version(), s.cipher()[0]
        data, _ = client.read_all(s)
    got = client.env_of(data)
    assert got["PROTO"] == "TCP"
    assert got["TCPLOCALIP"] == "127.0.0.1"
    assert got["TCPLOCALPORT"] == str(srv.port)
    assert got["TCPREMOTEIP"] == "127.0.0.1"
    assert got["TCPREMOTEPORT"] == str(local_port)
    assert got["TCPCONNNUM"] == "0"
    assert got["SSL_PROTOCOL"] == version == "TLSv1.3"
    assert got["SSL_CIPHER"] == cipher
    assert got["OTHER"] == "kept"
    # Never passed through: TLS engine variables (no -Z), inherited names and SSL_*.
    for name in (
        "KEYFILE",
        "CERTFILE",
        "CAFILE",
        "TCPREMOTEHOST",
        "TCPLOCALHOST",
        "SSL_TLS_SNI_SERVERNAME",
        "SSL_PEER_CERT_HASH",
    ):
        assert name not in got


def test_sni_variable_is_the_name_sent(server):
    srv = server("-H", "127.0.0.1", "0", *ENV_PROG)
    with client.connect(srv.port, sni="LocalHost") as s:
        got = client.env_of(client.read_all(s)[0])
    assert got["SSL_TLS_SNI_SERVERNAME"] == "LocalHost"


def test_keep_tls_variables_with_Z(server, pki):
    env = {**pki.env(), "CADIR": "/nonexistent"}
    srv = server("-H", "-Z", "127.0.0.1", "0", *ENV_PROG, env=env)
    with client.connect(srv.port) as s:
        got = client.env_of(client.read_all(s)[0])
    assert got["KEYFILE"] == str(pki.ec.key)
    assert got["CERTFILE"] == str(pki.ec.cert)
    assert got["CADIR"] == "/nonexistent"


def test_last_of_a_pair_wins(server, pki):
    srv = server("-HZz", "127.0.0.1", "0", *ENV_PROG)
    with client.connect(srv.port) as s:
        got = client.env_of(client.read_all(s)[0])
    assert "KEYFILE" not in got


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_versions(server, version):
    srv = server("-H", "127.0.0.1", "0", *ENV_PROG)
    with client.connect(srv.port, ctx=client.context(version=version)) as s:
        negotiated = s.version()
        got = client.env_of(client.read_all(s)[0])
    assert negotiated == got["SSL_PROTOCOL"] == version.name.replace("_", ".")


def test_rsa_and_der_files(server, pki):
    pair = pki.rsa
    env = {"KEYFILE": str(pair.key_der), "CERTFILE": str(pair.cert_der)}
    srv = server("-H", "127.0.0.1", "0", *ENV_PROG, env=env)
    with client.connect(srv.port, ctx=client.context(cafile=pki.ca.pem), sni="localhost") as s:
        assert s.getpeercert(binary_form=True) == pair.cert_der_bytes
        got = client.env_of(client.read_all(s)[0])
    assert "RSA" in got["SSL_CIPHER"] or got["SSL_PROTOCOL"] == "TLSv1.3"


def test_ipv6(server):
    srv = server("-H", "::1", "0", *ENV_PROG)
    with client.connect(srv.port, host="::1") as s:
        got = client.env_of(client.read_all(s)[0])
    assert got["TCPLOCALIP"] == "::1"
    assert got["TCPREMOTEIP"] == "::1"


def test_verified_by_curl_and_openssl(server, pki, tmp_path):
    prog = tmp_path / "http"
    prog.write_text(
        "#!/bin/sh\nread line\nprintf 'HTTP/1.0 200 OK\\r\\n\\r\\nproto=%s\\n' \"$SSL_PROTOCOL\"\n"
    )
    prog.chmod(0o755)
    srv = server("-H", "127.0.0.1", "0", str(prog))
    r = run_command(
        [
            "curl",
            "-sS",
            "--cacert",
            str(pki.ca.pem),
            f"https://localhost:{srv.port}/",
            "--resolve",
            f"localhost:{srv.port}:127.0.0.1",
        ]
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "proto=TLSv1.3\n"
    r = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{srv.port}",
            "-CAfile",
            str(pki.ca.pem),
            "-verify_return_error",
            "-tls1_2",
            "-quiet",
        ],
        input=b"GET /\n",
        capture_output=True,
        timeout=10,
    )
    assert b"proto=TLSv1.2" in r.stdout


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({}, id="one-process"),
        pytest.param({"S6TLS_WORKERS": "2"}, id="workers"),
        pytest.param(
            {"TLS_UID": "65534", "TLS_GID": "65534"},
            id="privsep",
            marks=pytest.mark.skipif(os.geteuid() != 0, reason="privilege separation needs root"),
        ),
    ],
)
def test_notify_writes_port_then_closes_stdout(pki, extra):
    from tests.support.server import S6_TLSSERVER

    proc = subprocess.Popen(
        [S6_TLSSERVER, "-H", "-1", "127.0.0.1", "0", "/bin/cat"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={"PATH": "/usr/bin:/bin", **pki.env(), **extra},
        start_new_session=True,
    )
    try:
        # stdout's end of file must come (workers and the root helper keep none of it)
        out = b""
        while select.select([proc.stdout], [], [], 5)[0]:
            if not (chunk := os.read(proc.stdout.fileno(), 100)):
                break
            out += chunk
        else:
            pytest.fail(f"stdout still open after {out!r}")
        assert out.endswith(b"\n") and int(out) > 0
        assert proc.poll() is None
        socket.create_connection(("127.0.0.1", int(out)), timeout=5).close()
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def test_nothing_on_stdout_without_notify(server):
    srv = server("-H", "-v", "127.0.0.1", "0", "/bin/cat", notify=False)
    assert srv.wait_log("starting - bound to ip 127.0.0.1 port")


def test_log_lines_at_v(server):
    srv = server("-v", "-H", "127.0.0.1", "0", "/bin/sh", "-c", "echo hi; exit 3")
    with client.connect(srv.port) as s:
        port = s.getsockname()[1]
        data, _ = client.read_all(s)
    assert data == b"hi\n"
    assert srv.wait_log("end pid")
    # (A client may answer our half-close with an alert: that line may come between.)
    lines = [line for line in srv.lines() if "_DECODE_ERROR" not in line]
    assert lines[0] == f"s6-tlsserver: info: starting - bound to ip 127.0.0.1 port {srv.port}"
    assert lines[1] == "s6-tlsserver: info: status: 0/40"
    pid = lines[2].split()[5]
    assert lines[2] == f"s6-tlsserver: info: accept 127.0.0.1_{port} pid {pid} count 1/40"
    assert lines[3] == "s6-tlsserver: info: status: 1/40"
    assert lines[4] == f"s6-tlsserver: info: end pid {pid} exitcode 3 count 0/40"
    assert lines[5] == "s6-tlsserver: info: status: 0/40"


def test_default_verbosity_is_quiet_for_good_sessions(server):
    srv = server("-H", "127.0.0.1", "0", "/bin/echo", "hi")
    with client.connect(srv.port) as s:
        assert client.read_all(s)[0] == b"hi\n"
    assert srv.log() == ""


def test_prog_not_found(server):
    srv = server("-v", "-H", "127.0.0.1", "0", "/nonexistent/prog")
    with client.connect(srv.port) as s:
        data, _ = client.read_all(s)
    assert data == b""
    assert srv.wait_log("exitcode 127")
    assert "unable to exec /nonexistent/prog: No such file or directory" in srv.log()
    with client.connect(srv.port) as s:  # and the server still serves
        client.read_all(s)


def test_prog_looked_up_in_path(server):
    srv = server("-H", "127.0.0.1", "0", "echo", "from", "path")
    with client.connect(srv.port) as s:
        assert client.read_all(s)[0] == b"from path\n"


def test_prog_fds_are_pipes_and_stderr_is_the_servers(server, tmp_path):
    prog = "readlink /proc/self/fd/0 /proc/self/fd/1 /proc/self/fd/2; ls /proc/self/fd"
    srv = server("-H", "127.0.0.1", "0", "/bin/sh", "-c", prog)
    with client.connect(srv.port) as s:
        lines = client.read_all(s)[0].decode().split("\n")
    assert lines[0].startswith("pipe:") and lines[1].startswith("pipe:")
    assert lines[2] == str(srv.log_path)
    # 0, 1, 2 and the one ls opens for /proc/self/fd: nothing of the server's leaks.
    assert sorted(lines[3:-1], key=int) == ["0", "1", "2", "3"]


def test_banner_before_tls(server):
    srv = server("-H", "-B", "hello banner\r\n", "127.0.0.1", "0", "/bin/echo", "ok")
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    banner = b""
    while not banner.endswith(b"\r\n"):
        banner += raw.recv(1)
    assert banner == b"hello banner\r\n"
    s = client.context().wrap_socket(raw, suppress_ragged_eofs=False)
    assert client.read_all(s)[0] == b"ok\n"
    s.close()
