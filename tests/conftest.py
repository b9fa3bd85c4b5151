"""Fixtures: a test PKI for the session, and servers started per test."""

from __future__ import annotations

import os
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


# The uid and gid a confined TLS engine runs as.
NOBODY = "65534"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked both_engines run with each engine (see the engine fixture)."""
    node = metafunc.definition
    if node.get_closest_marker("both_engines") and "server" in metafunc.fixturenames:
        modes = ["open"] if node.get_closest_marker("open_engine_only") else ["open", "confined"]
        metafunc.parametrize("engine", modes, indirect=True)


@pytest.fixture
def engine(request: pytest.FixtureRequest) -> str:
    """How the servers of a test run their TLS engine: "open", in the process
    started, as started; or "confined", started as root with TLS_UID and
    TLS_GID (privilege separation, and the engine confined), unless the test
    sets TLS_UID itself."""
    mode = getattr(request, "param", "open")
    if mode == "confined" and os.geteuid() != 0:
        pytest.skip("privilege separation needs root")
    return str(mode)


@pytest.fixture
def server(pki: PKI, tmp_path: Path, engine: str) -> Iterator[ServerFactory]:
    """Start s6-tlsserver with the given arguments; everything is killed afterwards.

    env defaults to the EC key pair; pass env to replace it.
    """
    started: list[Running] = []

    def factory(*args: str, env: Mapping[str, str] | None = None, notify: bool = True) -> Running:
        log = tmp_path / f"server{len(started)}.log"
        env = pki.env() if env is None else env
        if engine == "confined" and "TLS_UID" not in env:
            env = {**env, "TLS_UID": NOBODY, "TLS_GID": NOBODY}
        running = start(list(args), env, log, notify=notify)
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
