"""Several worker processes (S6TLS_WORKERS): limits stay exact, signals still reach progs."""

from __future__ import annotations

import os
import signal
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support import client
from tests.support.server import S6_TLSSERVER, run_command, wait_for

WHO = ("/bin/sh", "-c", "echo ppid=$PPID conn=$TCPCONNNUM; exec cat")


def open_session(port: int, source: str = "127.0.0.1"):
    s = client.connect(port, source=source)
    line = b""
    while not line.endswith(b"\n"):
        line += s.recv(100)
    fields = dict(item.split("=") for item in line.decode().split())
    return s, fields


def test_concurrent_sessions_spread_over_workers_with_exact_counts(server, pki):
    srv = server("-H", "127.0.0.1", "0", *WHO, env={**pki.env(), "S6TLS_WORKERS": "2"})
    workers = srv.children()
    assert len(workers) == 2
    # Whichever worker waits in accept() gets the next client: at once, both serve.
    with ThreadPoolExecutor(20) as pool:
        sessions = list(pool.map(lambda _: open_session(srv.port), range(20)))
    assert {f["ppid"] for _, f in sessions} == {str(w) for w in workers}
    # TCPCONNNUM counts across workers: 20 clients from one IP saw 0 to 19
    assert sorted(int(f["conn"]) for _, f in sessions) == list(range(20))
    for s, _ in sessions:
        s.close()


def test_per_ip_limit_is_exact_across_workers(server, pki):
    srv = server(
        "-v", "-H", "-C", "3", "127.0.0.1", "0", *WHO, env={**pki.env(), "S6TLS_WORKERS": "2"}
    )
    sessions = [open_session(srv.port) for _ in range(3)]
    assert sorted(f["conn"] for _, f in sessions) == ["0", "1", "2"]
    with pytest.raises((OSError, ConnectionError)):
        open_session(srv.port)
    assert srv.wait_log("reject 127.0.0.1_")
    assert open_session(srv.port, source="127.0.0.2")[1]["conn"] == "0"
    for s, _ in sessions:
        s.close()
    assert srv.wait_log("end pid", count=3)
    assert srv.wait_log("count 0/3")


def test_maxconn_is_exact_across_workers(server, pki):
    srv = server("-H", "-c", "2", "127.0.0.1", "0", *WHO, env={**pki.env(), "S6TLS_WORKERS": "2"})
    first = [open_session(srv.port) for _ in range(2)]
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=5)  # waits in the backlog
    late = client.context().wrap_socket(raw, do_handshake_on_connect=False)
    late.settimeout(1)
    with pytest.raises((TimeoutError, ssl.SSLError)):
        late.do_handshake()
    first[0][0].close()
    late.settimeout(5)
    late.do_handshake()
    assert late.recv(100).startswith(b"ppid=")
    late.close()
    first[1][0].close()


def children_of(pid: int) -> list[str]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return f.read().split()


def test_sigterm_leaves_sessions_to_the_workers(server, pki):
    srv = server("-v", "-H", "127.0.0.1", "0", *WHO, env={**pki.env(), "S6TLS_WORKERS": "2"})
    workers = srv.children()
    sessions = [open_session(srv.port) for _ in range(2)]
    srv.signal(signal.SIGTERM)
    assert srv.proc.wait(timeout=5) == 0
    assert socket.socket().connect_ex(("127.0.0.1", srv.port)) != 0
    for s, _ in sessions:
        s.sendall(b"still there?\n")
        assert s.recv(100) == b"still there?\n"
        s.close()
    assert wait_for(lambda: not any(os.path.exists(f"/proc/{w}") for w in workers))


def test_sighup_reaches_progs_in_workers(server, pki):
    srv = server("-v", "-H", "127.0.0.1", "0", *WHO, env={**pki.env(), "S6TLS_WORKERS": "2"})
    sessions = [open_session(srv.port) for _ in range(2)]
    srv.signal(signal.SIGHUP)
    for s, _ in sessions:
        assert client.read_all(s) == (b"", "eof")
        s.close()
    assert srv.wait_log("signal 15", count=2)
    assert open_session(srv.port)[1]["conn"] == "0"


@pytest.mark.parametrize("value", ["0", "x", "65"])
def test_bad_worker_count(pki, value):
    r = run_command([S6_TLSSERVER, "127.0.0.1", "0", "cat"], {**pki.env(), "S6TLS_WORKERS": value})
    assert r.returncode == 100
    assert r.stderr.startswith("s6-tlsserver: fatal: S6TLS_WORKERS must be")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_workers_drop_privileges_too(server, pki):
    env = {**pki.env(), "S6TLS_WORKERS": "2", "TLS_UID": "65534", "TLS_GID": "65534"}
    srv = server("-H", "127.0.0.1", "0", *WHO, env=env)

    def uid(pid: int) -> str:
        with open(f"/proc/{pid}/status") as f:
            return next(line.split()[1] for line in f if line.startswith("Uid:"))

    assert uid(srv.pid) == "65534"
    # each worker drops as it starts, after forking its own root helper
    assert wait_for(lambda: [uid(w) for w in srv.children()] == ["65534", "65534"])
    assert all(len(children_of(w)) == 1 for w in srv.children())
    s, fields = open_session(srv.port)
    assert fields["ppid"] != str(srv.pid)
    s.close()


def test_a_dead_worker_gives_its_slots_back(server, pki):
    srv = server("-H", "-c", "2", "127.0.0.1", "0", *WHO, env={**pki.env(), "S6TLS_WORKERS": "2"})
    sessions = [open_session(srv.port) for _ in range(2)]
    victim = int(sessions[0][1]["ppid"])
    held = sum(f["ppid"] == str(victim) for _, f in sessions)
    os.kill(victim, signal.SIGKILL)
    assert srv.wait_log(f"worker {victim} is gone; {held} of its slots given back")
    # the slots are usable again: -c 2 allows as many new sessions as died
    survivors = [s for s, f in sessions if f["ppid"] != str(victim)]
    fresh = [open_session(srv.port) for _ in range(held)]
    assert all(f["ppid"] != str(victim) for _, f in fresh)
    for s, _ in fresh:
        s.close()
    for s in survivors:
        s.close()
    (last,) = srv.children()
    os.kill(last, signal.SIGKILL)
    assert srv.proc.wait(timeout=5) == 111
    assert "s6-tlsserver: fatal: no worker left" in srv.log()


def test_workers_finish_their_sessions_when_the_supervisor_vanishes(server, pki):
    srv = server("-H", "127.0.0.1", "0", *WHO, env={**pki.env(), "S6TLS_WORKERS": "2"})
    workers = srv.children()
    s, _ = open_session(srv.port)
    os.kill(srv.pid, signal.SIGKILL)
    srv.proc.wait(timeout=5)
    # no more accepting: the listening socket is closed in every worker
    assert wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", srv.port)) != 0)
    s.sendall(b"still served\n")
    assert s.recv(100) == b"still served\n"
    s.close()
    assert wait_for(lambda: not any(os.path.exists(f"/proc/{w}") for w in workers))
