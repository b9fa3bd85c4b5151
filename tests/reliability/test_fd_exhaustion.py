"""Running out of file descriptors: the server logs, backs off, and recovers.

The server runs under ``prlimit --nofile=64:64``. More connections than it
has descriptors for must not make it spin on accept() or die; once they
close, it serves again and holds what it held at idle. A session whose
prog cannot get its pipes is refused without leaking a descriptor.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability import observe
from tests.support import client, probes
from tests.support.server import Running, start, wait_for

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit is not installed"),
]

NOFILE = 64


class Limited:
    """Starts s6-tlsserver -1 -H -c 200 -C 200 [options] 127.0.0.1 0 /bin/cat with at most
    NOFILE descriptors, and stops it after the test."""

    def __init__(self, pki, tmp_path: Path) -> None:
        self.pki = pki
        self.tmp = tmp_path
        self.started: list[Running] = []

    def __call__(self, *options: str, env: dict[str, str] | None = None) -> Running:
        log = self.tmp / f"server{len(self.started)}.log"
        args = ["-H", "-c", "200", "-C", "200", *options, "127.0.0.1", "0", "/bin/cat"]
        limit = ["prlimit", f"--nofile={NOFILE}:{NOFILE}", "--"]
        srv = start(args, env or self.pki.env(), log, wrapper=limit)
        self.started.append(srv)
        return srv


@pytest.fixture
def limited(pki, tmp_path) -> Iterator[Limited]:
    factory = Limited(pki, tmp_path)
    yield factory
    for srv in factory.started:
        srv.stop()


def free_numbers(pid: int) -> int:
    """How many descriptor numbers below the limit pid has free."""
    return sum(not os.path.lexists(f"/proc/{pid}/fd/{n}") for n in range(NOFILE))


def fill_but_one(srv: Running) -> list[socket.socket]:
    """Idle connections (each accepted, holding one descriptor) until one number is left."""
    held = [probes.raw_connect(srv.port) for _ in range(free_numbers(srv.pid) - 1)]
    assert wait_for(lambda: free_numbers(srv.pid) == 1), free_numbers(srv.pid)
    return held


def test_accept_backs_off_and_recovers(limited):
    srv = limited()
    idle = observe.idle(srv.pid)
    held = [probes.raw_connect(srv.port) for _ in range(2 * NOFILE)]
    assert srv.wait_log("unable to accept: Too many open files"), srv.log()
    began = time.monotonic()
    lines_before = srv.log().count("unable to accept")
    cpu = observe.cpu_seconds(srv.pid)
    time.sleep(2.0)
    spent = observe.cpu_seconds(srv.pid) - cpu
    assert spent < 0.5, f"{spent:.2f} s of CPU in 2 s out of descriptors: the server spins"
    assert srv.proc.poll() is None

    # A client arriving now waits, and is served once descriptors free up.
    served: list[bytes] = []

    def late_client() -> None:
        with client.connect(srv.port, timeout=30) as s:
            served.append(client.echo(s))

    late = threading.Thread(target=late_client)
    late.start()
    late.join(1.0)
    assert late.is_alive() and not served
    for sock in held:
        sock.close()
    late.join(30)
    assert served == [b"ping\n"]
    exhausted = time.monotonic() - began
    lines = srv.log().count("unable to accept") - lines_before
    # One warning per episode of exhaustion, not one per retry.
    assert lines <= 2, f"{lines} more warnings in {exhausted:.1f} s"

    end = observe.settle(srv.pid, idle)
    assert (end.fds, end.children, end.zombies) == (idle.fds, idle.children, 0), end.describe()
    assert srv.proc.poll() is None
    assert "Traceback" not in srv.log()


def test_sessions_beyond_the_limit_are_refused_without_leaks(limited):
    """Sessions opened one by one until one is refused, for each way the last descriptors
    can run out (accept, prog's first pipe, its second pipe); then everything closes.

    Each session holds 4 descriptors (socket, two pipes, pidfd), so holding 0 to 3 extra
    idle connections first makes the refusal fall at each step in turn.
    """
    srv = limited()
    idle = observe.idle(srv.pid)
    for extra in range(4):
        idlers = [probes.raw_connect(srv.port) for _ in range(extra)]
        held = sum(idle.fds.values()) + extra
        assert wait_for(lambda n=held: sum(probes.fd_kinds(srv.pid).values()) >= n)
        sessions: list[ssl.SSLSocket] = []
        refused = None
        for _ in range(NOFILE):
            raw = probes.raw_connect(srv.port, timeout=3)
            try:
                s = client.context().wrap_socket(raw, suppress_ragged_eofs=False)
                assert client.echo(s) == b"ping\n"
            except (OSError, ssl.SSLError, AssertionError) as e:
                refused = e
                raw.close()
                break
            sessions.append(s)
        assert refused is not None and len(sessions) >= 5, (extra, len(sessions), refused)
        for sock in [*sessions, *idlers]:
            sock.close()
        end = observe.settle(srv.pid, idle)
        back = (end.fds, end.children, end.zombies) == (idle.fds, idle.children, 0)
        assert back, (extra, end.describe())
    assert srv.proc.poll() is None
    with client.connect(srv.port) as s:
        assert client.echo(s) == b"ping\n"
    assert "Traceback" not in srv.log()


PROXY_LINE = b"PROXY TCP4 127.0.0.1 127.0.0.1 1 2\r\n"


def served_certificate(srv: Running) -> bytes | None:
    """The certificate a client behind a PROXY header is shown; None if it is refused."""
    try:
        raw = probes.raw_connect(srv.port, timeout=5)
        raw.sendall(PROXY_LINE)
        with client.context().wrap_socket(raw) as s:
            return s.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return None


def test_rotation_while_out_of_descriptors_is_picked_up_later(limited, pki, tmp_path):
    keyfile, certfile = tmp_path / "key.pem", tmp_path / "cert.pem"
    keyfile.write_bytes(pki.ec.key.read_bytes())
    certfile.write_bytes(pki.ec.cert.read_bytes())
    # With -L the idle connections wait for their PROXY header, before any key is looked at.
    env = {"KEYFILE": str(keyfile), "CERTFILE": str(certfile)}
    srv = limited("-L", "-K", "60000", env=env)
    idle = observe.idle(srv.pid)
    assert served_certificate(srv) == pki.ec.cert_der_bytes
    observe.settle(srv.pid, idle)  # that session's prog and pipes are gone

    held = fill_but_one(srv)
    for path, source in ((keyfile, pki.rsa.key), (certfile, pki.rsa.cert)):
        new = path.with_suffix(".new")
        new.write_bytes(source.read_bytes())
        os.replace(new, path)
    # Accepted on the last descriptor: the rotated files cannot be read now.
    served_certificate(srv)
    assert srv.wait_log("Too many open files"), srv.log()
    for sock in held:
        sock.close()
    end = observe.settle(srv.pid, idle)
    assert end.fds == idle.fds, end.describe()

    # Descriptors are back: the rotated pair must be served now.
    assert served_certificate(srv) == pki.rsa.cert_der_bytes
