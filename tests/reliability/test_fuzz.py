"""Fuzzing: random and mutated PROXY headers at a real -L server, rules files and
directories at the readers, random bytes at the TLS port, cut, mutated and
oversized ClientHellos at a server with ALPN.

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
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from s6tls.proxy import Header, ProxyError, parse
from tests.reliability import observe
from tests.reliability.fuzz_rules import mutate
from tests.support import client, probes
from tests.support.server import wait_for

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


# --- ClientHellos at a server with ALPN --------------------------------------------

ALPN = "h2,http/1.1"
LIMIT = 65536  # what the server's ClientHello reader looks at (s6tls.clienthello)
# What Python's ssl offers in each real ClientHello: ALPN (None: no extension),
# SNI, TLS 1.2 at most.
HELLOS = [
    (("h2",), None, False),
    (("x", "http/1.1"), "a.test", False),
    (("imap", "smtp"), None, False),
    (None, "b.test", False),
    (("h2",), None, True),
    (("spdy/3",), "c.test", True),
]


HELLO_KINDS = ["records", "trailing", "padded", "oversized", "truncated", "ccs", "length", "flip"]
HELLO_KINDS += ["random"]


def first_flight(alpn: tuple[str, ...] | None, sni: str | None, tls12: bool) -> bytes:
    """A real ClientHello: what a Python ssl client sends first (one record)."""
    ctx = client.context(version=ssl.TLSVersion.TLSv1_2 if tls12 else None)
    if alpn is not None:
        ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    flight = outgoing.read()
    assert flight[0] == 22 and len(flight) == 5 + int.from_bytes(flight[3:5], "big")
    return flight


def served(alpn: tuple[str, ...] | None) -> str:
    """What the server answers a whole, valid ClientHello with this offer."""
    return "hello" if alpn is None or {"h2", "http/1.1"} & set(alpn) else "alert120"


def length_fields(message: bytes) -> list[tuple[int, int]]:
    """Offset and size of each length field of a ClientHello message (type,
    length, body): its own, the vectors', each extension's, and those inside
    the SNI and ALPN extensions."""
    fields = [(1, 3)]
    pos = 4 + 2 + 32
    for size in (1, 2, 1):  # session id, cipher suites, compression methods
        fields.append((pos, size))
        pos += size + int.from_bytes(message[pos : pos + size], "big")
    fields.append((pos, 2))
    pos += 2
    while pos + 4 <= len(message):
        kind = int.from_bytes(message[pos : pos + 2], "big")
        fields.append((pos + 2, 2))
        if kind == 0:  # server_name: list, type, name
            fields += [(pos + 4, 2), (pos + 7, 2)]
        elif kind == 16:  # ALPN: list, first name
            fields += [(pos + 4, 2), (pos + 6, 1)]
        pos += 4 + int.from_bytes(message[pos + 2 : pos + 4], "big")
    return fields


def in_records(message: bytes, rng: random.Random, largest: int = 1 << 14) -> list[bytes]:
    """A handshake message in records of random sizes up to largest."""
    out = []
    while message:
        size = rng.randint(1, largest)
        chunk, message = message[:size], message[size:]
        version = rng.choice([b"\x03\x01", b"\x03\x03"])
        out.append(b"\x16" + version + len(chunk).to_bytes(2, "big") + chunk)
    return out


def padded(message: bytes, size: int) -> bytes:
    """The ClientHello with size more zero bytes of padding (extension 21, which
    OpenSSL's own ClientHello may already have)."""
    pos = 4 + 2 + 32
    for length in (1, 2, 1):
        pos += length + int.from_bytes(message[pos : pos + length], "big")
    extensions = message[pos + 2 :]
    at = 0
    while at < len(extensions) and extensions[at : at + 2] != b"\x00\x15":
        at += 4 + int.from_bytes(extensions[at + 2 : at + 4], "big")
    if at == len(extensions):
        extensions += b"\x00\x15\x00\x00"
    old = int.from_bytes(extensions[at + 2 : at + 4], "big")
    extensions = (
        extensions[: at + 2]
        + (old + size).to_bytes(2, "big")
        + bytes(old + size)
        + extensions[at + 4 + old :]
    )
    body = message[4:pos] + len(extensions).to_bytes(2, "big") + extensions
    return b"\x01" + len(body).to_bytes(3, "big") + body


def hello_input(n: int, flights: list[bytes]) -> tuple[str, str | None, list[bytes]]:
    """Input n: its kind, what the server must answer (None: anything but a crash),
    and the bytes, in the pieces to send them in."""
    rng = random.Random(n)
    which = rng.randrange(len(HELLOS))
    alpn = HELLOS[which][0]
    flight = flights[which]
    message = flight[5:]
    kind = rng.choice(HELLO_KINDS)
    expect: str | None = None
    if kind == "records":  # valid: the message over many records, many segments
        pieces = in_records(message, rng, rng.choice([1, 7, 100, 1 << 14]))
        expect = served(alpn)
    elif kind == "trailing":  # valid, and a fatal alert or early data behind it
        after = rng.choice(
            [bytes.fromhex("15030300020228"), bytes.fromhex("1703030005") + bytes(5)]
        )
        pieces = [*in_records(message, rng, 300), after]
        expect = served(alpn)
    elif kind == "padded":  # still under the reader's limit
        pieces = in_records(padded(message, rng.randint(1, 40_000)), rng)
        expect = served(alpn)
    elif kind == "oversized":  # past the limit: refused whatever it offers
        at = length_fields(message)[4][0]  # the extensions' length
        # As much as the extensions' 2-byte length allows, a new extension's header included.
        room = 0xFFFF - int.from_bytes(message[at : at + 2], "big") - 4
        pieces = in_records(padded(message, room), rng)
        assert sum(map(len, pieces)) > LIMIT
        expect = "alert120"
    elif kind == "truncated":  # cut short, then EOF
        pieces = in_records(message, rng, rng.choice([5, 200, 1 << 14]))
        data = b"".join(pieces)
        pieces = [data[: rng.randrange(1, len(data))]]
        expect = "refused"
    elif kind == "ccs":  # a ChangeCipherSpec in the middle of the message
        pieces = in_records(message, rng, len(message) // 2)
        pieces.insert(1, bytes.fromhex("140303000101"))
        expect = "refused"
    elif kind == "length":  # one length field made wrong
        offset, size = rng.choice([(3, 2), *((5 + o, s) for o, s in length_fields(message))])
        value = int.from_bytes(flight[offset : offset + size], "big")
        value = rng.choice([0, value - 1, value + 1, value + rng.randint(2, 300), 256**size - 1])
        value %= 256**size
        pieces = [flight[:offset] + value.to_bytes(size, "big") + flight[offset + size :]]
    elif kind == "flip":  # a few bytes changed anywhere
        data = bytearray(flight)
        for _ in range(rng.randint(1, 5)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        pieces = [bytes(data)]
    else:
        data = rng.randbytes(rng.choice([1, 5, rng.randint(6, 2000)]))
        if rng.random() < 0.5:
            data = b"\x16\x03\x01" + len(data).to_bytes(2, "big") + data
        pieces = [data]
    return kind, expect, pieces


def answer(port: int, pieces: list[bytes]) -> str:
    """Send the pieces (one segment or more each), then EOF; how the server answered:
    'hello' (a ServerHello), 'alert120', 'alert' (another), or 'closed' (nothing)."""
    data = b""
    with probes.raw_connect(port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # A server that refuses before the last piece may reset the connection
        # (it closed with bytes unread): sending then fails (EPIPE, ECONNRESET,
        # or ENOTCONN for the shutdown), and what it answered may still be read.
        try:
            for piece in pieces:
                sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except OSError:
            pass
    if data[:1] == b"\x16" and data[5:6] == b"\x02":
        return "hello"
    if data[:1] == b"\x15":
        return "alert120" if data[6:7] == b"\x78" else "alert"
    return "closed"


def quiet(srv) -> observe.Snapshot:
    """What the server holds once no session is left: no prog, and the same
    descriptors and children over a few looks in a row."""
    assert wait_for(lambda: not srv.progs())
    looks = [observe.snapshot(srv.pid)]
    for _ in range(50):
        time.sleep(0.05)
        looks.append(observe.snapshot(srv.pid))
        if len(looks) >= 4 and len({(str(s.fds), s.children) for s in looks[-4:]}) == 1:
            return looks[-1]
    raise AssertionError(f"the server does not settle: {looks[-1].describe()}")


@pytest.mark.both_engines
def test_client_hellos_at_a_server_with_alpn(server, pki, tmp_path):
    """Valid hellos cut every way are served (or refused with alert 120 when
    they offer nothing in common); hellos past the reader's limit, truncated or
    broken are refused; nothing crashes, nothing leaks, prog never runs."""
    marker = tmp_path / "prog-ran"
    env = {**pki.env(), "ALPN": ALPN, "MARKER": str(marker)}
    srv = server("-H", "-K", "2000", "127.0.0.1", "0", *MARKING_CAT, env=env)
    flights = [first_flight(*hello) for hello in HELLOS]
    with client.connect(srv.port) as s:  # with TLS_UID, the helper starts now
        s.sendall(b"x")
        assert s.recv(1) == b"x"
    idle = quiet(srv)
    marker.unlink()
    inputs = [hello_input(n, flights) for n in range(500)]
    started = time.monotonic()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: answer(srv.port, i[2]), inputs))

    elapsed = time.monotonic() - started
    wrong = [
        (n, kind, want, got)
        for n, ((kind, want, _), got) in enumerate(zip(inputs, answers, strict=True))
        if want is not None and got != want and not (want == "refused" and got != "hello")
    ]
    assert not wrong, wrong[:10]
    tally = Counter(zip((kind for kind, _, _ in inputs), answers, strict=True))
    assert tally[("records", "hello")] and tally[("oversized", "alert120")], tally
    assert srv.proc.poll() is None
    end = observe.settle(srv.pid, idle)
    assert (end.fds, end.children) == (idle.fds, idle.children), end.describe()
    assert not marker.exists(), "prog started without a handshake"
    assert "Traceback" not in srv.log()
    assert elapsed < 20, elapsed
    # The next good client is served, and negotiates.
    ctx = client.context()
    ctx.set_alpn_protocols(["http/1.1"])
    with client.connect(srv.port, ctx=ctx) as s:
        assert s.selected_alpn_protocol() == "http/1.1"
        s.sendall(b"x")
        assert s.recv(1) == b"x"
    assert marker.read_text() == "ran\n"
