"""Worker processes: limits stay exact, signals reach every prog, workers come and go.

With S6TLS_WORKERS=N the server keeps N-1 workers beside it; by default it
adds them while it is saturated and retires them once quiet. Both are
observed from the outside: the processes in /proc, what clients get, the log.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support import client, probes
from tests.support.server import S6_TLSSERVER, Running, run_command, wait_for

pytestmark = pytest.mark.both_engines

WHO = ("/bin/sh", "-c", "echo ppid=$PPID conn=$TCPCONNNUM; exec cat")
TWO = {"S6TLS_WORKERS": "2"}


def open_session(port: int, source: str = "127.0.0.1") -> tuple[ssl.SSLSocket, dict[str, str]]:
    s = client.connect(port, source=source)
    line = b""
    while not line.endswith(b"\n"):
        line += s.recv(100)
    fields = dict(item.split("=") for item in line.decode().split())
    return s, fields


def sessions_on(srv: Running, pid: int, count: int) -> list[tuple[ssl.SSLSocket, dict[str, str]]]:
    """Open count sessions that process pid serves: the other serving processes
    are stopped (SIGSTOP) meanwhile, so only pid accepts."""
    others = [p for p in (srv.pid, *srv.workers()) if p != pid]
    for p in others:
        os.kill(p, signal.SIGSTOP)
    try:
        sessions = [open_session(srv.port) for _ in range(count)]
    finally:
        for p in others:
            os.kill(p, signal.SIGCONT)
    assert all(f["ppid"] == str(srv.helper() or pid) for _, f in sessions)
    return sessions


# prog's parent tells which process served it: without TLS_UID only.
@pytest.mark.open_engine_only
def test_two_processes_serve_with_exact_counts(server, pki):
    srv = server("-H", "127.0.0.1", "0", *WHO, env={**pki.env(), **TWO})
    (worker,) = srv.forks()
    # Whichever process waits in accept() gets the next client: at once, both serve.
    with ThreadPoolExecutor(20) as pool:
        sessions = list(pool.map(lambda _: open_session(srv.port), range(20)))
    assert {f["ppid"] for _, f in sessions} == {str(srv.pid), str(worker)}
    # TCPCONNNUM counts across processes: 20 clients from one IP saw 0 to 19
    assert sorted(int(f["conn"]) for _, f in sessions) == list(range(20))
    for s, _ in sessions:
        s.close()


def test_per_ip_limit_is_exact_across_processes(server, pki):
    srv = server("-v", "-H", "-C", "3", "127.0.0.1", "0", *WHO, env={**pki.env(), **TWO})
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


def test_maxconn_is_exact_across_processes(server, pki):
    srv = server("-H", "-c", "2", "127.0.0.1", "0", *WHO, env={**pki.env(), **TWO})
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


def test_sigterm_leaves_sessions_to_finish(server, pki):
    srv = server("-v", "-H", "127.0.0.1", "0", *WHO, env={**pki.env(), **TWO})
    (worker,) = srv.workers()
    sessions = [open_session(srv.port) for _ in range(4)]
    srv.signal(signal.SIGTERM)
    assert srv.proc.wait(timeout=5) == 0
    assert socket.socket().connect_ex(("127.0.0.1", srv.port)) != 0
    for s, _ in sessions:
        s.sendall(b"still there?\n")
        assert s.recv(100) == b"still there?\n"
        s.close()
    assert wait_for(lambda: not os.path.exists(f"/proc/{worker}"))


@pytest.mark.open_engine_only  # prog's parent tells which process served it
def test_sighup_reaches_progs_in_every_process(server, pki):
    srv = server("-v", "-H", "127.0.0.1", "0", *WHO, env={**pki.env(), **TWO})
    with ThreadPoolExecutor(8) as pool:
        sessions = list(pool.map(lambda _: open_session(srv.port), range(8)))
    assert len({f["ppid"] for _, f in sessions}) == 2
    srv.signal(signal.SIGHUP)
    for s, _ in sessions:
        assert client.read_all(s) == (b"", "eof")
        s.close()
    assert srv.wait_log("signal 15", count=8)
    assert open_session(srv.port)[1]["conn"] == "0"


@pytest.mark.parametrize("value", ["0", "x", "65"])
def test_bad_worker_count(pki, value):
    r = run_command([S6_TLSSERVER, "127.0.0.1", "0", "cat"], {**pki.env(), "S6TLS_WORKERS": value})
    assert r.returncode == 100
    assert r.stderr.startswith("s6-tlsserver: fatal: S6TLS_WORKERS must be")


@pytest.mark.open_engine_only  # it sets TLS_UID itself
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_workers_share_one_root_helper(server, pki):
    env = {**pki.env(), **TWO, "TLS_UID": "65534", "TLS_GID": "65534"}
    srv = server("-H", "127.0.0.1", "0", *WHO, env=env)
    assert probes.uid(srv.pid) == "65534"
    # one root helper, which never faces the network, and one worker as TLS_UID
    assert wait_for(lambda: sorted(probes.uid(p) for p in srv.forks()) == ["0", "65534"])
    helper = srv.helper()
    with ThreadPoolExecutor(12) as pool:
        sessions = list(pool.map(lambda _: open_session(srv.port), range(12)))
    # the helper started every prog, for both processes
    assert {f["ppid"] for _, f in sessions} == {str(helper)}
    assert sorted(int(f["conn"]) for _, f in sessions) == list(range(12))
    for s, _ in sessions:
        assert client.echo(s) == b"ping\n"
        s.close()


def test_a_dead_worker_is_replaced(server, pki):
    srv = server("-v", "-H", "-c", "4", "127.0.0.1", "0", *WHO, env={**pki.env(), **TWO})
    (victim,) = srv.workers()
    # Each waiting acceptor holds the slot of its next session: after two
    # sessions on the server, the worker can take one more, and then waits for
    # a slot (the server's acceptor holds the fourth).
    sessions = sessions_on(srv, srv.pid, 2) + sessions_on(srv, victim, 1)
    held = 1
    os.kill(victim, signal.SIGKILL)
    assert srv.wait_log(f"worker {victim} died (signal 9); {held} of its slots given back")
    assert wait_for(lambda: len(srv.workers()) == 1 and srv.workers() != [victim])
    # the slots are usable again: -c 4 allows four sessions, no more
    survivors = [s for s, _ in sessions[:2]]
    fresh = [open_session(srv.port) for _ in range(4 - len(survivors))]
    for s in survivors:
        assert client.echo(s) == b"ping\n"
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    late = client.context().wrap_socket(raw, do_handshake_on_connect=False)
    late.settimeout(1)
    with pytest.raises((TimeoutError, ssl.SSLError)):
        late.do_handshake()
    late.close()
    for s in [*survivors, *(s for s, _ in fresh)]:
        s.close()


def test_workers_finish_their_sessions_when_the_server_vanishes(server, pki):
    srv = server("-H", "127.0.0.1", "0", *WHO, env={**pki.env(), **TWO})
    (worker,) = srv.workers()
    sessions = sessions_on(srv, worker, 2)
    on_worker = [s for s, _ in sessions]
    os.kill(srv.pid, signal.SIGKILL)
    srv.proc.wait(timeout=5)
    # no more accepting: the listening socket is closed in every process
    assert wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", srv.port)) != 0)
    for s in on_worker:
        assert client.echo(s, b"still served\n") == b"still served\n"
    for s, _ in sessions:
        s.close()
    assert wait_for(lambda: not os.path.exists(f"/proc/{worker}"))


# -- by default: workers while saturated, one process when quiet

many_cpus = pytest.mark.skipif(
    len(os.sched_getaffinity(0)) < 2, reason="one CPU: the server never adds a worker"
)


@pytest.fixture(scope="module")
def slow_pair(pki):
    """RSA-4096: a handshake costs the server ~100 times what it costs the client,
    so a few client threads saturate the server on any machine."""
    return pki.ca.issue("slow", rsa_key=True, rsa_bits=4096)


class Load:
    """Client threads running sessions back to back until stopped; what prog
    printed in each (TCPCONNNUM), and failures."""

    def __init__(self, port: int, threads: int, source: str = "127.0.0.1") -> None:
        self.port = port
        self.source = source
        self.stopping = threading.Event()
        self.conns: list[int] = []
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        ctx = client.context()
        while not self.stopping.is_set():
            try:
                s = client.connect(self.port, ctx=ctx, source=self.source)
                data, _ = client.read_all(s)
                s.close()
                self.conns.append(int(data.decode().split("conn=")[1]))
            except (OSError, ValueError, IndexError) as e:
                self.failures.append(repr(e))

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=30)


@pytest.fixture
def load() -> Iterator[list[Load]]:
    started: list[Load] = []
    yield started
    for running in started:
        running.stop()


def processes(srv: Running) -> int:
    """Processes that serve: the server and its workers (not the root helper)."""
    return 1 + len(srv.workers())


@many_cpus
@pytest.mark.timeout(90)
def test_workers_come_under_load_and_go_when_quiet(server, pki, slow_pair, load, engine):
    prog = ("/bin/sh", "-c", "echo conn=$TCPCONNNUM")
    srv = server("-v", "-H", "127.0.0.1", "0", *prog, env=pki.env(slow_pair))
    # with TLS_UID, the root helper
    assert len(srv.forks()) == (1 if engine == "confined" else 0)
    load.append(Load(srv.port, threads=6))
    assert wait_for(lambda: processes(srv) > 1, timeout=20)
    most = len(os.sched_getaffinity(0))
    assert processes(srv) <= most
    load[0].stop()
    assert not load[0].failures
    # quiet: the workers retire, and the server is one process again
    assert wait_for(lambda: processes(srv) == 1, timeout=30)
    assert re.search(r"info: worker \d+ started, 2 processes serve", srv.log())
    assert re.search(r"info: worker \d+ retired", srv.log())
    # and still serves
    assert client.read_all(client.connect(srv.port))[0] == b"conn=0\n"


@many_cpus
@pytest.mark.timeout(90)
def test_limits_stay_exact_while_workers_come_and_go(server, pki, slow_pair, load):
    prog = ("/bin/sh", "-c", "echo conn=$TCPCONNNUM")
    srv = server("-v", "-H", "-c", "5", "-C", "4", "127.0.0.1", "0", *prog, env=pki.env(slow_pair))
    load += [Load(srv.port, threads=4, source=ip) for ip in ("127.0.0.1", "127.0.0.2")]
    assert wait_for(lambda: processes(srv) > 1, timeout=20)
    assert wait_for(lambda: min(len(each.conns) for each in load) > 100, timeout=40)
    for each in load:
        each.stop()
    log = srv.log()
    for each in load:
        # -C 4: TCPCONNNUM went from 0 to 3 for each IP, never beyond; a client
        # that starts its next session before the server has ended its last
        # may be a fifth, rejected (accepted and closed at once)
        assert max(each.conns) == 3
        assert len(each.failures) <= log.count(f"reject {each.source}_"), each.failures
    # -c 5: five sessions at the most busy moments, never six, whichever process logged
    totals = [int(n) for n in re.findall(r"status: (\d+)/5", log)]
    assert max(totals) == 5
    counts = [int(n) for n in re.findall(r"(?:accept|end) \S+ pid \d+ count (\d+)/4", log)]
    assert max(counts) == 4
