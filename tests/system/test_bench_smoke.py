"""tools/bench in its tiny configuration: a table with numbers, and nothing left running."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "tools" / "bench"

pytestmark = pytest.mark.skipif(
    shutil.which("gcc") is None or not Path("/usr/include/openssl/ssl.h").exists(),
    reason="the bench builds its load client with gcc and libssl-dev",
)

NUMBER = re.compile(r"^-?\d+(\.\d+)?$")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the bench builds its client: one build for this module, never the user's cache."""
    return tmp_path_factory.mktemp("cache")


def _start(cache: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BENCH), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "XDG_CACHE_HOME": str(cache)},
        start_new_session=True,  # its session id is its pid: how we find what it left
        # Started in the background (as CI may run us), SIGINT would be inherited
        # ignored; the bench must see it as a user's Ctrl-C would reach it.
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return [text[text.index("(") + 1 : text.rindex(")")], *text[text.rindex(")") + 2 :].split()]


def _in_session(sid: int) -> list[str]:
    """Processes (pid and name) still in the session sid."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := _stat(int(name))) is not None and int(stat[4]) == sid:
            found.append(f"{name} {stat[0]} {stat[1]}")
    return found


def _servers(sid: int) -> list[str]:
    return [p for p in _in_session(sid) if p.split()[1] in ("s6-tlsserver", "stunnel4")]


def _left_behind(pids: list[int], before_ticks: int) -> list[str]:
    """pids that still run the process the bench started (same pid, started before it ended)."""
    left = []
    for pid in pids:
        stat = _stat(pid)
        if stat is not None and int(stat[20]) <= before_ticks:
            left.append(f"{pid} {stat[0]} {stat[1]}")
    return left


def _ticks_now() -> int:
    return int(float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK")) + 1


def _row(table: str, label: str) -> list[str]:
    """The cells of the table row that starts with label."""
    for line in table.splitlines():
        if line.startswith(label):
            return line[len(label) :].split()
    raise AssertionError(f"no row {label!r} in:\n{table}")


def _run(cache: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """Run the bench to its end; it and its stdout."""
    bench = _start(cache, *args)
    try:
        stdout, stderr = bench.communicate(timeout=240)
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.wait()
    assert bench.returncode == 0, stderr
    return bench, stdout


def test_smoke_prints_numbers_for_each_server_and_leaves_nothing(cache, tmp_path):
    out = tmp_path / "bench.json"
    bench, stdout = _run(cache, "--smoke", "--json", str(out))
    ended = _ticks_now()

    header = next(line for line in stdout.splitlines() if line.split()[:2] == ["ours", "stunnel"])
    assert header.split() == ["ours", "stunnel", "client", "CPU", "µs"]
    for label in (
        "full c=1 TLS 1.3: sessions/s",
        "full c=1 TLS 1.3: p99 ms",
        "full c=4 TLS 1.2: sessions/s",
        "server CPU µs/session c=4 TLS 1.2",
        "resumed c=4 TLS 1.3: sessions/s",
        "down MB/s",
        "up MB/s",
        "echo MB/s",
        "down: server CPU µs/MiB",
        "down: prog CPU µs/MiB",
        "down: client CPU µs/MiB",
        "down: machine idle %",
        "KiB per idle session",
        "idle server: PSS MiB",
        "idle server: RSS MiB",
    ):
        cells = [c for c in _row(stdout, label) if not c.startswith("(") and c != "!"]
        numbers = [c for c in cells if NUMBER.match(c)]
        assert len(numbers) >= 2, f"{label}: {cells}"
        assert "!" not in _row(stdout, label), f"{label}: some session failed"
    # the load client's CPU beside every rate
    assert NUMBER.match(_row(stdout, "full c=4 TLS 1.3: sessions/s")[-1].split("-")[0])
    assert _row(stdout, "protocol")[:2] == ["TLSv1.3", "TLSv1.3"]
    # the quiet-time measurement: ours (the default) is one process after it
    # (whether workers came during the load is checked in test_workers.py)
    assert _row(stdout, "then 1 s quiet: processes")[:2] == ["1.00", "-"]
    assert "memory per idle session" in stdout  # the targets section

    saved = json.loads(out.read_text())
    keys = ("full c=1 TLS 1.3", "full c=4 TLS 1.2", "resumed c=4 TLS 1.3", "down", "up", "echo")
    for key in (*keys, "idle"):
        for server in ("ours", "stunnel"):
            (sample,) = saved["samples"][key][server]
            assert sample["errors"] == 0, (key, server, sample)
    assert saved["samples"]["full c=4 TLS 1.2"]["ours"][0]["protocol"] == "TLSv1.2"
    assert saved["samples"]["idle"]["ours"][0]["sessions"] == 20
    assert all(s["resumed"] > 0 for s in saved["samples"]["resumed c=4 TLS 1.3"]["ours"])

    assert saved["pids"], "the bench reported no process"
    assert _in_session(bench.pid) == []
    assert _left_behind(saved["pids"], ended) == []


def test_workers_mode_measures_each_count(cache):
    bench, stdout = _run(cache, "--smoke", "--workers", "1,2,default")
    assert _in_session(bench.pid) == []
    for label, processes in (("N=1", "1.00"), ("N=2", "2.00")):
        cells = _row(stdout, label + " ")
        assert cells[1] == processes, cells
        assert "!" not in cells, f"{label}: some session failed"
        assert all(NUMBER.match(c) for c in cells), cells
    assert NUMBER.match(_row(stdout, "default ")[2])


FEATURES = ("ours-1", "ours-alpn", "ours-mtls", "ours-mtls-rules")


def test_feature_servers_start_and_serve_the_same_client(cache, tmp_path):
    """The servers that measure ALPN and client-certificate rules, with --only
    handshakes: each serves, the client offers ALPN and presents its certificate
    to all of them, and each pair's ratios are printed run by run."""
    out = tmp_path / "bench.json"
    servers = ",".join(FEATURES)
    bench, stdout = _run(cache, "--smoke", "--only", "handshakes", "--servers", servers,
                         "--json", str(out))  # fmt: skip
    assert _in_session(bench.pid) == []
    saved = json.loads(out.read_text())
    assert set(saved["samples"]) == {"full c=4 TLS 1.3", "full c=4 TLS 1.2"}  # nothing else
    for key, by_server in saved["samples"].items():
        assert set(by_server) == set(FEATURES)
        for server, (sample,) in by_server.items():
            assert sample["errors"] == 0, (key, server, sample)
            assert sample["sessions"] == 20
            # ALPN offered to all, chosen by the one server that has a list
            assert sample["alpn"] == ("h2" if server == "ours-alpn" else ""), (server, sample)
    assert "offers ALPN h2,http/1.1, presents a client certificate" in saved["client"]
    pairs = {(p["server"], p["baseline"], p["point"]) for p in saved["pairs"]}
    assert pairs == {
        (server, baseline, f"full c=4 TLS {v}")
        for server, baseline in (("ours-alpn", "ours-1"), ("ours-mtls-rules", "ours-mtls"))
        for v in ("1.3", "1.2")
    }
    assert NUMBER.match(_row(stdout, "ours ALPN / ours N=1, full c=4 TLS 1.3: sessions/s")[-2])
    assert _row(stdout, "ALPN protocol") == ["-", "h2", "-", "-"]
    assert "ALPN list set vs none" in stdout  # its target
    assert "KiB per idle session" not in stdout  # --only handshakes


def test_certificate_rules_match_the_bench_client(tmp_path):
    """The mutual-TLS servers as the bench starts them: with the large cdb,
    the client's certificate finds its own rule (USER); with the IP rule only,
    none; with -y, a client without a certificate is refused."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from benchlib.certrules import make_rules
        from benchlib.certs import make_pair
        from benchlib.servers import KINDS, Setup, free_port, listening
    finally:
        sys.path.remove(str(ROOT / "tools"))
    pair = make_pair(tmp_path, client=True)
    assert pair.client is not None
    rules = make_rules(tmp_path, pair.client.cert)
    setup = Setup(pair, tmp_path, maxconn=10, rules=rules)
    served = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    served.check_hostname = False
    served.verify_mode = ssl.CERT_NONE
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.verify_mode = ssl.CERT_NONE
    served.load_cert_chain(pair.client.cert, pair.client.key)
    for name, user in (("ours-mtls-rules", rules.user), ("ours-mtls", None)):
        port = free_port()
        argv, env = KINDS[name].command(setup, port, ["/usr/bin/env"], tmp_path / name)
        server = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while not listening(port, server.pid):
                assert server.poll() is None and time.monotonic() < deadline, name
                time.sleep(0.05)
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                served.wrap_socket(raw) as tls,
            ):
                text = b"".join(iter(lambda: tls.recv(4096), b"")).decode()
            environ = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
            assert environ.get("USER") == user, (name, text)
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                pytest.raises((ssl.SSLError, OSError)),
                anonymous.wrap_socket(raw) as tls,
            ):
                tls.recv(4096)  # TLS 1.3: the refusal comes after the client's Finished
        finally:
            os.killpg(server.pid, signal.SIGKILL)
            server.communicate()
    assert rules.matching_key.startswith("certhash/SHA256:")
    assert rules.rules == 10_000


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_bench_stops_everything_it_started(cache, signum):
    bench = _start(cache, "--smoke")
    try:
        deadline = time.monotonic() + 120
        # Interrupt it once servers under test run (their progs may run too).
        while time.monotonic() < deadline and not _servers(bench.pid):
            assert bench.poll() is None, bench.communicate()
            time.sleep(0.05)
        assert _servers(bench.pid)
        os.kill(bench.pid, signum)
        _, stderr = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.wait()
    assert bench.returncode != 0
    assert f"stopped by {signal.Signals(signum).name}" in stderr
    assert _in_session(bench.pid) == []
