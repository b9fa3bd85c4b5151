"""Faults while good sessions run: the server survives each and good sessions are unaffected.

Every test runs a background load of echo sessions from 127.0.0.1 while a
fault happens, then checks that each good session verified byte for byte,
the server is alive, and its descriptors and children are back to idle.
Faulty progs are chosen by access rules for clients from 127.0.0.2, so the
load keeps /bin/cat on the same server.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest

from tests.reliability import observe
from tests.support import client, probes
from tests.support.server import Running, wait_for
from tests.support.traffic import MIB, Exchange, Load, exchange, payload

pytestmark = pytest.mark.timeout(120)

FAULTY = "127.0.0.2"  # clients from here get the rule's prog instead of cat
# Well below what either backpressure test would buffer if it read without
# waiting (32 MB and 200 MB), well above the load's own noise (1-2 MiB).
RSS_BOUND_MIB = 8


class Faults:
    """A server whose prog is cat, or the given exec line for clients from 127.0.0.2."""

    def __init__(self, server, tmp_path: Path) -> None:
        self._server = server
        self._tmp = tmp_path

    def start(
        self, exec_line: str | None = None, *options: str
    ) -> tuple[Running, observe.Snapshot]:
        rules = self._tmp / "rules"
        (rules / "ip4/127.0.0.0_8").mkdir(parents=True)
        (rules / "ip4/127.0.0.0_8/allow").touch()
        if exec_line is not None:
            (rules / f"ip4/{FAULTY}_32").mkdir()
            (rules / f"ip4/{FAULTY}_32/allow").touch()
            (rules / f"ip4/{FAULTY}_32/exec").write_text(exec_line)
        srv = self._server("-v", "-H", "-i", str(rules), *options, "127.0.0.1", "0", "/bin/cat")
        return srv, observe.idle(srv.pid)


@pytest.fixture
def faults(server, tmp_path) -> Faults:
    return Faults(server, tmp_path)


def assert_recovered(srv: Running, idle: observe.Snapshot) -> None:
    """The server lives, holds what it held at idle, has reaped every prog, logged no traceback."""
    assert srv.proc.poll() is None
    end = observe.settle(srv.pid, idle)
    assert (end.fds, end.children, end.zombies) == (idle.fds, idle.children, 0), end.describe()
    assert "Traceback" not in srv.log()


def prog_with(srv: Running, variable: str) -> int:
    """The pid of the prog whose environment holds variable (NAME=value)."""
    wanted = variable.encode()
    found: list[int] = []

    def look() -> bool:
        for pid in srv.children():
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if wanted in environ:
                found.append(pid)
                return True
        return False

    assert wait_for(look), f"no prog with {variable}"
    return found[0]


def prog_of(srv: Running, port: int) -> int:
    """The pid of the prog serving the client whose local port is port."""
    return prog_with(srv, f"TCPREMOTEPORT={port}")


def in_background(
    port: int, data: memoryview, ctx: ssl.SSLContext | None = None
) -> tuple[threading.Thread, list[Exchange]]:
    """An echo session from 127.0.0.2 in a thread; its Exchange lands in the list."""
    result: list[Exchange] = []
    ctx = ctx or client.context()
    thread = threading.Thread(
        target=lambda: result.append(exchange(port, data, ctx=ctx, source=FAULTY))
    )
    thread.start()
    return thread, result


def recv_exactly(s: ssl.SSLSocket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = s.recv(n - len(got))
        assert chunk, "the session ended early"
        got += chunk
    return bytes(got)


def read_to_end(s: ssl.SSLSocket) -> bytes:
    """What the server still sends until it ends the connection, however it ends it."""
    chunks = []
    try:
        while chunk := s.recv(65536):
            chunks.append(chunk)
    except (ssl.SSLError, ConnectionResetError):
        pass
    return b"".join(chunks)


def test_prog_killed_mid_stream(faults):
    srv, idle = faults.start()
    rng = random.Random(1)
    ctx = client.context()
    with Load(srv.port) as load:
        for _ in range(3):
            # between two exchanges: cat has echoed all it got
            with client.connect(srv.port) as s:
                port = s.getsockname()[1]
                first = bytes(payload(rng, 64 << 10))
                s.sendall(first)
                assert recv_exactly(s, len(first)) == first
                prog = prog_of(srv, port)
                os.kill(prog, signal.SIGKILL)
                # What cat never got has nowhere to go: nothing more comes back.
                try:
                    s.sendall(b"after the kill")
                except OSError:
                    pass
                assert read_to_end(s) == b""
            assert srv.wait_log(f"end pid {prog} signal 9")
            # while 8 MiB stream both ways: the session is cut, never corrupted
            streamer, result = in_background(srv.port, payload(rng, 8 * MIB), ctx)
            prog = prog_with(srv, f"TCPREMOTEIP={FAULTY}")
            os.kill(prog, signal.SIGKILL)
            streamer.join(30)
            (ex,) = result
            assert ex.cut and not ex.verified, ex.describe()
            assert srv.wait_log(f"end pid {prog} signal 9")
            assert load.progress()
        load.check()
    assert_recovered(srv, idle)


def test_prog_that_exits_at_once(faults):
    srv, idle = faults.start("/bin/true")
    rng = random.Random(2)
    ctx = client.context()
    with Load(srv.port) as load:
        for _ in range(20):
            ex = exchange(srv.port, payload(rng, 256 << 10), ctx=ctx, source=FAULTY, timeout=20)
            # Ended by the server, with nothing echoed (a reset for unread data is fine).
            assert ex.received == b"", ex.describe()
            assert "Timeout" not in (ex.error or ""), ex.describe()
        assert load.progress()
        load.check()
    assert srv.log().count("exitcode 0") >= 20
    assert_recovered(srv, idle)


def test_prog_that_never_reads(faults):
    srv, idle = faults.start("sleep 5")
    with Load(srv.port) as load:
        rss = observe.RssWatch(srv.pid)
        sender, result = in_background(srv.port, memoryview(os.urandom(32 * MIB)))
        rss.watch(4.0)  # the client is pushing 32 MB at a prog that reads nothing
        assert sender.is_alive(), "32 MB cannot fit in the buffers: the client must be held"
        assert load.progress()
        sender.join(30)
        load.check()
    (ex,) = result
    assert ex.received == b"", ex.describe()  # sleep wrote nothing; the session ended
    assert rss.growth_mib < RSS_BOUND_MIB, f"RSS grew {rss.growth_mib:.1f} MiB"
    assert_recovered(srv, idle)


def test_client_resets_mid_handshake_and_mid_session(faults):
    srv, idle = faults.start()
    ctx = client.context()
    with Load(srv.port) as load:
        for n in range(30):
            # right after connect, before a byte
            probes.reset(probes.raw_connect(srv.port))
            # mid-handshake: the ClientHello is answered, then the client resets
            sock = probes.raw_connect(srv.port)
            probes.BioClient(sock, ctx).hello()
            probes.reset(sock)
            # mid-session: cat has echoed, more is on its way, then the client resets
            s = client.connect(srv.port, ctx=ctx)
            s.sendall(b"x" * 1000)
            assert recv_exactly(s, 1000) == b"x" * 1000
            s.sendall(os.urandom(200_000))
            probes.reset(s)
            if n % 10 == 0:
                assert load.progress()
        load.check()
    assert srv.wait_log("Connection reset by peer", count=60)
    assert_recovered(srv, idle)


def test_client_that_stops_reading(faults):
    srv, idle = faults.start("head -c 200M /dev/zero")
    with Load(srv.port) as load:
        s = client.connect(srv.port, source=FAULTY)
        prog = prog_of(srv, s.getsockname()[1])
        assert recv_exactly(s, 1 * MIB) == bytes(1 * MIB)
        rss = observe.RssWatch(srv.pid)
        rss.watch(3.0)  # the client reads nothing more: prog and server must wait
        assert probes.alive(prog), "200 MB cannot fit in the buffers: prog must be held"
        assert load.progress()
        probes.reset(s)
        assert wait_for(lambda: not probes.alive(prog))  # its pipe closed: SIGPIPE
        load.check()
    assert rss.growth_mib < RSS_BOUND_MIB, f"RSS grew {rss.growth_mib:.1f} MiB"
    assert srv.wait_log(f"end pid {prog} signal 13")
    assert_recovered(srv, idle)


def test_slowloris_handshakes_are_freed_by_the_deadline(faults):
    srv, idle = faults.start(None, "-K", "1000", "-c", "300", "-C", "300")
    with Load(srv.port) as load:
        stalled = []
        for _ in range(200):
            sock = probes.raw_connect(srv.port)
            sock.sendall(b"\x16")  # one byte of a ClientHello, and nothing more
            stalled.append(sock)
        opened = time.monotonic()
        assert load.progress(5)  # good sessions are still served
        for sock in stalled:
            assert probes.wait_closed(sock, max(0.0, opened + 8 - time.monotonic())) is not None
            sock.close()
        freed = time.monotonic() - opened
        load.check()
    assert freed < 8, f"stalled handshakes freed after {freed:.1f} s"
    assert srv.wait_log("handshake timed out", count=200)
    assert_recovered(srv, idle)


def test_maxconn_exhaustion_and_recovery(faults):
    srv, idle = faults.start(None, "-c", "4")
    with Load(srv.port, threads=2) as load:
        held = []
        for _ in range(4):
            s = client.connect(srv.port, timeout=30)
            s.sendall(b"held\n")
            assert recv_exactly(s, 5) == b"held\n"
            held.append(s)
        assert srv.wait_log("status: 4/4")
        # The fifth connects (the kernel's backlog) but is not served while 4 are held.
        raw = probes.raw_connect(srv.port)
        fifth = client.context().wrap_socket(
            raw, do_handshake_on_connect=False, suppress_ragged_eofs=False
        )
        fifth.settimeout(1.0)
        with pytest.raises(TimeoutError):
            fifth.do_handshake()
        held.pop().close()
        fifth.settimeout(20)
        fifth.do_handshake()  # served once a slot frees up
        fifth.sendall(b"fifth\n")
        assert recv_exactly(fifth, 6) == b"fifth\n"
        fifth.close()
        for s in held:
            s.close()
        assert load.progress(3)
        load.check()
    assert_recovered(srv, idle)


def test_sighup_during_load(faults):
    srv, idle = faults.start()
    with Load(srv.port, threads=4, max_size=1 * MIB, allow_cuts=True) as load:
        # Five SIGHUPs at least, and more (twenty at most) until one finds a
        # session running: on a loaded machine a signal may fall between two.
        sent = 0
        while sent < 5 or (sent < 20 and "signal 15" not in srv.log()):
            assert load.progress(2)
            srv.signal(signal.SIGHUP)
            sent += 1
        assert load.progress(2)
        load.check()  # every session verified, or was cut without a wrong byte
    assert srv.log().count("received SIGHUP") == sent
    assert "signal 15" in srv.log(), "SIGHUP cut no session: the test proved nothing"
    with Load(srv.port) as after:  # and the server keeps serving
        assert after.progress(20)
        after.check()
    assert_recovered(srv, idle)


def test_load_alone_is_clean(faults):
    """The baseline for the tests above: the load by itself verifies and leaves nothing."""
    srv, idle = faults.start()
    with Load(srv.port) as load:
        assert load.progress(30)
        load.check()
    assert "warning" not in srv.log()
    assert_recovered(srv, idle)


def test_client_half_closes_then_resets(faults):
    """A client that half-closes, reads its echo, then resets: nothing is left behind."""
    srv, idle = faults.start()
    with Load(srv.port) as load:
        for _ in range(10):
            s = client.connect(srv.port)
            s.sendall(b"data")
            socket.socket.shutdown(s, socket.SHUT_WR)
            assert recv_exactly(s, 4) == b"data"
            probes.reset(s)
        load.check()
    assert_recovered(srv, idle)
