"""Ready means ready: once s6-tlsserver says it is ready (``-1``'s line, or
``READY=1`` to systemd's NOTIFY_SOCKET), every signal of its reference page
gets its documented reaction, log line included, even one sent the moment
after; never the default action (SPEC.md §5). A supervisor's ``s6-svc -h``
right after readiness must not kill the server.

Each check starts many servers, a few at a time (a start takes ~0.15 s of
CPU), and signals each one as soon as it is ready, or a random 0-20 ms
later. Before the handlers were installed ahead of readiness, 35 to 43 of 50
servers died of a SIGHUP, SIGTERM, SIGQUIT or SIGABRT sent at once; before
workers and the root helper were forked with those signals blocked, 2 to 4
of 20 starts lost a worker to a SIGHUP passed on at once, and 10 of 20 lost
the helper to a SIGHUP sent to the process group.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support import client
from tests.support.notify import NotifySocket, notify_socket
from tests.support.server import Running, start, wait_for

pytestmark = pytest.mark.timeout(300)

INFO = "s6-tlsserver: info: "
CAT = "/bin/cat"
ARGS = ("-v", "-H", "127.0.0.1", "0", CAT)
NOBODY = "65534"
SEPARATED = {"TLS_UID": NOBODY, "TLS_GID": NOBODY}
# Servers started at a time: enough to load two cores (which widens any window
# between readiness and the handlers), few enough to keep each start short.
AT_A_TIME = 4

REACTIONS = {
    signal.SIGHUP: f"{INFO}received SIGHUP, sending SIGTERM and SIGCONT to all connections",
    signal.SIGTERM: f"{INFO}received SIGTERM, quitting",
    signal.SIGQUIT: (
        f"{INFO}received SIGQUIT, sending SIGTERM and SIGCONT to all connections and quitting"
    ),
    signal.SIGABRT: f"{INFO}received SIGABRT, sending SIGKILL to all connections and quitting",
    signal.SIGINT: None,  # as upstream: it dies of it, silently
}
SIGNALS = list(REACTIONS)


def at_once() -> float:
    return 0.0


def within_20ms() -> float:
    return random.uniform(0.0, 0.02)


def how_ended(rc: int) -> str:
    return f"died of {signal.Signals(-rc).name}" if rc < 0 else f"exited {rc}"


def after_start(srv: Running) -> list[str]:
    """What the server logged once it was up: its info and fatal lines after
    ``status: 0/40`` (a warning about confinement, say, is no reaction)."""
    lines = srv.lines()
    start_lines = [i for i, line in enumerate(lines) if line == f"{INFO}status: 0/40"]
    later = lines[start_lines[0] + 1 :] if start_lines else lines
    return [line for line in later if " warning: " not in line]


def reacted(srv: Running, signum: int) -> str | None:
    """None if the server reacted to signum as its reference page says; else what it did."""
    if signum == signal.SIGHUP:
        seen = srv.wait_log(REACTIONS[signum] or "", timeout=10)
        rc = srv.proc.poll()
        if rc is not None:
            return f"{how_ended(rc)}, logged {after_start(srv)}"
        if not seen:
            return f"alive, logged {after_start(srv)}"
        try:
            with client.connect(srv.port, timeout=5) as s:
                if client.echo(s) != b"ping\n":
                    return "the next client was not served"
        except OSError as e:
            return f"the next client was not served: {e}"
        return None if srv.proc.poll() is None else "it exited after all"
    try:
        rc = srv.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return f"still running, logged {after_start(srv)}"
    line = REACTIONS[signum]
    want = (-signum, []) if line is None else (0, [line, f"{INFO}exiting"])
    got = (rc, after_start(srv))
    return None if got == want else f"{how_ended(rc)}, logged {got[1]}"


@pytest.fixture
def notify(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifySocket]:
    sock = notify_socket(getattr(request, "param", "path"), tmp_path)
    yield sock
    sock.close()


def start_ready_by_notify(
    env: Mapping[str, str], log: Path, sock: NotifySocket
) -> tuple[Running, str | None]:
    """Start the server without -1 and wait for its READY=1; the server, and
    what went wrong if it never said it, or not from its own pid."""
    srv = start(ARGS, {**env, "NOTIFY_SOCKET": sock.address}, log, notify=False)
    message = sock.receive(timeout=10)
    if message != ("READY=1", srv.pid):
        return srv, f"got {message} for READY=1 from pid {srv.pid}"
    bound = re.search(r"starting - bound to ip \S+ port (\d+)", srv.log())
    srv.port = int(bound.group(1)) if bound else 0
    return srv, None


def assert_each(one: Callable[[int], str | None], starts: int) -> None:
    """Run one(0) ... one(starts - 1), AT_A_TIME at once; each says what went wrong, or None."""
    with ThreadPoolExecutor(AT_A_TIME) as pool:
        problems = [p for p in pool.map(one, range(starts)) if p is not None]
    assert not problems, f"{len(problems)} of {starts}: {problems[:5]}"


def signal_at_readiness(
    tmp_path: Path,
    env: Mapping[str, str],
    signum: int,
    starts: int,
    delay: Callable[[], float],
    notify: str | None = None,
) -> None:
    """Start servers, signal each delay() after it is ready: every one reacts
    as documented. notify: readiness is READY=1 to a socket of this kind
    (``path`` or ``abstract``), not -1's line."""

    def one(i: int) -> str | None:
        log = tmp_path / f"server{i}.log"
        wait = delay()
        sock = None
        if notify is None:
            srv, problem = start(ARGS, env, log), None
        else:
            sock = notify_socket(notify, tmp_path)
            srv, problem = start_ready_by_notify(env, log, sock)
        try:
            if problem is None:
                if wait:
                    time.sleep(wait)
                os.kill(srv.pid, signum)
                problem = reacted(srv, signum)
            return None if problem is None else f"start {i} ({wait * 1000:.0f} ms): {problem}"
        finally:
            srv.stop()
            if sock is not None:
                sock.close()

    with ThreadPoolExecutor(AT_A_TIME) as pool:
        problems = [p for p in pool.map(one, range(starts)) if p is not None]
    deaths = [p for p in problems if f"died of {signal.Signals(signum).name}" in p]
    if signum == signal.SIGINT:
        deaths = []  # dying of it is the reaction
    assert not problems, (
        f"{len(problems)} of {starts} servers did not react to {signal.Signals(signum).name} "
        f"as documented, {len(deaths)} died of it: {problems[:5]}"
    )


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_at_once_after_readiness_gets_its_reaction(pki, tmp_path, signum):
    signal_at_readiness(tmp_path, pki.env(), signum, 50, at_once)


@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_0_to_20ms_after_readiness_gets_its_reaction(pki, tmp_path, signum):
    signal_at_readiness(tmp_path, pki.env(), signum, 10, within_20ms)


@pytest.mark.skipif(os.geteuid() != 0, reason="privilege separation needs root")
@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
@pytest.mark.parametrize("delay", [at_once, within_20ms], ids=["at-once", "0-20ms"])
def test_with_tls_uid_a_signal_after_readiness_gets_its_reaction(pki, tmp_path, signum, delay):
    """The server that reacts is the confined TLS engine, beside its root helper."""
    signal_at_readiness(tmp_path, {**pki.env(), **SEPARATED}, signum, 8, delay)


@pytest.mark.skipif(os.geteuid() != 0, reason="privilege separation needs root")
@pytest.mark.parametrize("signum", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_at_once_after_ready_1_gets_its_reaction(pki, tmp_path, signum):
    """READY=1 means what -1's line means (as s6tls@.service runs it: TLS_UID)."""
    signal_at_readiness(tmp_path, {**pki.env(), **SEPARATED}, signum, 6, at_once, "path")


def test_sigint_after_readiness_leaves_the_session_to_finish(pki, tmp_path):
    """Without a session, dying of SIGINT and handling it look alike; with one,
    the handled SIGINT leaves it to the drainer, the default action would cut it."""

    def one(i: int) -> str | None:
        srv = start(ARGS, pki.env(), tmp_path / f"server{i}.log")
        try:
            with client.connect(srv.port) as s:
                if client.echo(s) != b"ping\n":
                    return f"start {i}: not served"
                before = srv.log()
                srv.signal(signal.SIGINT)
                rc = srv.proc.wait(timeout=10)
                if (rc, srv.log()) != (-signal.SIGINT, before):
                    return f"start {i}: {how_ended(rc)}, logged {srv.log()[len(before) :]!r}"
                if client.echo(s, b"still there?\n") != b"still there?\n":
                    return f"start {i}: the session was cut"
                client.half_close(s)
                if client.read_all(s) != (b"", "eof"):
                    return f"start {i}: the session did not end cleanly"
            return None
        finally:
            srv.stop()

    assert_each(one, 12)


def test_workers_started_with_the_server_react_to_a_signal_at_once(pki, tmp_path):
    """S6TLS_WORKERS=4: the server passes SIGHUP on to workers forked just
    before readiness, which must react to it, not die of it (nor be replaced)."""
    env = {**pki.env(), "S6TLS_WORKERS": "4"}

    def one(i: int) -> str | None:
        srv = start(ARGS, env, tmp_path / f"server{i}.log")
        try:
            srv.signal(signal.SIGHUP)
            problem = reacted(srv, signal.SIGHUP)
            if problem is None:
                time.sleep(0.2)  # a worker that died is reaped and reported at once
                died = [line for line in srv.lines() if " died " in line]
                if died or len(srv.workers()) != 3:
                    problem = f"workers {srv.workers()}, logged {died}"
            return None if problem is None else f"start {i}: {problem}"
        finally:
            srv.stop()

    assert_each(one, 20)


# -- systemd's side: READY=1, STOPPING=1, and nothing of it for prog


ENGINES = {"open": {}, "tls-uid": SEPARATED}


@pytest.mark.parametrize("notify", ["path", "abstract"], indirect=True)
@pytest.mark.parametrize("engine", list(ENGINES))
def test_ready_1_with_the_port_line_and_stopping_1_on_sigterm(pki, tmp_path, notify, engine):
    if engine == "tls-uid" and os.geteuid() != 0:
        pytest.skip("privilege separation needs root")
    env = {**pki.env(), **ENGINES[engine], "NOTIFY_SOCKET": notify.address}
    srv = start(ARGS, env, tmp_path / "server.log")  # -1's line has come
    try:
        # from the server's own pid, for NotifyAccess=main
        assert notify.receive() == ("READY=1", srv.pid)
        with client.connect(srv.port) as s:
            assert client.echo(s) == b"ping\n"
        srv.signal(signal.SIGTERM)
        assert notify.receive() == ("STOPPING=1", srv.pid)
        assert srv.proc.wait(timeout=10) == 0
        assert notify.receive(timeout=0.2) is None  # nothing more, from no one
        assert not [line for line in srv.lines() if " warning: " in line or " fatal: " in line]
    finally:
        srv.stop()


@pytest.mark.parametrize("engine", list(ENGINES))
def test_notify_socket_never_reaches_prog(pki, tmp_path, notify, engine):
    if engine == "tls-uid" and os.geteuid() != 0:
        pytest.skip("privilege separation needs root")
    env = {**pki.env(), **ENGINES[engine], "NOTIFY_SOCKET": notify.address, "KEPT": "yes"}
    srv = start(("-H", "127.0.0.1", "0", "/usr/bin/env"), env, tmp_path / "server.log")
    try:
        with client.connect(srv.port) as s:
            got = client.env_of(client.read_all(s)[0])
        assert got["KEPT"] == "yes" and "NOTIFY_SOCKET" not in got
        assert notify.receive() == ("READY=1", srv.pid)
        assert notify.receive(timeout=0.2) is None  # prog sent nothing either
    finally:
        srv.stop()


def test_an_unreachable_notify_socket_is_a_warning(pki, tmp_path):
    missing = tmp_path / "no-such-socket"
    srv = start(ARGS, {**pki.env(), "NOTIFY_SOCKET": str(missing)}, tmp_path / "server.log")
    try:
        assert wait_for(lambda: f"unable to connect to NOTIFY_SOCKET {missing}" in srv.log())
        with client.connect(srv.port) as s:
            assert client.echo(s) == b"ping\n"
    finally:
        srv.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="privilege separation needs root")
def test_with_tls_uid_the_root_helper_outlives_a_group_signal_at_once(pki, tmp_path):
    """SIGHUP to the whole process group the moment the server is ready: the
    server reacts, and the root helper, forked just before, does nothing (were
    it to die, the server would stop with ``fatal: the privileged helper is gone``)."""
    env = {**pki.env(), **SEPARATED}

    def one(i: int) -> str | None:
        srv = start(ARGS, env, tmp_path / f"server{i}.log")
        try:
            os.killpg(srv.pid, signal.SIGHUP)
            problem = reacted(srv, signal.SIGHUP)
            if problem is None and srv.helper() is None:
                problem = f"no root helper, logged {after_start(srv)}"
            return None if problem is None else f"start {i}: {problem}"
        finally:
            srv.stop()

    assert_each(one, 12)
