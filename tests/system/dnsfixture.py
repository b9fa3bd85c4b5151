"""Name and IDENT servers on loopback for the names tests: dnsmasq, oidentd and silent ones.

Resolvers are named by IP only (DNSCACHEIP, port 53), so every server gets
its own loopback address in 127.53.0.0/16, chosen per test run and checked
free. Binding port 53 or 113 needs root.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

DNSMASQ = "/usr/sbin/dnsmasq"
OIDENTD = "/usr/sbin/oidentd"
START_TIMEOUT = 5.0


def free_loopback_address(port: int, taken: set[str] | None = None) -> str:
    """A 127.53.x.y address where nothing is bound to `port`, UDP or TCP."""
    rng = random.Random()
    for _ in range(200):
        address = f"127.53.{rng.randrange(1, 255)}.{rng.randrange(1, 255)}"
        if taken is not None and address in taken:
            continue
        try:
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(socket.AF_INET, kind) as probe:
                    probe.bind((address, port))
        except OSError:
            continue
        if taken is not None:
            taken.add(address)
        return address
    raise RuntimeError(f"no free loopback address for port {port}")


@contextmanager
def daemon(
    argv: list[str], log: Path, ready: Callable[[], bool]
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `argv` in the foreground with its output in `log`; stop it by pid at the end."""
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not ready():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} did not start: {log.read_text(errors='replace')}")
            time.sleep(0.02)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _answers(address: str) -> bool:
    query = dns.message.make_query("ready.invalid.", dns.rdatatype.A)
    try:
        dns.query.udp(query, address, timeout=0.2)
    except (OSError, dns.exception.DNSException):
        return False
    return True


def _accepts(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=0.2).close()
    except OSError:
        return False
    return True


@contextmanager
def dnsmasq(address: str, records: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """dnsmasq answering on `address`:53 from `records` (its options) only; queries go to `log`.

    It answers TCP queries in forked children, so a log line from another pid
    than the main one is a TCP query.
    Names in the zones of `records` that it does not know get NXDOMAIN, other
    names REFUSED (it has no upstream server).
    """
    argv = [
        DNSMASQ,
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        f"--listen-address={address}",
        "--port=53",
        "--user=root",
        "--pid-file=",
        "--log-queries",
        "--log-facility=-",
        *records,
    ]
    with daemon(argv, log, lambda: _answers(address)) as process:
        yield process


@contextmanager
def oidentd(address: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """oidentd answering IDENT queries on `address`:113, logging to `log`."""
    argv = [OIDENTD, "--foreground", "--nosyslog", "--debug", "-a", address, "-p", "113"]
    with daemon(argv, log, lambda: _accepts(address, 113)) as process:
        yield process


class SilentResolver:
    """A UDP socket bound to `address`:53 that never answers but keeps what it receives."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 53))

    def queries(self) -> list[tuple[str, str]]:
        """The (name, type) of each query received since the last call."""
        found: list[tuple[str, str]] = []
        while True:
            try:
                packet = self.sock.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return found
            question = dns.message.from_wire(packet).question[0]
            found.append((question.name.to_text(), dns.rdatatype.to_text(question.rdtype)))

    def close(self) -> None:
        self.sock.close()


class SilentIdent:
    """A TCP socket listening on `address`:113 that never accepts nor answers."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((address, 113))
        self.sock.listen(16)

    def close(self) -> None:
        self.sock.close()
