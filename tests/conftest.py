"""Fixtures: a test PKI for the session, and servers started per test."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

import pytest

from tests.support.certs import Authority, Pair, self_signed
from tests.support.server import Running, start


class PKI:
    """The certificates every system test may use."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = Authority(directory)
        self.ec = self.ca.issue("ec")
        self.rsa = self.ca.issue("rsa", rsa_key=True)
        self.alt = self.ca.issue("alt", names=("alt.test",), ips=())
        self.wild = self.ca.issue("wild", names=("*.example.test",), ips=())
        self.client = self.ca.issue("client", client=True, subject={"CN": "s6tls client"})
        self.client2 = self.ca.issue(
            "client2",
            client=True,
            subject={
                "C": "FR",
                "ST": "Ile-de-France",
                "L": "Paris",
                "O": "Example, Inc.",
                "OU": "R+D",
                "CN": "client  two",
            },
        )
        self.rogue = self_signed(directory, "rogue", "rogue client")

    def env(self, pair: Pair | None = None) -> dict[str, str]:
        pair = pair or self.ec
        return {"KEYFILE": str(pair.key), "CERTFILE": str(pair.cert)}


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return PKI(tmp_path_factory.mktemp("pki"))


class ServerFactory(Protocol):
    def __call__(
        self, *args: str, env: Mapping[str, str] | None = ..., notify: bool = ...
    ) -> Running: ...


@pytest.fixture
def server(pki: PKI, tmp_path: Path) -> Iterator[ServerFactory]:
    """Start s6-tlsserver with the given arguments; everything is killed afterwards.

    env defaults to the EC key pair; pass env to replace it.
    """
    started: list[Running] = []

    def factory(*args: str, env: Mapping[str, str] | None = None, notify: bool = True) -> Running:
        log = tmp_path / f"server{len(started)}.log"
        running = start(list(args), pki.env() if env is None else env, log, notify=notify)
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop()


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory that uid 65534 can enter (pytest's tmp_path is root's only)."""
    path = Path(tempfile.mkdtemp(prefix="s6tls-shared-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
