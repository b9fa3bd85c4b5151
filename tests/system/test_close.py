"""How sessions end, through the real command line: -s/-S, -j/-J, half-closes.

prog's EOF is a bare TCP half-close with -s (the default) and a close_notify
with -S; the client's FIN or close_notify is EOF on prog's stdin, and prog's
later reply still reaches the client (SPEC.md §3, §7; REFERENCE-BEHAVIOUR.md
§14, transcripts E10, E17).
"""

from __future__ import annotations

import socket
import ssl
import subprocess

import pytest

from tests.support import client, probes
from tests.support.server import Running, wait_for

HI_EXIT3 = ("/bin/sh", "-c", "echo hi; exit 3")
# Reads to EOF, then answers: a reply that comes after the client's end.
LATE = ("/bin/sh", "-c", "cat >/dev/null; sleep 0.5; echo late")
NO_CLOSE_NOTIFY = "remote closed connection without a close_notify"


def s_client(port: int) -> subprocess.CompletedProcess[str]:
    """openssl s_client reading until the server ends the connection."""
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-quiet"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=10,
    )


def bio_connect(port: int, version: ssl.TLSVersion | None = None) -> probes.BioClient:
    bio = probes.BioClient(probes.raw_connect(port), client.context(version=version))
    bio.handshake()
    return bio


def end_line(srv: Running) -> str:
    assert srv.wait_log(" end pid ")
    return next(x for x in srv.lines() if " end pid " in x)


def test_s_prog_end_is_data_then_bare_eof(server):
    srv = server("-v", "-H", "-s", "127.0.0.1", "0", *HI_EXIT3)
    with client.connect(srv.port) as s:
        assert client.read_all(s) == (b"hi\n", "eof")
    assert " exitcode 3 " in end_line(srv)
    r = s_client(srv.port)
    assert r.stdout == "hi\n"
    assert r.returncode == 1
    assert "unexpected eof while reading" in r.stderr


def test_default_is_s(server):
    srv = server("-H", "127.0.0.1", "0", *HI_EXIT3)
    with client.connect(srv.port) as s:
        assert client.read_all(s) == (b"hi\n", "eof")


def test_S_prog_end_is_data_then_close_notify(server):
    srv = server("-v", "-H", "-S", "127.0.0.1", "0", *HI_EXIT3)
    bio = bio_connect(srv.port)
    assert bio.read_all() == (b"hi\n", "close_notify")
    # and the TCP connection closes without waiting for our close_notify
    assert probes.wait_closed(bio.sock, 5) is not None
    bio.sock.close()
    assert " exitcode 3 " in end_line(srv)
    r = s_client(srv.port)
    assert r.stdout == "hi\n"
    assert r.returncode == 0, r.stderr


def test_client_half_close_still_gets_the_late_reply(server):
    srv = server("-v", "-H", "127.0.0.1", "0", *LATE)
    with client.connect(srv.port) as s:
        s.sendall(b"x\n")
        client.half_close(s)
        assert client.read_all(s) == (b"late\n", "eof")
    assert " exitcode 0 " in end_line(srv)


@pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2], ids=["tls1.3", "tls1.2"]
)
def test_client_close_notify_still_gets_the_late_reply(server, version):
    # TLS 1.3 closes one direction only, so this is the protocol's own
    # behaviour; with TLS 1.2 the server behaves the same, and clients accept it.
    srv = server("-v", "-H", "127.0.0.1", "0", *LATE)
    bio = bio_connect(srv.port, version)
    assert bio.tls.version() == version.name.replace("_", ".")
    bio.send(b"x\n")
    bio.close_notify()
    # prog's reply, then the server's own close_notify
    assert bio.read_all() == (b"late\n", "close_notify")
    bio.sock.close()
    assert " exitcode 0 " in end_line(srv)  # prog was not cut off (no SIGPIPE)


@pytest.mark.parametrize(("option", "logged"), [("-J", True), ("-j", False), (None, False)])
def test_J_logs_a_missing_close_notify(server, option, logged):
    srv = server(*([option] if option else []), "-H", "127.0.0.1", "0", "/bin/cat")
    with client.connect(srv.port) as s:
        port = s.getsockname()[1]
        s.sendall(b"x\n")
        client.half_close(s)
        assert client.read_all(s) == (b"x\n", "eof")
    line = f"s6-tlsserver: warning: 127.0.0.1_{port}: {NO_CLOSE_NOTIFY}"
    if logged:
        assert srv.wait_log(NO_CLOSE_NOTIFY)
        assert srv.lines() == [line]
    else:
        # the session is over once prog is reaped: nothing more can be logged
        assert wait_for(lambda: not srv.progs())
        assert srv.log() == ""


def test_J_is_quiet_after_a_close_notify(server):
    srv = server("-J", "-H", "127.0.0.1", "0", "/bin/cat")
    bio = bio_connect(srv.port)
    bio.send(b"x\n")
    bio.close_notify()
    assert bio.read_all() == (b"x\n", "close_notify")
    bio.sock.close()
    assert wait_for(lambda: not srv.progs())
    assert srv.log() == ""


@pytest.mark.parametrize(
    ("prog", "how"),
    [(("yes",), "close"), (("head", "-c", "100M", "/dev/zero"), "reset")],
    ids=["yes-close", "head-reset"],
)
def test_client_leaving_while_prog_writes_a_lot(server, prog, how):
    srv = server("-v", "-H", "127.0.0.1", "0", *prog)
    s = client.connect(srv.port)
    got = 0
    while got < 1 << 20:
        got += len(s.recv(65536))
    (pid,) = srv.progs()
    if how == "reset":
        probes.reset(s)
    else:
        s.close()
    # The writer is stopped, the session ends, the server lives on and serves.
    # prog is cut off as upstream's is: SIGPIPE once nobody reads its output
    assert srv.wait_log(f" end pid {pid} signal 13 ")
    assert wait_for(lambda: not probes.alive(pid))
    assert srv.proc.poll() is None
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as raw:
        s = client.context().wrap_socket(raw, suppress_ragged_eofs=False)
        assert len(s.recv(65536)) > 0
        s.close()
    assert "Traceback" not in srv.log()
