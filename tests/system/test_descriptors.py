"""The descriptor limit: started as supervisors start it (soft limit 1024), the
server holds as many sessions as -c says, and prog still gets 1024.

Upstream forks a process per connection; one server holding every session
raises its own soft limit to what -c needs, up to the hard limit, and says at
start-up when the hard limit falls short.
"""

from __future__ import annotations

import resource
import shutil
import socket
import ssl
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support import client
from tests.support.server import Running, start

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit is not installed"),
]


@pytest.fixture
def limited(pki, tmp_path: Path) -> Iterator:
    """Start s6-tlsserver under prlimit --nofile=SOFT:HARD."""
    started: list[Running] = []

    def factory(soft: int, hard: int, *args: str) -> Running:
        log = tmp_path / f"server{len(started)}.log"
        wrapper = ["prlimit", f"--nofile={soft}:{hard}", "--"]
        srv = start(list(args), pki.env(), log, wrapper=wrapper)
        started.append(srv)
        return srv

    yield factory
    for srv in started:
        srv.stop()


# What supervisors leave as hard limit is often 65536 (systemd) or more; a
# process may not raise its own, so at most the tests' own.
_HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
HARD = 65536 if _HARD == resource.RLIM_INFINITY else min(65536, _HARD)
needs_room = pytest.mark.skipif(HARD < 8192, reason=f"the tests' hard descriptor limit is {HARD}")


def soft_limit(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        line = next(line for line in f if line.startswith("Max open files"))
    return int(line.split()[3])


@pytest.fixture
def many_descriptors() -> Iterator[None]:
    """This test process holds the client ends of a thousand sessions."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@needs_room
def test_a_thousand_sessions_under_a_soft_limit_of_1024(limited, many_descriptors):
    srv = limited(1024, HARD, "-H", "-c", "1000", "-C", "1000", "127.0.0.1", "0", "/bin/cat")
    assert soft_limit(srv.pid) >= 5 * 1000
    ctx = client.context()

    def session(_: int) -> ssl.SSLSocket:
        s = client.connect(srv.port, ctx=ctx, timeout=60)
        assert client.echo(s) == b"ping\n"
        return s

    with ThreadPoolExecutor(8) as pool:
        sessions = list(pool.map(session, range(1000)))
    # all held and still echoing
    for s in sessions[::50]:
        assert client.echo(s, b"still here\n") == b"still here\n"
    # the 1001st waits, as -c 1000 says...
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    late = ctx.wrap_socket(raw, do_handshake_on_connect=False)
    late.settimeout(1)
    with pytest.raises((TimeoutError, ssl.SSLError)):
        late.do_handshake()
    # ...until a session ends
    sessions.pop().close()
    late.settimeout(30)
    late.do_handshake()
    assert client.echo(late) == b"ping\n"
    assert "Too many open files" not in srv.log()
    for s in [late, *sessions]:
        s.close()


@needs_room
def test_prog_gets_the_soft_limit_the_server_was_started_with(limited):
    srv = limited(1024, HARD, "-H", "-c", "1000", "127.0.0.1", "0", "/bin/sh", "-c", "ulimit -n")
    assert soft_limit(srv.pid) > 1024
    assert client.read_all(client.connect(srv.port))[0] == b"1024\n"


def test_a_soft_limit_already_high_enough_is_left_alone(limited):
    srv = limited(8192, 8192, "-H", "-c", "100", "127.0.0.1", "0", "/bin/sh", "-c", "ulimit -n")
    assert soft_limit(srv.pid) == 8192
    assert client.read_all(client.connect(srv.port))[0] == b"8192\n"


def test_a_hard_limit_too_low_is_reported_at_start_up(limited):
    srv = limited(256, 300, "-H", "-c", "100", "127.0.0.1", "0", "/bin/sh", "-c", "ulimit -n")
    assert soft_limit(srv.pid) == 300
    (line,) = [line for line in srv.lines() if "descriptors" in line]
    assert line.startswith("s6-tlsserver: warning: -c 100 needs 628 descriptors")
    assert "the hard limit is 300" in line
    assert "ulimit -n" in line and "LimitNOFILE=" in line and "s6-softlimit" in line
    # it serves all the same, and prog still gets what the server was given
    assert client.read_all(client.connect(srv.port))[0] == b"256\n"
