"""Resources after many sessions, through the real command line: no fd or child leaks.

After hundreds of sessions, one after another or all at once, the server holds
the same kinds and numbers of descriptors as before and has no child left,
zombie or alive (the issue's "no extra fds, no zombies").
"""

from __future__ import annotations

import contextlib
from collections import Counter

from tests.support import client, probes
from tests.support.server import Running, wait_for


def settled(srv: Running, before: Counter[str]) -> None:
    """Wait until the server is back to its idle state, and check it is."""
    wait_for(lambda: not srv.progs() and probes.fd_kinds(srv.pid) == before)
    assert srv.progs() == []
    assert probes.zombie_children(srv.pid) == []
    assert probes.fd_kinds(srv.pid) == before


def warm_up(srv: Running) -> Counter[str]:
    """One session first: what is created once (contexts, caches) is not a leak."""
    with client.connect(srv.port) as s:
        client.half_close(s)
        client.read_all(s)
    wait_for(lambda: not srv.progs())
    return probes.fd_kinds(srv.pid)


def test_sequential_sessions_leave_nothing_behind(server):
    srv = server("-H", "127.0.0.1", "0", "/bin/echo", "hi")
    before = warm_up(srv)
    assert before["socket"] == 1  # the listener
    for _ in range(200):
        with client.connect(srv.port) as s:
            assert client.read_all(s) == (b"hi\n", "eof")
    settled(srv, before)
    assert srv.log() == ""


def test_concurrent_sessions_leave_nothing_behind(server):
    srv = server("-H", "-c", "60", "-C", "60", "127.0.0.1", "0", "/bin/cat")
    before = warm_up(srv)
    with contextlib.ExitStack() as stack:
        sessions = [stack.enter_context(client.connect(srv.port)) for _ in range(50)]
        for i, s in enumerate(sessions):
            s.sendall(b"%d\n" % i)
        for i, s in enumerate(sessions):
            assert s.recv(100) == b"%d\n" % i
        assert len(srv.progs()) == 50
        # every session holds its socket, its two pipes and a pidfd at most
        assert probes.fd_kinds(srv.pid)["socket"] == 51
        for s in sessions:
            client.half_close(s)
        for s in sessions:
            assert client.read_all(s) == (b"", "eof")
    settled(srv, before)
    assert srv.log() == ""
