"""Running the real ``s6-tlsserver`` command for a test, and cleaning up after it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.support.probes import children, uid

# Our commands, from the environment that runs the tests (never skarnet's /usr/bin ones).
BIN = Path(sys.executable).parent
S6_TLSSERVER = str(BIN / "s6-tlsserver")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kernel's choice)."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(predicate: object, timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll predicate() until it is true or timeout seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return bool(predicate())  # type: ignore[operator]


def _exe(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


class Running:
    """A started server: its pid, port, and what it logged."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.port = port
        self.log_path = log

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines(self) -> list[str]:
        return self.log().splitlines()

    def wait_log(self, text: str, timeout: float = 5.0, count: int = 1) -> bool:
        return wait_for(lambda: self.log().count(text) >= count, timeout)

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def children(self) -> list[int]:
        """pids whose parent is the server."""
        return children(self.pid)

    def progs(self) -> list[int]:
        """The progs running for this server: its children that are not copies
        of it, and the children of its copies (each worker's progs, and with
        TLS_UID every prog, which the root helper starts)."""
        forks = self.forks()
        kids = [p for p in self.children() if p not in forks]
        for pid in forks:
            kids += children(pid)
        return sorted(kids)

    def workers(self) -> list[int]:
        """The copies of the server that serve beside it (not the TLS_UID root
        helper: the only copy that runs as another user)."""
        me = uid(self.pid)
        return [p for p in self.forks() if uid(p) == me]

    def helper(self) -> int | None:
        """With TLS_UID, the root helper (which starts every prog)."""
        me = uid(self.pid)
        return next((p for p in self.forks() if uid(p) != me), None)

    def forks(self) -> list[int]:
        """Children that run the server's own program: its workers (and, with
        TLS_UID, the privileged helper)."""
        exe = _exe(self.pid)

        def now() -> set[int]:
            return {p for p in self.children() if exe is not None and _exe(p) == exe}

        # A prog is briefly a copy of the server too, until its exec (vfork): a
        # fork is a child seen twice.
        first = now()
        time.sleep(0.05)
        return sorted(first & now())

    def fds(self) -> list[str]:
        d = f"/proc/{self.pid}/fd"
        return sorted(os.readlink(f"{d}/{n}") for n in os.listdir(d))

    def stop(self) -> None:
        """Kill the server and everything it started (its process group), by pid."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def start(
    args: Sequence[str],
    env: Mapping[str, str],
    log: Path,
    *,
    notify: bool = True,
    wrapper: Sequence[str] = (),
) -> Running:
    """Start s6-tlsserver with args (options, ip, port 0, prog) and wait for -1.

    wrapper: a command that execs the server (prlimit, setpriv), so that the
    pid is still the server's.
    """
    argv = [*wrapper, S6_TLSSERVER, *(["-1"] if notify else []), *args]
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if notify else subprocess.DEVNULL,
            stderr=err,
            env={**base, **env},
            start_new_session=True,  # one process group: the cleanup kills it whole
        )
    if not notify:
        return Running(proc, 0, log)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=5)
        raise RuntimeError(f"server did not start (rc {proc.returncode}): {log.read_text()}")
    proc.stdout.close()
    return Running(proc, int(line), log)


def run_command(
    argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 10
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing its output as text."""
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def have(program: str) -> bool:
    return shutil.which(program) is not None
