"""Good echo sessions through /bin/cat: random payloads of random sizes, checked byte for byte.

A client sends its payload, half-closes with a bare FIN (the TLS state
survives it) and reads to EOF; what came back must be the payload. A
session that a fault is allowed to cut must still never deliver a byte that
was not sent: what came back is then a prefix of the payload.
"""

from __future__ import annotations

import functools
import os
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tests.support import client, probes

KIB = 1 << 10
MIB = 1 << 20
# Payloads are slices of one random pool, taken at random offsets.
POOL_SIZE = 16 * MIB
# Cleartext handed to TLS at a time, and ciphertext allowed to wait for the socket.
CHUNK = 64 * KIB
HIGH_WATER = 256 * KIB
RECV_SIZE = 256 * KIB


@functools.cache
def pool() -> bytes:
    """Random bytes, made once per process."""
    return os.urandom(POOL_SIZE)


def payload(rng: random.Random, size: int) -> memoryview:
    """size random bytes from a random place in the pool (no copy)."""
    start = rng.randrange(POOL_SIZE - size + 1)
    return memoryview(pool())[start : start + size]


def soak_size(rng: random.Random) -> int:
    """A size for the soak: mostly up to 256 KiB, many tiny, one in a hundred up to 4 MiB."""
    draw = rng.random()
    if draw < 0.01:
        return rng.randint(256 * KIB, 4 * MIB)
    if draw < 0.30:
        return rng.randint(0, KIB)
    return rng.randint(0, 256 * KIB)


@dataclass
class Exchange:
    """What one session sent and got back, and the error that ended it early, if any."""

    sent: memoryview
    received: bytes
    error: str | None

    @property
    def verified(self) -> bool:
        return self.error is None and self.received == self.sent

    @property
    def cut(self) -> bool:
        """Ended early or with an error, having delivered only bytes that were sent, in order."""
        n = len(self.received)
        return not self.verified and n <= len(self.sent) and self.sent[:n] == self.received

    def describe(self) -> str:
        return f"sent {len(self.sent)} got {len(self.received)} error {self.error}"


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def exchange(
    port: int,
    data: memoryview,
    *,
    ctx: ssl.SSLContext,
    source: str | None = None,
    timeout: float = 60.0,
) -> Exchange:
    """Run one echo session: send data, bare FIN, read to EOF; an error ends it early."""
    received = bytearray()
    error = None
    try:
        sock = probes.raw_connect(port, source=source, timeout=timeout)
    except OSError as e:
        return Exchange(data, b"", f"connect: {_describe(e)}")
    with sock:
        try:
            _duplex(sock, ctx, data, received, timeout)
        except OSError as e:  # ssl.SSLError and TimeoutError included
            error = _describe(e)
    return Exchange(data, bytes(received), error)


def _duplex(
    sock: socket.socket, ctx: ssl.SSLContext, data: memoryview, received: bytearray, timeout: float
) -> None:
    """TLS over memory BIOs, both directions from one thread.

    An SSLSocket read in one thread and written in another is one OpenSSL
    object used concurrently, which OpenSSL does not allow; this loop never
    does that, so what it reports is what the server did.
    """
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            if outgoing.pending:
                sock.sendall(outgoing.read())
            chunk = sock.recv(RECV_SIZE)
            if not chunk:
                raise ConnectionError("EOF during the handshake") from None
            incoming.write(chunk)
    sock.setblocking(False)
    deadline = time.monotonic() + timeout
    wire = bytearray()  # ciphertext not yet sent
    sent = 0
    fin = eof = False
    while not (fin and eof):
        while sent < len(data) and len(wire) + outgoing.pending < HIGH_WATER:
            sent += tls.write(data[sent : sent + CHUNK])
        wire += outgoing.read()
        if not fin and not wire and sent == len(data):
            sock.shutdown(socket.SHUT_WR)  # a bare FIN: no close_notify
            fin = True
        left = deadline - time.monotonic()
        readable, writable, _ = select.select(
            [] if eof else [sock], [sock] if wire else [], [], max(left, 0)
        )
        if not readable and not writable:
            raise TimeoutError(f"no progress in {timeout} s")
        if writable:
            del wire[: sock.send(wire)]
        if readable:
            chunk = sock.recv(RECV_SIZE)
            if chunk:
                incoming.write(chunk)
            else:
                incoming.write_eof()
            eof = _drain(tls, received)


def _drain(tls: ssl.SSLObject, received: bytearray) -> bool:
    """Move decrypted bytes into received; True once the server's end was read."""
    while True:
        try:
            got = tls.read(RECV_SIZE)
        except ssl.SSLWantReadError:
            return False
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return True  # close_notify, or the bare FIN that ends an -s session
        if not got:
            return True
        received += got


@dataclass
class Tally:
    """Outcomes of many sessions."""

    verified: int = 0
    cut: int = 0
    bytes: int = 0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, ex: Exchange, allow_cuts: bool = False) -> None:
        with self.lock:
            if ex.verified:
                self.verified += 1
                self.bytes += len(ex.sent)
            elif allow_cuts and ex.cut:
                self.cut += 1
            else:
                self.failures.append(ex.describe())

    @property
    def sessions(self) -> int:
        return self.verified + self.cut + len(self.failures)


def run_sessions(
    port: int,
    count: int,
    concurrency: int,
    seed: int,
    *,
    size: Callable[[random.Random], int] = soak_size,
    progress: Callable[[Tally], None] | None = None,
) -> Tally:
    """count echo sessions of random payloads (soak-sized by default), concurrency at a time."""
    ctx = client.context()
    tally = Tally()

    def one(i: int) -> None:
        rng = random.Random(seed * 1_000_003 + i)
        tally.add(exchange(port, payload(rng, size(rng)), ctx=ctx))
        if progress is not None and (i + 1) % 10_000 == 0:
            progress(tally)

    with ThreadPoolExecutor(concurrency) as pool_:
        for _ in pool_.map(one, range(count)):
            pass
    return tally


class Load:
    """Good echo sessions that a few threads run back to back until stopped.

    Used as a context manager around a fault: every session it ran is in
    ``tally``, and ``check()`` says whether all of them verified (or, with
    ``allow_cuts``, were at worst cut cleanly).
    """

    def __init__(
        self,
        port: int,
        *,
        threads: int = 3,
        max_size: int = 128 * KIB,
        source: str = "127.0.0.1",
        allow_cuts: bool = False,
        timeout: float = 30.0,
    ) -> None:
        self.port = port
        self.max_size = max_size
        self.source = source
        self.allow_cuts = allow_cuts
        self.timeout = timeout
        self.tally = Tally()
        self._stop = threading.Event()
        self._ctx = client.context()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)
        ]

    def _run(self, n: int) -> None:
        rng = random.Random(n)
        while not self._stop.is_set():
            data = payload(rng, rng.randint(0, self.max_size))
            ex = exchange(self.port, data, ctx=self._ctx, source=self.source, timeout=self.timeout)
            self.tally.add(ex, self.allow_cuts)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)

    @property
    def done(self) -> int:
        return self.tally.sessions

    def progress(self, more: int = 1, timeout: float = 20.0) -> bool:
        """Wait until the load completes more sessions; False if it stalls."""
        target = self.done + more
        deadline = time.monotonic() + timeout
        while self.done < target:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def check(self) -> None:
        """Stop, then assert every session verified (or was cut cleanly, if allowed)."""
        self.stop()
        assert not self.tally.failures, self.tally.failures[:5]
        assert self.tally.verified > 0
