"""Bad clients through the real command line: each is dropped with one log line.

Plain text, a truncated ClientHello, TLS 1.0 and 1.1, resets during the
handshake and the session, silence with and without -K. For each: the
connection is closed, prog never starts unless the handshake succeeded, one
warning line names the client, and the next good client is served (SPEC.md
§3, §6, §7; REFERENCE-BEHAVIOUR.md §8, §16, transcript E06).
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import client, probes
from tests.support.server import Running, wait_for

HANDSHAKE_FAILED = "the TLS engine closed the connection during the handshake: "
# Touches a marker named after the client's port, so a test sees whether prog ran.
MARKING_CAT = ("/bin/sh", "-c", 'touch "$MARKS/$TCPREMOTEPORT"; exec cat')


class Marked:
    """A server whose prog marks every session it serves."""

    def __init__(self, srv: Running, marks: Path) -> None:
        self.srv = srv
        self.marks = marks

    def ran_for(self, port: int) -> bool:
        return (self.marks / str(port)).exists()

    def one_line_for(self, port: int) -> str:
        """Wait for the warning about the client at port; it must be the only line."""
        where = f"127.0.0.1_{port}: "
        assert self.srv.wait_log(where), self.srv.log()
        lines = self.srv.lines()
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"s6-tlsserver: warning: {where}")
        return lines[0].removeprefix(f"s6-tlsserver: warning: {where}")

    def serves_next(self) -> None:
        """A good client after the bad one gets its session, and nothing more is logged."""
        before = self.srv.log()
        with client.connect(self.srv.port) as s:
            port = s.getsockname()[1]
            s.sendall(b"good\n")
            assert s.recv(100) == b"good\n"
        assert self.ran_for(port)
        assert self.srv.log() == before


MarkedFactory = Callable[..., Marked]


@pytest.fixture
def marked(server, pki, tmp_path) -> MarkedFactory:
    def start(*options: str) -> Marked:
        marks = tmp_path / "marks"
        marks.mkdir(exist_ok=True)
        srv = server(
            *options, "-H", "127.0.0.1", "0", *MARKING_CAT, env={**pki.env(), "MARKS": str(marks)}
        )
        return Marked(srv, marks)

    return start


def test_plain_text_instead_of_client_hello(marked):
    m = marked()
    with probes.raw_connect(m.srv.port) as sock:
        port = sock.getsockname()[1]
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert probes.wait_closed(sock, 5) is not None
    assert m.one_line_for(port).startswith(HANDSHAKE_FAILED)
    assert not m.ran_for(port)
    m.serves_next()


def test_plain_text_is_silent_with_q(marked):
    m = marked("-q")
    with probes.raw_connect(m.srv.port) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert probes.wait_closed(sock, 5) is not None
    m.serves_next()
    assert m.srv.log() == ""


def test_truncated_client_hello_then_close(marked):
    m = marked()
    with probes.raw_connect(m.srv.port) as sock:
        port = sock.getsockname()[1]
        sock.sendall(probes.CLIENT_HELLO_HEADER)
        sock.shutdown(socket.SHUT_WR)
        assert probes.wait_closed(sock, 5) is not None
    m.one_line_for(port)
    assert not m.ran_for(port)
    m.serves_next()


def test_truncated_client_hello_then_stall_times_out(marked):
    m = marked("-K", "2000")
    with probes.raw_connect(m.srv.port) as sock:
        port = sock.getsockname()[1]
        sock.sendall(probes.CLIENT_HELLO_HEADER)
        elapsed = probes.wait_closed(sock, 8)
    assert elapsed is not None and 1.5 <= elapsed <= 6
    assert m.one_line_for(port) == "handshake timed out"
    assert not m.ran_for(port)
    m.serves_next()


def client_hello(sni: str) -> bytearray:
    """A real ClientHello asking for the name sni."""
    ctx = client.context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return bytearray(outgoing.read())


@pytest.mark.parametrize("options", [(), ("-k", "1")])
def test_an_sni_name_that_is_not_ascii(marked, options):
    # OpenSSL takes any bytes but NUL; Python's ssl cannot decode them, and
    # reports it with a traceback unless the server says it in its own words.
    m = marked(*options)
    hello = client_hello("placeholder.test")
    hello[hello.find(b"placeholder.test")] = 0xE9
    with probes.raw_connect(m.srv.port) as sock:
        port = sock.getsockname()[1]
        sock.sendall(bytes(hello))
        assert probes.wait_closed(sock, 5) is not None
    line = m.one_line_for(port)
    assert line == HANDSHAKE_FAILED + "SNI name not ASCII: b'\\xe9laceholder.test'"
    assert not m.ran_for(port)
    m.serves_next()


@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
def test_old_tls_versions_are_refused(marked, version):
    m = marked()
    r = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{m.srv.port}",
            version,
            "-cipher",
            "DEFAULT@SECLEVEL=0",  # else the client itself refuses to speak TLS < 1.2
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert r.returncode != 0
    assert "alert protocol version" in r.stderr  # the server's answer, so it was asked
    assert m.srv.wait_log("warning: ")
    lines = m.srv.lines()
    assert len(lines) == 1
    found = re.fullmatch(
        rf"s6-tlsserver: warning: 127\.0\.0\.1_([0-9]+): {HANDSHAKE_FAILED}.+", lines[0]
    )
    assert found, lines
    assert not m.ran_for(int(found[1]))
    m.serves_next()


def test_reset_during_the_handshake(marked):
    m = marked()
    sock = probes.raw_connect(m.srv.port)
    port = sock.getsockname()[1]
    bio = probes.BioClient(sock, client.context())
    bio.hello()  # ClientHello out, the server's first flight in: it now waits for us
    probes.reset(sock)
    assert "Connection reset by peer" in m.one_line_for(port)
    assert not m.ran_for(port)
    m.serves_next()


def test_reset_during_the_session(marked):
    m = marked()
    s = client.connect(m.srv.port)
    port = s.getsockname()[1]
    s.sendall(b"x\n")
    assert s.recv(10) == b"x\n"
    assert m.ran_for(port)
    probes.reset(s)
    assert "Connection reset by peer" in m.one_line_for(port)
    assert wait_for(lambda: not m.srv.progs())  # prog got EOF and ended
    m.serves_next()


def test_silent_client_without_deadline_stays_connected(marked):
    m = marked()
    with probes.raw_connect(m.srv.port) as sock:
        port = sock.getsockname()[1]
        assert probes.wait_closed(sock, 2.0) is None
        assert probes.is_open(sock)
        assert m.srv.log() == ""
    # once the client gives up, the server says so in one line
    m.one_line_for(port)
    assert not m.ran_for(port)
    m.serves_next()


def test_silent_client_is_dropped_at_the_deadline(marked):
    m = marked("-K", "1000")
    with probes.raw_connect(m.srv.port) as sock:
        port = sock.getsockname()[1]
        elapsed = probes.wait_closed(sock, 8)
    assert elapsed is not None and 0.7 <= elapsed <= 6
    assert m.one_line_for(port) == "handshake timed out"
    assert not m.ran_for(port)
    m.serves_next()


def test_client_eof_during_the_handshake_is_logged_plainly(marked):
    m = marked()
    with probes.raw_connect(m.srv.port) as sock:
        port = sock.getsockname()[1]
        sock.sendall(probes.CLIENT_HELLO_HEADER)
        sock.shutdown(socket.SHUT_WR)
        assert probes.wait_closed(sock, 5) is not None
    assert m.one_line_for(port) == "the client closed the connection"
