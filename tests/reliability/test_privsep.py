"""Privilege separation (root with TLS_UID/TLS_GID) under load: nothing may accumulate.

The unprivileged server asks a root helper to start each prog and learns of
its end through the helper; that bookkeeping must not grow with the number
of sessions served. (That the helper keeps none of -1's stdout is checked
with the other process models in tests/system/test_core.py.)
"""

from __future__ import annotations

import os
import random
import signal

import pytest

from tests.reliability import observe
from tests.reliability.soak import SERVER_ARGS
from tests.support import client, probes
from tests.support.server import wait_for
from tests.support.traffic import KIB, run_sessions

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0, reason="privilege separation needs root"),
]

NOBODY = "65534"
SEPARATED = {"TLS_UID": NOBODY, "TLS_GID": NOBODY}


def small(rng: random.Random) -> int:
    """Payload sizes for counting sessions rather than bytes."""
    return rng.randint(0, KIB)


# RSS creeps while the allocator settles, per-session state or not: over 40,000
# sessions a server that keeps nothing per session (before and after the
# worker rework alike) moved by up to 2.5 MiB in a 4,000-session round, and
# levelled off after ~25,000. A long measured round tells a leak from that:
# keeping a 350-byte object per session grew it 4.1 MiB, and fails.
WARMUP, MEASURED, GROWTH_BOUND_KIB = 2500, 12000, 4096


def test_memory_does_not_grow_with_sessions(server, pki):
    # One process: what accumulates per session is what is measured (under this
    # load the server would otherwise add a worker, with its own channel).
    env = {**pki.env(), "TLS_UID": NOBODY, "TLS_GID": NOBODY, "S6TLS_WORKERS": "1"}
    srv = server(*SERVER_ARGS, env=env)
    idle = observe.idle(srv.pid)
    (helper,) = probes.children(srv.pid)
    assert idle.children == 1  # the helper; progs will be its children
    # Warm up until the allocator has settled, then see what more sessions add.
    assert not run_sessions(srv.port, WARMUP, 64, 1, size=small).failures
    warm = observe.settle(srv.pid, idle)
    helper_idle = observe.snapshot(helper)  # surely serving by now
    tally = run_sessions(srv.port, MEASURED, 64, 2, size=small)
    assert not tally.failures, tally.failures[:5]
    end = observe.settle(srv.pid, idle)

    assert (end.fds, end.children, end.zombies) == (idle.fds, 1, 0), end.describe()
    assert observe.settle(helper, helper_idle).fds == helper_idle.fds
    growth = end.rss_kib - warm.rss_kib
    assert growth < GROWTH_BOUND_KIB, f"RSS grew {growth} KiB over {MEASURED} sessions"


def test_a_dead_helper_stops_the_server_and_its_sessions_go_on(server, pki):
    """Without its root helper the server can start no prog: it says so, stops
    (exit 111, for the supervisor to start it again), and lets the running
    sessions finish."""
    srv = server("-v", "-H", "127.0.0.1", "0", "/bin/cat", env={**pki.env(), **SEPARATED})
    with client.connect(srv.port) as s:
        assert client.echo(s) == b"ping\n"
        helper = srv.helper()
        assert helper is not None
        os.kill(helper, signal.SIGKILL)
        assert srv.proc.wait(timeout=5) == 111
        assert "s6-tlsserver: fatal: the privileged helper is gone" in srv.lines()
        assert probes.refuses(srv.port)
        assert client.echo(s, b"still there?\n") == b"still there?\n"
    assert wait_for(lambda: not probes.session_members(srv.pid))
    assert "Traceback" not in srv.log()
