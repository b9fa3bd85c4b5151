"""Connection limits through the real command line: -c, -C, TCPCONNNUM.

At -c sessions the server stops accepting and clients wait in the backlog;
past -C sessions from one IP it accepts and closes the extra connection and
logs a reject; -C never exceeds -c and 0 counts as 1 (REFERENCE-BEHAVIOUR.md
§9, transcripts E07, E15).
"""

from __future__ import annotations

import contextlib
import ssl

import pytest

from tests.support import client, probes
from tests.support.server import wait_for

CAT = "/bin/cat"


def waiting_client(port: int) -> ssl.SSLSocket:
    """A TLS client whose TCP connect completed but whose handshake gets no answer."""
    raw = probes.raw_connect(port)  # the kernel's backlog completes the connect
    s = client.context().wrap_socket(raw, do_handshake_on_connect=False, suppress_ragged_eofs=False)
    s.settimeout(1.0)
    with pytest.raises(TimeoutError):
        s.do_handshake()  # the ClientHello is sent, nobody answers
    s.settimeout(10)
    return s


def test_global_limit_keeps_the_extra_client_waiting(server):
    srv = server("-v", "-H", "-c", "2", "127.0.0.1", "0", CAT)
    one = client.connect(srv.port)
    two = client.connect(srv.port)
    assert client.echo(one) == client.echo(two) == b"ping\n"
    assert srv.wait_log("status: 2/2")

    third = waiting_client(srv.port)
    assert srv.log().count(" accept ") == 2
    assert "reject" not in srv.log()

    one.close()
    third.do_handshake()  # served once a slot frees up
    assert client.echo(third, b"third\n") == b"third\n"
    port3 = third.getsockname()[1]
    assert srv.wait_log(f"accept 127.0.0.1_{port3} pid ")
    line = next(x for x in srv.lines() if f" accept 127.0.0.1_{port3} " in x)
    assert line.endswith(" count 2/2")
    two.close()
    third.close()


def test_zero_global_limit_counts_as_one(server):
    srv = server("-v", "-H", "-c", "0", "127.0.0.1", "0", CAT)
    assert srv.lines()[1] == "s6-tlsserver: info: status: 0/1"
    one = client.connect(srv.port)
    assert client.echo(one) == b"ping\n"
    second = waiting_client(srv.port)
    one.close()
    second.do_handshake()
    assert client.echo(second) == b"ping\n"
    second.close()
    assert "reject" not in srv.log()


@pytest.mark.parametrize("quiet", [False, True], ids=["default", "q"])
def test_per_ip_limit_rejects_and_logs(server, quiet):
    args = ["-q"] if quiet else []
    srv = server(*args, "-H", "-C", "1", "127.0.0.1", "0", CAT)
    with client.connect(srv.port) as first:
        assert client.echo(first) == b"ping\n"
        extra = probes.raw_connect(srv.port)
        extra_port = extra.getsockname()[1]
        # accepted, then closed at once: the client sees the end, not a wait
        assert probes.wait_closed(extra, 5) is not None
        extra.close()
        with client.connect(srv.port, source="127.0.0.2") as other:  # other IPs unaffected
            assert client.echo(other) == b"ping\n"
        assert client.echo(first, b"still\n") == b"still\n"
    reject = f"s6-tlsserver: info: reject 127.0.0.1_{extra_port} count 1/1"
    if quiet:
        # a good session logs nothing, so serving one more shows the log is settled
        assert wait_for(lambda: not probes.children(srv.pid))
        with client.connect(srv.port) as s:
            assert client.echo(s) == b"ping\n"
        assert srv.log() == ""
    else:
        assert srv.wait_log("reject ")
        assert srv.lines() == [reject]


def test_per_ip_limit_rejects_a_tls_client(server):
    srv = server("-H", "-C", "1", "127.0.0.1", "0", CAT)
    # a TLS client is refused service too: it gets EOF or a reset, never a session
    with client.connect(srv.port), pytest.raises((ssl.SSLError, ConnectionResetError)):
        client.connect(srv.port)
    assert srv.wait_log("reject 127.0.0.1_")


def test_per_ip_limit_is_clamped_to_the_global_limit(server):
    srv = server("-v", "-H", "-c", "1", "-C", "5", "127.0.0.1", "0", CAT)
    with client.connect(srv.port) as s:
        port = s.getsockname()[1]
        assert client.echo(s) == b"ping\n"
        assert srv.wait_log("status: 1/1")
    assert srv.wait_log("end pid")
    lines = srv.lines()
    assert lines[1] == "s6-tlsserver: info: status: 0/1"
    assert lines[2].startswith(f"s6-tlsserver: info: accept 127.0.0.1_{port} pid ")
    assert lines[2].endswith(" count 1/1")
    assert lines[4].endswith(" count 0/1")


def test_zero_per_ip_limit_counts_as_one(server):
    srv = server("-H", "-C", "0", "127.0.0.1", "0", CAT)
    with client.connect(srv.port) as first:
        assert client.echo(first) == b"ping\n"
        extra = probes.raw_connect(srv.port)
        extra_port = extra.getsockname()[1]
        assert probes.wait_closed(extra, 5) is not None
        extra.close()
        with client.connect(srv.port, source="127.0.0.2") as other:
            assert client.echo(other) == b"ping\n"
    assert srv.wait_log("reject ")
    assert srv.lines() == [f"s6-tlsserver: info: reject 127.0.0.1_{extra_port} count 1/1"]


def test_connnum_counts_open_sessions_from_the_same_ip(server):
    prog = ("/bin/sh", "-c", 'echo "$TCPCONNNUM"; exec cat')
    srv = server("-H", "127.0.0.1", "0", *prog)
    with contextlib.ExitStack() as stack:

        def open_from(source: str) -> tuple[ssl.SSLSocket, int]:
            s = stack.enter_context(client.connect(srv.port, source=source))
            line = b""
            while not line.endswith(b"\n"):
                line += s.recv(1)
            return s, int(line)

        a, a_num = open_from("127.0.0.1")
        _, b_num = open_from("127.0.0.1")
        _, c_num = open_from("127.0.0.2")
        _, d_num = open_from("127.0.0.1")
        assert (a_num, b_num, c_num, d_num) == (0, 1, 0, 2)
        # the count is of sessions still open, not of sessions ever opened
        client.half_close(a)
        client.read_all(a)
        assert wait_for(lambda: len(probes.children(srv.pid)) == 3)
        _, e_num = open_from("127.0.0.1")
        assert e_num == 2


def test_the_largest_c_serves_and_frees_slots(server):
    srv = server("-v", "-H", "-c", "16384", "-C", "16384", "127.0.0.1", "0", "/bin/echo", "hi")
    for n in range(1, 4):
        with client.connect(srv.port) as s:
            assert client.read_all(s)[0] == b"hi\n"
        # The client sees its end before the server has reaped prog: wait for
        # the end's log lines, or the next session would overlap this one.
        assert srv.wait_log("end pid", count=n)
        assert srv.wait_log("status: 0/16384", count=n + 1)  # at the start, and after each end
