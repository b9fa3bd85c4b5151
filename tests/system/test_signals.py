"""Signals to the long-lived server, through the real command line.

SIGTERM closes the listener and ends the supervised pid at once while running
sessions go on (in a forked copy that only drains them); SIGHUP terminates
the progs and keeps serving; SIGQUIT terminates them and exits; SIGABRT kills
them and exits; SIGINT is not trapped (SPEC.md §5; REFERENCE-BEHAVIOUR.md §4,
§15, transcript E12).
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
from pathlib import Path

import pytest

from tests.support import client, probes
from tests.support.server import Running, wait_for

pytestmark = pytest.mark.both_engines

INFO = "s6-tlsserver: info: "
CAT = "/bin/cat"
# A prog that ignores SIGTERM (the disposition survives exec): only SIGKILL ends it.
TERM_PROOF = ("/bin/sh", "-c", "trap '' TERM; exec cat")


def open_sessions(srv: Running, n: int = 2) -> list[ssl.SSLSocket]:
    """n sessions that have each echoed once, so their progs are running."""
    sessions = [client.connect(srv.port) for _ in range(n)]
    for s in sessions:
        assert client.echo(s) == b"ping\n"
    assert wait_for(lambda: len(srv.progs()) == n)
    return sessions


def exit_code(srv: Running, timeout: float = 5) -> int:
    try:
        return srv.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail("the server did not exit")


def test_sigterm_stops_listening_and_exits_but_sessions_go_on(server):
    srv = server("-v", "-H", "127.0.0.1", "0", CAT)
    sessions = open_sessions(srv)
    progs = srv.progs()
    helper = srv.helper()  # with TLS_UID: it stays while a drainer needs it

    srv.signal(signal.SIGTERM)
    assert exit_code(srv) == 0
    assert probes.refuses(srv.port)
    assert srv.lines()[-2:] == [f"{INFO}received SIGTERM, quitting", f"{INFO}exiting"]

    # The sessions still work, served by a copy of the server that drains them.
    assert all(probes.alive(p) for p in progs)
    for s in sessions:
        assert client.echo(s, b"still there?\n") == b"still there?\n"
    drainers = set(probes.session_members(srv.pid)) - {*progs, helper}
    assert len(drainers) == 1
    (drainer,) = drainers
    assert "s6-tlsserver" in Path(f"/proc/{drainer}/cmdline").read_text()
    for s in sessions:
        client.half_close(s)
        assert client.read_all(s) == (b"", "eof")
        s.close()
    # Once the sessions end, the drainer exits and nothing the server started is left.
    assert wait_for(lambda: not probes.alive(drainer))
    assert wait_for(lambda: not probes.session_members(srv.pid))
    assert srv.lines()[-1] == f"{INFO}exiting"  # the drainer logs nothing


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_whole_process_group_ends_everything_cleanly(server, signum):
    """Ctrl-C in a terminal, or ``timeout``, signals the server, its progs and
    (with TLS_UID) its root helper at once: the progs die, so do their
    sessions, and every process exits without a traceback."""
    srv = server("-v", "-H", "127.0.0.1", "0", CAT)
    sessions = open_sessions(srv)
    os.killpg(srv.pid, signum)
    assert exit_code(srv) == (0 if signum == signal.SIGTERM else -signal.SIGINT)
    for s in sessions:
        assert client.read_all(s)[0] == b""  # cat is gone: nothing more comes
        s.close()
    assert wait_for(lambda: not probes.session_members(srv.pid))
    assert not [line for line in srv.lines() if "Traceback" in line or "Error" in line]


@pytest.mark.open_engine_only  # it sets TLS_UID itself
@pytest.mark.skipif(os.geteuid() != 0, reason="the root helper comes with TLS_UID, as root")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_the_root_helper_outlives_a_signal_to_the_process_group(server, pki, signum):
    """With TLS_UID the root helper does nothing on the group's signal: a prog
    that outlives it keeps its session, and the helper ends after it."""
    proof = ("/bin/sh", "-c", "trap '' TERM INT; exec cat")  # it outlives either signal
    env = {**pki.env(), "TLS_UID": "65534", "TLS_GID": "65534"}
    srv = server("-v", "-H", "127.0.0.1", "0", *proof, env=env)
    (s,) = open_sessions(srv, 1)
    helper = srv.helper()
    assert helper is not None
    os.killpg(srv.pid, signum)
    assert exit_code(srv) == (0 if signum == signal.SIGTERM else -signal.SIGINT)
    assert client.echo(s, b"still there?\n") == b"still there?\n"
    assert probes.alive(helper)
    client.half_close(s)
    assert client.read_all(s) == (b"", "eof")
    s.close()
    assert wait_for(lambda: not probes.session_members(srv.pid))


@pytest.mark.open_engine_only  # it sets TLS_UID itself
@pytest.mark.skipif(os.geteuid() != 0, reason="the root helper comes with TLS_UID, as root")
def test_the_root_helper_outlives_sigabrt_to_the_process_group(server, pki):
    """SIGABRT to the group: the helper stays to kill the progs as the server
    asks, and the server exits 0 as on its own SIGABRT, not 111 for a helper
    that died before it."""
    proof = ("/bin/sh", "-c", "trap '' ABRT; exec cat")
    env = {**pki.env(), "TLS_UID": "65534", "TLS_GID": "65534"}
    srv = server("-v", "-H", "127.0.0.1", "0", *proof, env=env)
    (s,) = open_sessions(srv, 1)
    os.killpg(srv.pid, signal.SIGABRT)
    assert exit_code(srv) == 0
    assert client.read_all(s)[0] == b""  # killed by the SIGKILL the server sent
    s.close()
    assert wait_for(lambda: not probes.session_members(srv.pid))
    assert f"{INFO}received SIGABRT, sending SIGKILL to all connections and quitting" in srv.lines()
    assert not [line for line in srv.lines() if "fatal" in line or "Traceback" in line]


def test_sighup_terminates_progs_and_keeps_serving(server):
    srv = server("-v", "-H", "127.0.0.1", "0", CAT)
    sessions = open_sessions(srv)
    progs = srv.progs()
    # A stopped prog ends only if SIGCONT follows SIGTERM.
    os.kill(progs[0], signal.SIGSTOP)
    assert wait_for(lambda: probes.state(progs[0]) == "T")

    srv.signal(signal.SIGHUP)
    for s in sessions:
        assert client.read_all(s) == (b"", "eof")
        s.close()
    assert srv.wait_log("signal 15", count=2)
    assert srv.proc.poll() is None
    with client.connect(srv.port) as s:
        assert client.echo(s) == b"ping\n"

    lines = srv.lines()
    hup = lines.index(f"{INFO}received SIGHUP, sending SIGTERM and SIGCONT to all connections")
    ends = {int(x.split()[4]): x for x in lines[hup:] if " end pid " in x}
    for pid in progs:
        assert re.fullmatch(f"{INFO}end pid {pid} signal 15 count [01]/40", ends[pid])


def test_sigquit_terminates_progs_and_exits(server):
    srv = server("-v", "-H", "127.0.0.1", "0", CAT)
    sessions = open_sessions(srv)
    progs = srv.progs()
    os.kill(progs[0], signal.SIGSTOP)  # ends only if SIGCONT follows SIGTERM
    assert wait_for(lambda: probes.state(progs[0]) == "T")

    srv.signal(signal.SIGQUIT)
    assert exit_code(srv) == 0
    assert probes.refuses(srv.port)
    for s in sessions:
        assert client.read_all(s) == (b"", "eof")
        s.close()
    assert wait_for(lambda: not any(probes.alive(p) for p in progs))
    lines = srv.lines()
    assert (
        f"{INFO}received SIGQUIT, sending SIGTERM and SIGCONT to all connections and quitting"
        in lines
    )
    assert lines[-1] == f"{INFO}exiting"
    assert wait_for(lambda: not probes.session_members(srv.pid))


def test_sigabrt_kills_progs_and_exits(server):
    srv = server("-v", "-H", "127.0.0.1", "0", *TERM_PROOF)
    sessions = open_sessions(srv)
    progs = srv.progs()

    srv.signal(signal.SIGABRT)
    assert exit_code(srv) == 0
    assert probes.refuses(srv.port)
    for s in sessions:
        assert client.read_all(s) == (b"", "eof")
        s.close()
    # These progs ignore SIGTERM: they are gone, so they got SIGKILL.
    assert wait_for(lambda: not any(probes.alive(p) for p in progs))
    lines = srv.lines()
    assert f"{INFO}received SIGABRT, sending SIGKILL to all connections and quitting" in lines
    assert lines[-1] == f"{INFO}exiting"
    assert wait_for(lambda: not probes.session_members(srv.pid))


def test_sighup_sends_sigterm_not_sigkill(server):
    srv = server("-v", "-H", "127.0.0.1", "0", *TERM_PROOF)
    (s,) = open_sessions(srv, 1)
    srv.signal(signal.SIGHUP)
    assert srv.wait_log("received SIGHUP")
    # The prog ignores SIGTERM, so the session is untouched.
    assert client.echo(s, b"after\n") == b"after\n"
    assert srv.progs()
    s.close()


def test_sigint_kills_the_server_but_not_its_sessions(server):
    srv = server("-v", "-H", "127.0.0.1", "0", CAT)
    (s,) = open_sessions(srv, 1)
    before = srv.log()
    srv.signal(signal.SIGINT)
    assert exit_code(srv) == -signal.SIGINT  # as upstream: not trapped
    assert probes.refuses(srv.port)
    assert srv.log() == before
    # As upstream's separate processes, the session goes on (in the drainer).
    assert client.echo(s, b"still there?\n") == b"still there?\n"
    s.close()
