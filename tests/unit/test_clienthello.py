"""Tests for the ClientHello reader and the ALPN choice (s6tls.clienthello)."""

from __future__ import annotations

import functools
import hashlib
import random
import ssl
import time

import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from s6tls.clienthello import (
    MAX_HELLO_BYTES,
    AlpnListError,
    ClientHello,
    ClientHelloError,
    parse_alpn_list,
    read_client_hello,
    select_alpn,
)
from s6tls.errors import UsageError

PROPERTY = settings(max_examples=1000, deadline=None, database=None)
ROUND_TRIP = settings(max_examples=300, deadline=None, database=None)
CCS = bytes.fromhex("140303000101")
# ServerHello.random of a HelloRetryRequest (RFC 8446 §4.1.3).
HRR_RANDOM = hashlib.sha256(b"HelloRetryRequest").digest()
TLS13 = 0x0304


# --- real ClientHellos, from Python's ssl over memory BIOs ---------------------


def pump(tls: ssl.SSLObject, outgoing: ssl.MemoryBIO) -> bytes:
    """Run one side of a handshake as far as it goes; return what it sent."""
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def client(
    alpn: list[str] | None, sni: str | None, tls12: bool = False
) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    return context.wrap_bio(incoming, outgoing, server_hostname=sni), incoming, outgoing


@functools.cache
def real_hello(alpn: tuple[str, ...] | None, sni: str | None, tls12: bool = False) -> bytes:
    """The bytes a Python ssl client sends first."""
    tls, _, outgoing = client(list(alpn) if alpn else None, sni, tls12)
    return pump(tls, outgoing)


@functools.cache
def retried_stream() -> tuple[bytes, bytes]:
    """A real HelloRetryRequest: the server takes only a group the client sent no
    key share for. Return the client's two flights (ClientHello; CCS, ClientHello)."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    trustme.CA().issue_cert("example.org").configure_cert(server_context)
    server_context.set_ecdh_curve("secp384r1")
    s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = server_context.wrap_bio(s_in, s_out, server_side=True)
    tls, c_in, c_out = client(["h2", "http/1.1"], "example.org")
    first = pump(tls, c_out)
    s_in.write(first)
    retry = pump(server, s_out)
    assert retry[0] == 22 and retry[5] == 2 and retry[11:43] == HRR_RANDOM
    c_in.write(retry)
    return first, pump(tls, c_out)


ALPN = ("h2", "http/1.1")
HELLOS = [
    real_hello(alpn, sni, tls12)
    for alpn in (None, ALPN)
    for sni in (None, "example.org")
    for tls12 in (False, True)
]


@pytest.mark.parametrize("tls12", [False, True], ids=["tls13", "tls12"])
@pytest.mark.parametrize("sni", [None, "example.org", "xn--bcher-kva.example"])
@pytest.mark.parametrize("alpn", [None, ("h2",), ("h2", "http/1.1"), ("http/1.1", "h2", "x")])
def test_real_hello(alpn: tuple[str, ...] | None, sni: str | None, tls12: bool) -> None:
    data = real_hello(alpn, sni, tls12)
    hello = read_client_hello(data)
    assert hello is not None
    assert hello.alpn == (None if alpn is None else tuple(a.encode() for a in alpn))
    assert hello.server_name == (None if sni is None else sni.encode())
    assert (hello.legacy_version, hello.end) == (0x0303, len(data))
    if tls12:
        assert hello.supported_versions is None
    else:
        assert hello.supported_versions is not None and TLS13 in hello.supported_versions


def test_real_hello_retry() -> None:
    first, second = retried_stream()
    assert second.startswith(CCS)
    stream = first + second
    one = read_client_hello(first)
    two = read_client_hello(stream)
    assert one is not None and two is not None
    assert one.end == len(first) and two.end == len(stream)
    assert (two.alpn, two.server_name) == ((b"h2", b"http/1.1"), b"example.org")
    # Until the second is complete, the first is the latest.
    for size in range(len(first), len(stream)):
        assert read_client_hello(stream[:size]) == one


def test_any_bytes_like() -> None:
    data = real_hello(ALPN, "example.org")
    hello = read_client_hello(data)
    assert hello is not None
    assert read_client_hello(bytearray(data)) == hello
    assert read_client_hello(memoryview(data)) == hello
    assert read_client_hello(memoryview(b"xx" + data)[2:]) == hello


def test_synthetic_hello_retry_gives_the_second() -> None:
    first = real_hello(("a", "b"), "one.example")
    second = real_hello(("c",), "two.example")
    for between in (b"", CCS, CCS * 3):
        hello = read_client_hello(first + between + second)
        assert hello is not None
        assert (hello.alpn, hello.server_name) == ((b"c",), b"two.example")


def test_early_data_then_a_retried_hello_gives_the_second() -> None:
    # 0-RTT data after the first ClientHello, then (the server having asked
    # for another key share) the second: the second's offer decides.
    first = real_hello(("a",), "one.example")
    second = real_hello(("c",), "two.example")
    early = bytes([23, 3, 3, 0, 40]) + bytes(40)
    for between in (early, early * 2 + CCS, CCS + early):
        hello = read_client_hello(first + between + second)
        assert hello is not None and hello.alpn == (b"c",), between
        assert read_client_hello(first + between) == read_client_hello(first)


# --- records and messages, built by hand ----------------------------------------


def vec(size: int, data: bytes) -> bytes:
    return len(data).to_bytes(size, "big") + data


def ext(kind: int, data: bytes) -> bytes:
    return kind.to_bytes(2, "big") + vec(2, data)


def sni_ext(*names: bytes, kind: int = 0) -> bytes:
    return ext(0, vec(2, b"".join(bytes([kind]) + vec(2, n) for n in names)))


def alpn_ext(*names: bytes) -> bytes:
    return ext(16, vec(2, b"".join(vec(1, n) for n in names)))


def hello_body(
    extensions: bytes | None = b"",
    session: bytes = bytes(32),
    suites: bytes = b"\x13\x01\x13\x02",
    compression: bytes = b"\x00",
) -> bytes:
    body = b"\x03\x03" + bytes(32) + vec(1, session) + vec(2, suites) + vec(1, compression)
    return body if extensions is None else body + vec(2, extensions)


def message(body: bytes, kind: int = 1) -> bytes:
    return bytes([kind]) + vec(3, body)


def record(body: bytes, kind: int = 22, version: int = 0x0301) -> bytes:
    return bytes([kind]) + version.to_bytes(2, "big") + vec(2, body)


def split_records(stream: bytes) -> list[tuple[int, bytes]]:
    """A well-framed stream's records as (type, body)."""
    out, pos = [], 0
    while pos < len(stream):
        length = int.from_bytes(stream[pos + 3 : pos + 5], "big")
        out.append((stream[pos], stream[pos + 5 : pos + 5 + length]))
        pos += 5 + length
    return out


def handshake_of(stream: bytes) -> bytes:
    return b"".join(body for kind, body in split_records(stream) if kind == 22)


def reframe(handshake: bytes, sizes: list[int]) -> bytes:
    """handshake bytes cut into records of the given sizes (the last takes the rest)."""
    out, pos = [], 0
    for size in sizes:
        if pos >= len(handshake):
            break
        out.append(record(handshake[pos : pos + size]))
        pos += size
    if pos < len(handshake):
        out.append(record(handshake[pos:]))
    return b"".join(out)


def facts(hello: ClientHello | None) -> tuple[object, ...]:
    assert hello is not None
    return hello.alpn, hello.server_name, hello.legacy_version, hello.supported_versions


def test_one_byte_records() -> None:
    data = real_hello(ALPN, "example.org")
    split = reframe(handshake_of(data), [1] * len(data))
    assert len(split) == 6 * (len(data) - 5)
    hello = read_client_hello(split)
    assert hello is not None and hello.end == len(split)
    assert facts(hello) == facts(read_client_hello(data))


def test_several_hellos_in_one_record() -> None:
    one = message(hello_body(alpn_ext(b"a")))
    two = message(hello_body(alpn_ext(b"b") + sni_ext(b"x.example")))
    hello = read_client_hello(record(one + two))
    assert facts(hello) == ((b"b",), b"x.example", 0x0303, None)


@pytest.mark.parametrize(
    "after",
    [
        record(b"\x17" * 40, kind=23),  # 0-RTT early data
        record(b"\x17" * 40, kind=23)[:3],
        CCS + record(b"early", kind=23),
        record(b"\x02\x0a", kind=21),  # an alert
        record(message(b"\x00" * 33, kind=16)),  # a TLS 1.2 ClientKeyExchange
        record(message(b"\x00" * 33, kind=16) + b"\xff\xff"),
        record(message(b"", kind=11))[:7],  # a Certificate, cut short
        CCS[:2],
        record(message(hello_body()))[:20],  # a hello, not complete
    ],
)
def test_what_follows_a_hello(after: bytes) -> None:
    data = real_hello(ALPN, "example.org")
    hello = read_client_hello(data + after)
    assert hello == read_client_hello(data)


def test_minimal_hellos() -> None:
    assert facts(read_client_hello(record(message(hello_body(None))))) == (None, None, 0x0303, None)
    assert facts(read_client_hello(record(message(hello_body(b""))))) == (None, None, 0x0303, None)
    data = record(message(hello_body(ext(43, vec(1, b"\x7a\x7a\x03\x04"))), kind=1), version=0x0303)
    assert facts(read_client_hello(data)) == (None, None, 0x0303, (0x7A7A, TLS13))


def test_unknown_extensions_skipped() -> None:
    extensions = ext(0xFAFA, b"") + alpn_ext(b"h2") + ext(51, b"\x00" * 100) + ext(21, bytes(9))
    assert facts(read_client_hello(record(message(hello_body(extensions)))))[0] == (b"h2",)


# --- size -----------------------------------------------------------------------

# X25519MLKEM768 (group 0x11EC): a 1184-byte ML-KEM key and a 32-byte X25519 one.
PQ_SHARE = ext(51, vec(2, b"\x11\xec" + vec(2, bytes(1216)) + b"\x00\x1d" + vec(2, bytes(32))))


def large_stream(size: int) -> bytes:
    """A ClientHello of about size bytes of handshake, in records of 2^14 bytes."""
    extensions = alpn_ext(b"h2") + sni_ext(b"big.example") + PQ_SHARE
    padding = max(0, size - len(message(hello_body(extensions))) - 4)
    hello = message(hello_body(extensions + ext(21, bytes(padding))))
    return reframe(hello, [1 << 14] * (len(hello) >> 14))


def test_post_quantum_key_share() -> None:
    data = large_stream(1800)
    assert 1800 <= len(data) < 1900
    assert facts(read_client_hello(data))[:2] == ((b"h2",), b"big.example")
    split = reframe(handshake_of(data), [1] * len(data))
    assert facts(read_client_hello(split))[:2] == ((b"h2",), b"big.example")


def test_largest_hello_within_the_default_limit() -> None:
    data = large_stream(MAX_HELLO_BYTES - 20)  # four records: exactly the limit
    assert len(data) == MAX_HELLO_BYTES
    hello = read_client_hello(data)
    assert hello is not None and hello.end == len(data)


def test_hello_past_the_default_limit() -> None:
    data = large_stream(MAX_HELLO_BYTES)
    with pytest.raises(ClientHelloError, match="past the 65536-byte limit"):
        read_client_hello(data)
    # Its first record's message header already tells: no need to wait for the rest.
    with pytest.raises(ClientHelloError, match="limit"):
        read_client_hello(data[: 5 + (1 << 14)])


def test_limit_never_reads_past() -> None:
    data = real_hello(ALPN, "example.org")
    hello = read_client_hello(data, limit=len(data))
    assert hello == read_client_hello(data)
    for tail in (b"\x00", b"\xff" * 100, CCS, data):
        assert read_client_hello(data + tail, limit=len(data)) == hello
    with pytest.raises(ClientHelloError, match=f"past the {len(data) - 1}-byte limit"):
        read_client_hello(data, limit=len(data) - 1)
    with pytest.raises(ClientHelloError, match="limit"):
        read_client_hello(data[:5], limit=len(data) - 1)  # the record header tells
    handshake = handshake_of(data)
    split = reframe(handshake, [100] * 10)
    # The message header tells, once its record is in, if the message alone is too long.
    assert read_client_hello(split[:110], limit=len(handshake) + 5) is None
    with pytest.raises(ClientHelloError, match="limit"):
        read_client_hello(split[:110], limit=len(handshake) + 4)
    assert read_client_hello(split[:-1], limit=len(split) - 1 + 5) is None
    with pytest.raises(ClientHelloError, match="limit"):
        read_client_hello(split[:-1] + b"\xff" * 5, limit=len(split) - 1)


def test_worst_case_time() -> None:
    """A limit's worth of one-byte records still takes a small fraction of a second."""
    hello = handshake_of(large_stream(MAX_HELLO_BYTES // 6 - 20))
    data = reframe(hello, [1] * len(hello))
    assert MAX_HELLO_BYTES - 200 < len(data) <= MAX_HELLO_BYTES
    start = time.perf_counter()
    assert read_client_hello(data) is not None
    assert read_client_hello(data[:-1]) is None
    longer = handshake_of(large_stream(MAX_HELLO_BYTES // 6 + 20))
    with pytest.raises(ClientHelloError, match="limit"):
        read_client_hello(reframe(longer, [1] * len(longer)))
    assert time.perf_counter() - start < 2


# --- malformed ------------------------------------------------------------------

GOOD = message(hello_body(alpn_ext(b"h2")))


def with_extensions(extensions: bytes) -> bytes:
    return record(message(hello_body(extensions)))


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"\x16\x03", None),
        (b"\x00", "not a TLS handshake record"),
        (b"GET / HTTP/1.1\r\n", "not a TLS handshake record"),
        (b"PROXY TCP4 ", "not a TLS handshake record"),
        (bytes.fromhex("802e0103010015"), "not a TLS handshake record"),  # SSLv2 format
        (record(GOOD, kind=23), "not a TLS handshake record"),
        (record(GOOD, kind=21), "not a TLS handshake record"),
        (record(GOOD, kind=24), "not a TLS handshake record"),
        (b"\x16\x02", "bad TLS record version"),
        (b"\x16\x04\x00\x00\x01", "bad TLS record version"),
        (record(b""), "bad TLS record length"),
        (record(bytes(16385)), "bad TLS record length"),
        (CCS, "unexpected ChangeCipherSpec"),
        (record(GOOD[:10]) + CCS + record(GOOD[10:]), "unexpected ChangeCipherSpec"),
        (record(GOOD) + record(b"\x01\x01", kind=20), "bad ChangeCipherSpec"),
        (record(GOOD) + record(b"\x02", kind=20), "bad ChangeCipherSpec"),
        (record(GOOD[:10]) + record(b"x", kind=23), "not a TLS handshake record"),
        (record(message(b"", kind=2)), "not a ClientHello"),
        (record(b"\x00"), "not a ClientHello"),
        (record(message(b"\x03\x03")), "ClientHello truncated"),
        (record(message(hello_body()[:60])), "ClientHello truncated"),
        (record(message(hello_body(session=bytes(33)))), "bad session id length"),
        (record(message(hello_body(suites=b""))), "bad cipher suites length"),
        (record(message(hello_body(suites=b"\x13\x01\x13"))), "bad cipher suites length"),
        (record(message(hello_body(compression=b""))), "bad compression methods length"),
        (record(message(hello_body(b"") + b"\x00")), "bytes after the ClientHello"),
        (record(message(hello_body(None) + b"\x00")), "ClientHello truncated"),
        (record(message(hello_body(b"\x00\x10\x00"))), "extensions truncated"),
        (record(message(hello_body(b"\x00\x10\x00\x05ab"))), "extensions truncated"),
        (record(message(hello_body(alpn_ext(b"a") * 2))), "extension 16 sent twice"),
        (with_extensions(ext(16, b"")), "extension 16 truncated"),
        (with_extensions(ext(16, b"\x00\x00")), "bad ALPN list length"),
        (with_extensions(ext(16, b"\x00\x01\x00")), "bad ALPN list length"),
        (with_extensions(ext(16, b"\x00\x02\x00\x00")), "bad ALPN protocol name length"),
        (with_extensions(ext(16, b"\x00\x03\x05ab")), "ALPN list truncated"),
        (with_extensions(ext(16, b"\x00\x02\x01a\x00")), "bytes after the extension 16"),
        (with_extensions(alpn_ext(b"a", b"")), "bad ALPN protocol name length"),
        (with_extensions(ext(0, b"\x00\x00")), "bad server name list length"),
        (with_extensions(sni_ext(b"a", b"b")), "bytes after the server name list"),
        (with_extensions(sni_ext(b"a", kind=1)), "server name not a host name"),
        (with_extensions(sni_ext(b"")), "bad server name length"),
        (with_extensions(sni_ext(b"a" * 256)), "bad server name length"),
        (with_extensions(sni_ext(b"a\x00b")), "NUL in server name"),
        (with_extensions(ext(0, b"\x00\x04\x00\x00\x05a")), "server name list truncated"),
        (record(message(hello_body(sni_ext(b"a") * 2))), "extension 0 sent twice"),
        (with_extensions(ext(43, b"\x00")), "bad supported versions length"),
        (with_extensions(ext(43, b"\x03\x03\x04\x03")), "bad supported versions length"),
        (with_extensions(ext(43, b"\x04\x03\x04")), "extension 43 truncated"),
    ],
)
def test_malformed(data: bytes, error: str | None) -> None:
    if error is None:
        assert read_client_hello(data) is None
        return
    with pytest.raises(ClientHelloError) as caught:
        read_client_hello(data)
    assert str(caught.value) == error
    assert isinstance(caught.value, ValueError)


def test_sni_of_255_bytes() -> None:
    name = b"a" * 255
    assert facts(read_client_hello(record(message(hello_body(sni_ext(name))))))[1] == name


# --- growing buffers and re-fragmentation ----------------------------------------


def expected_growth(stream: bytes) -> list[tuple[int, ClientHello]]:
    """(end, hello) of each ClientHello in a well-framed stream, by splitting it."""
    out, pos, hs = [], 0, b""
    for kind, body in split_records(stream):
        pos += 5 + len(body)
        if kind != 22:
            continue
        hs += body
        while len(hs) >= 4 and len(hs) >= 4 + int.from_bytes(hs[1:4], "big"):
            size = 4 + int.from_bytes(hs[1:4], "big")
            hello = read_client_hello(record(hs[:size]))
            assert hello is not None
            out.append((pos, hello))
            hs = hs[size:]
    return out


def check_prefix_of_valid(stream: bytes, size: int, ends: list[tuple[int, ClientHello]]) -> None:
    """A prefix of a valid stream gives None before the first hello, then the latest one."""
    result = read_client_hello(stream[:size])
    done = [(end, hello) for end, hello in ends if end <= size]
    if not done:
        assert result is None
    else:
        end, hello = done[-1]
        assert result is not None and result.end == end and facts(result) == facts(hello)


def check_growth(stream: bytes) -> None:
    ends = expected_growth(stream)
    assert ends
    for size in range(len(stream) + 1):
        check_prefix_of_valid(stream, size, ends)


@pytest.mark.parametrize("data", HELLOS)
def test_byte_by_byte(data: bytes) -> None:
    check_growth(data)


def test_byte_by_byte_retry() -> None:
    check_growth(b"".join(retried_stream()))


randoms = st.integers(0, 2**64 - 1).map(random.Random)


@ROUND_TRIP
@given(randoms)
def test_refragmented(rng: random.Random) -> None:
    first, second = retried_stream()
    stream = rng.choice([*HELLOS, first + second])
    top = rng.choice([2, 20, 300, 1 << 14])
    parts = []
    for kind, body in split_records(stream):
        if kind == 22:
            parts.append(reframe(body, [rng.randint(1, top) for _ in range(len(body))]))
        else:
            parts.append(record(body, kind=kind))
    split = b"".join(parts)
    hello = read_client_hello(split)
    assert hello is not None and hello.end == len(split)
    assert facts(hello) == facts(read_client_hello(stream))
    ends = expected_growth(split)
    for size in rng.sample(range(len(split)), 20):
        check_prefix_of_valid(split, size, ends)


# --- fuzz -----------------------------------------------------------------------


def outcome(data: bytes, limit: int = MAX_HELLO_BYTES) -> ClientHello | str | None:
    try:
        return read_client_hello(data, limit)
    except ClientHelloError as e:
        assert str(e) and "\n" not in str(e)
        return f"error: {e}"


def check(data: bytes, limit: int = MAX_HELLO_BYTES) -> ClientHello | str | None:
    """Only None, a hello or ClientHelloError; a hello repeats on the bytes up to its end."""
    result = outcome(data, limit)
    if isinstance(result, ClientHello):
        assert 0 < result.end <= min(len(data), limit)
        assert read_client_hello(data[: result.end], limit) == result
    return result


def check_prefix(data: bytes, size: int, final: ClientHello | str | None) -> None:
    """A prefix agrees with the whole: once refused, refused for good."""
    result = outcome(data[:size])
    if isinstance(result, str):
        assert isinstance(final, str)
    elif isinstance(result, ClientHello):
        assert final is not None
        if isinstance(final, ClientHello):
            assert result.end <= final.end


def mutate(rng: random.Random, data: bytes) -> bytes:
    """A few bits flipped, bytes changed, inserted, deleted, lengths edited, or a cut."""
    out = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        pos = rng.randrange(len(out) + 1)
        op = rng.choice(["flip", "replace", "insert", "delete", "length", "truncate"])
        if op == "insert":
            out.insert(pos, rng.choice([0, 1, 3, 0x16, 0xFF, rng.randrange(256)]))
        elif pos >= len(out) - 1:
            continue
        elif op == "flip":
            out[pos] ^= 1 << rng.randrange(8)
        elif op == "replace":
            out[pos] = rng.randrange(256)
        elif op == "delete":
            del out[pos]
        elif op == "length":
            # Read two bytes as a length and make it a little or a lot wrong.
            value = int.from_bytes(out[pos : pos + 2], "big")
            value = rng.choice([0, 1, 0xFFFF, value - 1, value + 1, rng.randrange(0x10000)])
            out[pos : pos + 2] = (value % 0x10000).to_bytes(2, "big")
        else:
            del out[pos:]
    return bytes(out)


@PROPERTY
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    check(data)
    # Most random bytes fail at the first one: also try them behind a record header.
    check(b"\x16\x03\x01" + data)
    check(b"\x16\x03\x01" + len(data).to_bytes(2, "big") + b"\x01" + data)


@PROPERTY
@given(randoms)
def test_mutated_hellos(rng: random.Random) -> None:
    first, second = retried_stream()
    valid = rng.choice([*HELLOS, first + second, large_stream(2000)])
    data = mutate(rng, valid + rng.randbytes(rng.randrange(8)))
    limit = rng.choice([MAX_HELLO_BYTES, len(valid), rng.randrange(1, len(valid) + 10)])
    final = check(data, limit)
    if limit == MAX_HELLO_BYTES:
        for size in rng.sample(range(len(data)), min(3, len(data))):
            check_prefix(data, size, final)


# --- the ALPN setting and the choice --------------------------------------------


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("h2", ("h2",)),
        ("h2,http/1.1", ("h2", "http/1.1")),
        ("http/1.1,h2", ("http/1.1", "h2")),
        ("acme-tls/1", ("acme-tls/1",)),
        ("x" * 255, ("x" * 255,)),
        ("h2,h2", ("h2", "h2")),
    ],
)
def test_parse_alpn_list(text: str, names: tuple[str, ...]) -> None:
    assert parse_alpn_list(text) == names


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "ALPN: empty protocol list"),
        (",", "ALPN: empty protocol name"),
        ("h2,", "ALPN: empty protocol name"),
        (",h2", "ALPN: empty protocol name"),
        ("h2,,http/1.1", "ALPN: empty protocol name"),
        ("x" * 256, "ALPN: protocol name over 255 bytes"),
        ("h2,x" + "y" * 255, "ALPN: protocol name over 255 bytes"),
        ("h2, http/1.1", "ALPN: protocol name ' http/1.1' not printable ASCII"),
        ("h2\n", "ALPN: protocol name 'h2\\n' not printable ASCII"),
        ("h\u00e9", "ALPN: protocol name 'hé' not printable ASCII"),
        ("h2\x00", "ALPN: protocol name 'h2\\x00' not printable ASCII"),
    ],
)
def test_parse_alpn_list_errors(text: str, message: str) -> None:
    with pytest.raises(AlpnListError) as caught:
        parse_alpn_list(text)
    assert str(caught.value) == message
    assert isinstance(caught.value, UsageError) and caught.value.exitcode == 100


@pytest.mark.parametrize(
    ("ours", "offered", "chosen"),
    [
        (["h2", "http/1.1"], (b"http/1.1", b"h2"), "h2"),  # ours first, not the client's
        (["http/1.1", "h2"], (b"h2", b"http/1.1"), "http/1.1"),
        (["h2", "http/1.1"], (b"http/1.1",), "http/1.1"),
        (["h2"], (b"http/1.1", b"spdy/3"), None),
        (["h2"], (b"H2",), None),  # exact bytes
        (["h2"], None, None),
        ([], (b"h2",), None),
        ([b"h2", b"\xff"], (b"\xff",), b"\xff"),
        ([b"imap"], [b"pop3", b"imap"], b"imap"),
    ],
)
def test_select_alpn(
    ours: list[str] | list[bytes], offered: tuple[bytes, ...] | None, chosen: str | bytes | None
) -> None:
    assert select_alpn(ours, offered) == chosen


def test_select_alpn_with_a_real_offer() -> None:
    hello = read_client_hello(real_hello(("http/1.1", "h2"), "example.org"))
    assert hello is not None
    ours = parse_alpn_list("h2,http/1.1")
    assert select_alpn(ours, hello.alpn) == "h2"
    assert select_alpn(parse_alpn_list("imap"), hello.alpn) is None
    plain = read_client_hello(real_hello(None, "example.org"))
    assert plain is not None and select_alpn(ours, plain.alpn) is None
