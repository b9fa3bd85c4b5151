"""Fuzzing: random and mutated PROXY headers at a real -L server, rules files and
directories at the readers, random bytes at the TLS port.

Nothing may crash or hang, and everything fails closed: a bad header or a
bad ClientHello drops the connection without starting prog, a bad rules
file or tree gives a RulesError (the server then denies), never another
exception. The PROXY parser itself is fuzzed in tests/unit/test_proxy.py;
here the whole server takes the inputs.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import socket
import ssl
import subprocess
import sys
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from s6tls.proxy import Header, ProxyError, parse
from tests.reliability import observe
from tests.reliability.fuzz_rules import mutate
from tests.support import client, probes

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# Touches the marker file whenever a prog starts.
MARKING_CAT = ("/bin/sh", "-c", 'echo ran >> "$MARKER"; exec cat')


# --- PROXY headers at a real server -------------------------------------------


def v1_header(rng: random.Random) -> bytes:
    family = rng.choice(["TCP4", "TCP6", "UNKNOWN"])
    if family == "UNKNOWN":
        return b"PROXY UNKNOWN" + rng.choice([b"", b" anything at all"]) + b"\r\n"
    bits = 32 if family == "TCP4" else 128
    make = ipaddress.IPv4Address if family == "TCP4" else ipaddress.IPv6Address
    src, dst = make(rng.getrandbits(bits)), make(rng.getrandbits(bits))
    ports = rng.randrange(65536), rng.randrange(65536)
    return f"PROXY {family} {src} {dst} {ports[0]} {ports[1]}\r\n".encode()


def v2_header(rng: random.Random) -> bytes:
    command = rng.choice([0x20, 0x21])  # LOCAL, PROXY
    family, size = rng.choice([(0x11, 12), (0x21, 36), (0x31, 216), (0x00, 0), (0x12, 12)])
    body = rng.randbytes(size)
    for _ in range(rng.randint(0, 3)):
        value = rng.randbytes(rng.randint(0, 40))
        body += bytes([rng.randrange(256)]) + len(value).to_bytes(2, "big") + value
    return V2_SIGNATURE + bytes([command, family]) + len(body).to_bytes(2, "big") + body


def proxy_input(rng: random.Random) -> bytes:
    draw = rng.random()
    valid = v1_header(rng) if rng.random() < 0.5 else v2_header(rng)
    if draw < 0.35:
        return valid
    if draw < 0.85:
        return mutate(rng, valid)
    return rng.randbytes(rng.randint(0, 120))


def expected(header: bytes) -> str | None:
    """'served' for a complete valid header, 'dropped' for an invalid one, None if it depends
    on the bytes that follow (a header still incomplete, or one with bytes after it)."""
    try:
        result = parse(header)
    except ProxyError:
        return "dropped"
    if isinstance(result, Header) and result.length == len(header):
        return "served"
    return None


def proxied_session(port: int, header: bytes, ctx: ssl.SSLContext) -> str:
    """Send header then a TLS session echoing 'ping'; 'served' if it echoed, else 'dropped'."""
    with probes.raw_connect(port, timeout=10) as sock:
        try:
            sock.sendall(header)
            tls = probes.BioClient(sock, ctx)
            tls.handshake()
            tls.send(b"ping")
            sock.shutdown(socket.SHUT_WR)
            data, _ = tls.read_all()
        except (OSError, ssl.SSLError):
            return "dropped"
    assert data == b"ping", data
    return "served"


def test_proxy_headers_at_a_real_server(server):
    srv = server("-H", "-L", "-K", "1000", "127.0.0.1", "0", "/bin/cat")
    idle = observe.idle(srv.pid)
    ctx = client.context()
    headers = [proxy_input(random.Random(n)) for n in range(300)]

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda h: proxied_session(srv.port, h, ctx), headers))

    wrong = [
        (h, want, got)
        for h, got in zip(headers, outcomes, strict=True)
        if (want := expected(h)) is not None and want != got
    ]
    assert not wrong, wrong[:5]
    tally = Counter(outcomes)
    assert tally["served"] >= 50 and tally["dropped"] >= 50, tally
    assert srv.proc.poll() is None
    end = observe.settle(srv.pid, idle)
    assert (end.fds, end.children) == (idle.fds, idle.children), end.describe()
    assert "Traceback" not in srv.log()


# --- rules readers, in a child process --------------------------------------------


def run_fuzzer(kind: str, count: int, work: Path) -> dict[str, object]:
    """Run tests.reliability.fuzz_rules in a child process; its report."""
    argv = [sys.executable, "-m", "tests.reliability.fuzz_rules", kind]
    proc = subprocess.run(
        [*argv, "--count", str(count), "--work", str(work)],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, f"the fuzzer died ({proc.returncode}): {proc.stderr[-3000:]}"
    report: dict[str, object] = json.loads(proc.stdout)
    return report


def scratch_dir(tmp_path: Path) -> tempfile.TemporaryDirectory[str]:
    """Where to build thousands of small trees: tmpfs if there is one, for speed."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.TemporaryDirectory(prefix="s6tls-fuzz-", dir=base or tmp_path)


def test_cdb_reader_fails_closed(tmp_path):
    with scratch_dir(tmp_path) as work:
        report = run_fuzzer("cdb", 10_000, Path(work))
    assert report["unexpected"] == [], report
    outcomes = report["outcomes"]
    assert isinstance(outcomes, dict)
    # Both kinds of answer happened: the inputs reached past the first check.
    assert outcomes["result"] > 1000 and outcomes["RulesError"] > 1000, outcomes
    assert report["inputs"] == 20_000 + 5


def test_rules_directory_reader_fails_closed(tmp_path):
    with scratch_dir(tmp_path) as work:
        report = run_fuzzer("dirs", 10_000, Path(work))
    assert report["unexpected"] == [], report
    outcomes = report["outcomes"]
    assert isinstance(outcomes, dict)
    assert outcomes["result"] > 1000 and outcomes["RulesError"] > 1000, outcomes
    assert report["inputs"] == 30_000


# --- random bytes at the TLS port --------------------------------------------------


def noise(port: int, n: int) -> None:
    """Send random bytes of a random length, sometimes behind a TLS record header, and close."""
    rng = random.Random(n)
    size = rng.choice([0, 1, 5, rng.randint(0, 100), rng.randint(0, 20_000)])
    data = rng.randbytes(size)
    if size >= 5 and rng.random() < 0.3:
        data = b"\x16\x03" + bytes([rng.randrange(5)]) + data[3:]
    sock = probes.raw_connect(port)
    try:
        sock.sendall(data)
        if n % 25 == 0 and not data.startswith(b"\x16"):
            assert probes.wait_closed(sock, 10) is not None, "the server kept a garbage connection"
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server already gave up on us
    if rng.random() < 0.5:
        probes.reset(sock)
    else:
        sock.close()


def test_random_bytes_at_the_tls_port(server, pki, tmp_path):
    marker = tmp_path / "prog-ran"
    srv = server(
        "-H",
        "-K",
        "2000",
        "-c",
        "100",
        "-C",
        "100",
        "127.0.0.1",
        "0",
        *MARKING_CAT,
        env={**pki.env(), "MARKER": str(marker)},
    )
    idle = observe.idle(srv.pid)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: noise(srv.port, n), range(1000)))
    assert srv.proc.poll() is None
    end = observe.settle(srv.pid, idle)
    assert (end.fds, end.children) == (idle.fds, idle.children), end.describe()
    assert not marker.exists(), "prog started for random bytes"
    assert "Traceback" not in srv.log()
    # The marker works: a real client starts prog.
    with client.connect(srv.port) as s:
        s.sendall(b"x")
        assert s.recv(1) == b"x"
    assert marker.read_text() == "ran\n"
