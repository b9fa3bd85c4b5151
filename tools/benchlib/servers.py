"""The servers under test: how each one is started on loopback with a given prog.

All of them listen on 127.0.0.1, present the same key pair and run the same
prog per connection; only their own defaults differ, and where a peer's
default would measure the kernel rather than the server (socat's listen
backlog of 5, tcpserver's 20 and its 40 sessions), the bench raises it for
everyone alike.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import memory
from benchlib.certrules import CERT_RULES, RuleFiles
from benchlib.certs import KeyPair
from benchlib.procs import Processes

BACKLOG = 4096
NOBODY = "65534"
OURS = str(Path(sys.executable).parent / "s6-tlsserver")
ALPN = "h2,http/1.1"  # what ours-alpn serves, and the client offers in a run with it


class ServerError(Exception):
    """A server under test did not start."""


@dataclass(frozen=True)
class Setup:
    """What every server of one bench run shares."""

    pair: KeyPair
    workdir: Path
    maxconn: int  # sessions a server must hold at once (the idle workload's N, and more)
    ours: str = OURS  # the s6-tlsserver command under test
    rules: RuleFiles | None = None  # the cdb files of the mutual-TLS servers (client in pair)


@dataclass
class Running:
    """A server under test, listening."""

    name: str
    proc: subprocess.Popen[Any]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid


Launch = tuple[list[str], dict[str, str]]


@dataclass(frozen=True)
class Kind:
    """One server under test: its name on the command line and in the table."""

    name: str
    label: str
    tls: bool
    command: Callable[[Setup, int, Sequence[str], Path], Launch]
    note: str = ""
    by_default: bool = True  # measured when --servers does not name the servers
    # What this server needs of the load client, which then does it for every
    # server of the run, so that the servers compared see the same client:
    alpn: bool = False  # offer ALPN (h2,http/1.1)
    client_cert: bool = False  # present a client certificate (the bench makes a CA for it)
    baseline: str = ""  # the server this one is compared with, run by run (the pairs' ratios)


def _base_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def _ours(
    nodelay: bool, workers: int | None = None, mtls: str = "", **more_env: str
) -> Callable[[Setup, int, Sequence[str], Path], Launch]:
    """s6-tlsserver; workers: S6TLS_WORKERS (None: unset, as the load needs);
    mtls: "ip-only" or "certificates": -y, CAFILE and -x with that cdb."""

    def command(setup: Setup, port: int, prog: Sequence[str], _conf: Path) -> Launch:
        limits = ["-c", str(setup.maxconn), "-C", str(setup.maxconn)]
        argv = [setup.ours, "-H", *limits, *(["-D"] if nodelay else [])]
        env = {**_base_env(), "KEYFILE": str(setup.pair.key), "CERTFILE": str(setup.pair.cert)}
        if workers is not None:
            env["S6TLS_WORKERS"] = str(workers)
        if mtls:
            client, rules = setup.pair.client, setup.rules
            if client is None or rules is None:
                raise ServerError("a mutual-TLS server needs the bench's CA and rules")
            cdb = rules.ip_only if mtls == "ip-only" else rules.certificates
            argv += ["-y", "-x", str(cdb)]
            env["CAFILE"] = str(client.ca)
        return [*argv, "127.0.0.1", str(port), *prog], env | more_env

    return command


def ours_with(workers: int | None) -> Kind:
    """s6-tlsserver with S6TLS_WORKERS=workers (None: the default, as the load needs)."""
    if workers is None:
        return Kind("ours", "default", True, _ours(False), "S6TLS_WORKERS unset")
    return Kind(f"ours-{workers}", f"N={workers}", True, _ours(False, workers))


def _stunnel(setup: Setup, port: int, prog: Sequence[str], conf: Path) -> Launch:
    # Exec mode; execArgs cannot quote, so every prog is a path and plain words.
    # debug = err: no log line per connection, as the other servers by default
    # (stunnel's default, notice, writes two per connection: ~30% fewer sessions/s).
    conf.write_text(
        "foreground = yes\n"
        "pid =\n"
        "debug = err\n"
        "[bench]\n"
        f"accept = 127.0.0.1:{port}\n"
        f"cert = {setup.pair.cert}\n"
        f"key = {setup.pair.key}\n"
        f"exec = {prog[0]}\n"
        f"execArgs = {' '.join([Path(prog[0]).name, *prog[1:]])}\n"
    )
    return ["stunnel4", str(conf)], _base_env()


def _socat(setup: Setup, port: int, prog: Sequence[str], _conf: Path) -> Launch:
    listen = (
        f"OPENSSL-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,backlog={BACKLOG},"
        f"cert={setup.pair.cert},key={setup.pair.key},verify=0"
    )
    return ["socat", listen, "EXEC:" + " ".join(prog)], _base_env()


def _tcpserver(setup: Setup, port: int, prog: Sequence[str], _conf: Path) -> Launch:
    options = ["-c", str(setup.maxconn), "-b", str(BACKLOG), "-H", "-R", "-l", "0"]
    return ["tcpserver", *options, "127.0.0.1", str(port), *prog], _base_env()


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            "ours",
            "ours",
            True,
            _ours(False),
            "s6-tlsserver, default flags (-d), S6TLS_WORKERS unset: workers as the load needs",
        ),
        Kind("ours-1", "ours N=1", True, _ours(False, 1), "s6-tlsserver, S6TLS_WORKERS=1"),
        Kind("ours-2", "ours N=2", True, _ours(False, 2), "s6-tlsserver, S6TLS_WORKERS=2"),
        Kind("ours-D", "ours -D", True, _ours(True), "s6-tlsserver -D"),
        # Privilege separation (as root), one process: what confinement costs.
        Kind(
            "ours-uid",
            "TLS_UID",
            True,
            _ours(False, 1, TLS_UID=NOBODY, TLS_GID=NOBODY),
            "s6-tlsserver as root, TLS_UID=65534, S6TLS_WORKERS=1: the TLS engine confined",
            by_default=False,
        ),
        Kind(
            "ours-uid-open",
            "TLS_UID,open",
            True,
            _ours(False, 1, TLS_UID=NOBODY, TLS_GID=NOBODY, S6TLS_CONFINE="0"),
            "the same with S6TLS_CONFINE=0",
            by_default=False,
        ),
        # What the TLS features of SPEC 4b cost a full handshake, each against
        # the same server without it (the client offers ALPN, or presents its
        # certificate, to every server of such a run); one process each, so
        # that a worker started in one run and not the other does not decide.
        Kind(
            "ours-alpn",
            "ours ALPN",
            True,
            _ours(False, 1, ALPN=ALPN),
            f"s6-tlsserver with ALPN={ALPN}, S6TLS_WORKERS=1",
            by_default=False,
            alpn=True,
            baseline="ours-1",
        ),
        Kind(
            "ours-mtls",
            "ours -y",
            True,
            _ours(False, 1, mtls="ip-only"),
            "s6-tlsserver -y, CAFILE, -x with the IP rule ip4/0.0.0.0_0 only, S6TLS_WORKERS=1",
            by_default=False,
            client_cert=True,
        ),
        Kind(
            "ours-mtls-rules",
            "ours -y rules",
            True,
            _ours(False, 1, mtls="certificates"),
            f"s6-tlsserver -y, CAFILE, -x with the IP rule and {CERT_RULES:,} certhash/ "
            "rules (env/USER), the client's among them",
            by_default=False,
            client_cert=True,
            baseline="ours-mtls",
        ),
        Kind("stunnel", "stunnel", True, _stunnel, "stunnel4, exec mode, debug = err"),
        Kind("socat", "socat", True, _socat, "socat OPENSSL-LISTEN,fork EXEC"),
        Kind("tcpserver", "tcpserver", False, _tcpserver, "ucspi-tcp, no TLS (ceiling)"),
    )
}


def free_port() -> int:
    """A loopback port nothing uses right now (a server may still lose it in a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def listening(port: int, pid: int) -> bool:
    """Whether the server side of pid (its workers too) listens on
    127.0.0.1:port (read from /proc: no probe connection, which would start a
    prog)."""
    want = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as f:
        next(f)
        inodes = {fields[9] for fields in map(str.split, f) if fields[1:4:2] == [want, "0A"]}
    return bool(inodes) and any(_holds(p, inodes) for p in memory.server_pids(pid))


def _holds(pid: int, inodes: set[str]) -> bool:
    """Whether process pid has one of these sockets open."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


def _launch(kind: Kind, setup: Setup, prog: Sequence[str], procs: Processes, tag: str) -> Running:
    port = free_port()
    log = setup.workdir / f"{kind.name}-{tag}.log"
    argv, env = kind.command(setup, port, prog, setup.workdir / f"{kind.name}-{tag}.conf")
    with open(log, "ab") as err:
        proc = procs.start(argv, env=env, stderr=err)
    return Running(kind.name, proc, port, log)


def start_all(
    wanted: Sequence[tuple[Kind, Sequence[str], str]], setup: Setup, procs: Processes
) -> list[Running]:
    """Start (kind, prog, tag) servers side by side, each on a free loopback port;
    return once all of them listen."""
    running = [_launch(kind, setup, prog, procs, tag) for kind, prog, tag in wanted]
    for i, (kind, prog, tag) in enumerate(wanted):
        for _attempt in range(3):
            server = running[i]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and server.proc.poll() is None:
                if listening(server.port, server.pid):
                    break
                time.sleep(0.02)
            if listening(server.port, server.pid):
                break
            procs.stop(server.proc)
            text = server.log.read_text(errors="replace")
            if "in use" not in text:  # not a lost race for the port: retrying will not help
                raise ServerError(f"{kind.label} did not start listening:\n{text[-600:]}")
            running[i] = _launch(kind, setup, prog, procs, tag)
        else:
            raise ServerError(f"{kind.label} found no free port")
    return running


def start(kind: Kind, setup: Setup, prog: Sequence[str], procs: Processes, tag: str) -> Running:
    """Start kind with prog on a free loopback port; return once it listens."""
    return start_all([(kind, prog, tag)], setup, procs)[0]
