"""Privilege separation (root with TLS_UID/TLS_GID) under load: nothing may accumulate.

The unprivileged server asks a root helper to start each prog and learns of
its end through the helper; that bookkeeping must not grow with the number
of sessions served. The helper must not hold on to what the server gives up
either: with -1, stdout is closed once the port is written.
"""

from __future__ import annotations

import os
import random
import select
import subprocess

import pytest

from tests.reliability import observe
from tests.reliability.soak import SERVER_ARGS
from tests.support import probes
from tests.support.server import S6_TLSSERVER, Running
from tests.support.traffic import KIB, run_sessions

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(os.geteuid() != 0, reason="privilege separation needs root"),
]

NOBODY = "65534"


def small(rng: random.Random) -> int:
    """Payload sizes for counting sessions rather than bytes."""
    return rng.randint(0, KIB)


# The allocator settles slowly: after 2,500 sessions a server that keeps nothing
# per session still moved by up to +1.9 MiB over the measured round (and by 0.1
# to 2.0 MiB over 16,000), after 6,500 by +0.4 to +0.9 MiB. One that keeps ~700
# bytes per session grows ~2.7 MiB.
WARMUP, MEASURED, GROWTH_BOUND_KIB = 6500, 4000, 1600


def test_memory_does_not_grow_with_sessions(server, pki):
    srv = server(*SERVER_ARGS, env={**pki.env(), "TLS_UID": NOBODY, "TLS_GID": NOBODY})
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


def test_readiness_pipe_is_closed(pki, tmp_path):
    log = tmp_path / "server.log"
    argv = [S6_TLSSERVER, "-1", "-H", "127.0.0.1", "0", "/bin/cat"]
    env = {"PATH": "/usr/bin:/bin", **pki.env(), "TLS_UID": NOBODY, "TLS_GID": NOBODY}
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
            start_new_session=True,
        )
    srv = Running(proc, 0, log)
    try:
        assert proc.stdout is not None
        port = os.read(proc.stdout.fileno(), 100)
        assert port.strip().isdigit(), (port, log.read_text())
        readable, _, _ = select.select([proc.stdout], [], [], 5)
        assert readable, "stdout is still open 5 s after the port was written"
        assert os.read(proc.stdout.fileno(), 100) == b""
    finally:
        srv.stop()
        if proc.stdout is not None:
            proc.stdout.close()
