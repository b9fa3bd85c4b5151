"""A taken-over TLS engine can exec nothing, open nothing, gain nothing.

With TLS_UID the process that parses TLS is confined (s6tls.shell.confine).
These tests gain code execution inside the running process, as an attacker
who exploited a bug in the TLS parser would (a debugger makes it run Python
statements), and try what such an attacker would: each attempt fails in the
confined engine and succeeds in the same server started with
S6TLS_CONFINE=0, so the tests fail if the confinement goes.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import probes
from tests.support.client import connect, echo, read_all
from tests.support.inside import run_inside
from tests.support.server import have, start, wait_for

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(os.geteuid() != 0, reason="privilege separation needs root"),
]

NOBODY = "65534"
CONFINED = {"TLS_UID": NOBODY, "TLS_GID": NOBODY}
UNCONFINED = {**CONFINED, "S6TLS_CONFINE": "0"}


def status(pid: int) -> dict[str, str]:
    """The NoNewPrivs and Seccomp fields of /proc/PID/status."""
    fields = probes.status(pid)
    return {name: fields[name] for name in ("NoNewPrivs", "Seccomp")}


@pytest.fixture
def neighbour():
    """A process of TLS_UID's, beside the server: what a taken-over engine could
    ptrace or signal, were it not confined."""
    proc = subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "sleep", "120"]
    )
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def listener():
    """A TCP port on loopback that a taken-over engine could connect to."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield sock.getsockname()[1]


def attempts(neighbour: int, port: int) -> list[tuple[str, str, bool]]:
    """(what, statement, whether it succeeds in an unconfined engine): each
    statement completes only if the attempt succeeded."""
    return [
        ("read a world-readable file", "open('/etc/passwd').read()", True),
        ("create a file", "open('/tmp/s6tls-escape-%d' % __import__('os').getpid(), 'w')", True),
        (
            # A missing program, so that an unconfined success leaves the process
            # as it was: the kernel looked for it, so exec itself was allowed.
            "execute a program",
            "import os\ntry:\n    os.execv('/nonexistent/prog', ['prog'])\n"
            "except FileNotFoundError:\n    pass",
            True,
        ),
        (
            "ptrace a process of the same uid",
            f"import ctypes\nassert ctypes.CDLL(None).ptrace(0x4206, {neighbour}, 0, 0) == 0",
            True,
        ),
        ("signal a process of the same uid", f"import os\nos.kill({neighbour}, 0)", True),
        ("set its own uid again", "import os\nos.setuid(os.getuid())", True),
        ("become root", "import os\nos.setuid(0)", False),
        (
            "open a netlink socket",
            "import socket\nsocket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close()",
            True,
        ),
        (
            "open a raw socket",
            "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_RAW, 1).close()",
            False,
        ),
        (
            "connect out over TCP",
            f"import socket\ns = socket.socket()\ns.settimeout(2)\n"
            f"s.connect((b'127.0.0.1', {port}))\ns.close()",
            True,
        ),
    ]


def cleanup_created_files(pids: list[int]) -> None:
    for pid in pids:
        Path(f"/tmp/s6tls-escape-{pid}").unlink(missing_ok=True)


# The unconfined engine as a system-wide Python would have it: able to import
# ctypes after its drop to nobody (the interpreter that runs the tests may keep
# its standard library where only root can read).
WITH_CTYPES = [
    sys.executable,
    "-c",
    "import ctypes, runpy, sys\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')",
]


@pytest.mark.skipif(not have("lldb"), reason="lldb is not installed (tools/install --test)")
def test_a_taken_over_engine_can_do_nothing(neighbour, listener, server, pki, tmp_path):
    # neighbour first: it outlives the servers, one of which may trace it.
    tries = attempts(neighbour, listener)
    statements = [statement for _, statement, _ in tries]
    free = start(
        ["-H", "--", "127.0.0.1", "0", "cat"], {**pki.env(), **UNCONFINED}, tmp_path / "free.log",
        wrapper=WITH_CTYPES,
    )  # fmt: skip
    confined = server(
        "-H", "--", "127.0.0.1", "0", "cat", env={**pki.env(), **CONFINED, "S6TLS_WORKERS": "2"}
    )
    assert wait_for(lambda: len(confined.forks()) == 2)  # the helper and a worker
    (worker,) = confined.workers()
    try:
        got_free = run_inside(free.pid, statements)
        got_confined = run_inside(confined.pid, statements)
        got_worker = run_inside(worker, statements)
    finally:
        free.stop()
        cleanup_created_files([free.pid, confined.pid, worker])
    for (what, _, succeeds), outcome in zip(tries, got_free, strict=True):
        assert outcome == (0 if succeeds else -1), f"unconfined engine: {what}"
    for (what, _, _), outcome, in_worker in zip(tries, got_confined, got_worker, strict=True):
        assert (outcome, in_worker) == (-1, -1), f"confined engine could {what}"
    # A real exec fails too (had it worked, the server would be gone), and the
    # engine goes on serving.
    assert run_inside(confined.pid, ["import os\nos.execv('/bin/true', ['true'])"]) == [-1]
    with connect(confined.port) as s:
        assert echo(s, b"still serving\n") == b"still serving\n"


def test_every_serving_process_is_confined_and_prog_is_not(server, pki):
    prog = ["grep", "-E", "^(NoNewPrivs|Seccomp):", "/proc/self/status"]
    srv = server("-H", "--", "127.0.0.1", "0", *prog, env={**pki.env(), **CONFINED})
    srv_workers = server(
        "-H", "--", "127.0.0.1", "0", "cat", env={**pki.env(), **CONFINED, "S6TLS_WORKERS": "3"}
    )
    assert wait_for(lambda: len(srv_workers.workers()) == 2)
    for pid in [srv.pid, srv_workers.pid, *srv_workers.workers()]:
        assert status(pid) == {"NoNewPrivs": "1", "Seccomp": "2"}
    for helper in [srv.helper(), srv_workers.helper()]:
        assert helper is not None
        assert status(helper) == {"NoNewPrivs": "0", "Seccomp": "0"}  # it must exec progs
    # prog, started by the root helper, inherits none of it.
    with connect(srv.port) as s:
        assert read_all(s)[0] == b"NoNewPrivs:\t0\nSeccomp:\t0\n"
    assert "warning" not in srv.log()


def test_without_privilege_separation_nothing_reaches_prog(server, pki):
    """prog inherits what confines the server that starts it: it could not
    use setuid programs (qmail-queue, sendmail's maildrop) under no_new_privs."""
    prog = ["grep", "-E", "^(NoNewPrivs|Seccomp):", "/proc/self/status"]
    srv = server("-H", "--", "127.0.0.1", "0", *prog)
    assert status(srv.pid) == {"NoNewPrivs": "0", "Seccomp": "0"}
    with connect(srv.port) as s:
        assert read_all(s)[0] == b"NoNewPrivs:\t0\nSeccomp:\t0\n"


def test_the_switch_turns_it_off_and_says_so(server, pki):
    srv = server("-H", "--", "127.0.0.1", "0", "cat", env={**pki.env(), **UNCONFINED})
    assert srv.wait_log("S6TLS_CONFINE=0")
    assert "s6-tlsserver: warning: S6TLS_CONFINE=0: the TLS engine is not confined" in srv.lines()
    assert status(srv.pid) == {"NoNewPrivs": "0", "Seccomp": "0"}
    with connect(srv.port) as s:
        assert echo(s) == b"ping\n"


def test_a_bad_switch_is_a_usage_error(pki):
    from tests.support.server import S6_TLSSERVER, run_command

    r = run_command(
        [S6_TLSSERVER, "-H", "127.0.0.1", "0", "cat"], env={**pki.env(), "S6TLS_CONFINE": "yes"}
    )
    assert r.returncode == 100
    assert r.stderr.splitlines()[0] == "s6-tlsserver: fatal: S6TLS_CONFINE must be 0 or 1"


# Exec the server under a seccomp filter on which landlock_create_ruleset
# fails as on a kernel without Landlock.
NO_LANDLOCK = [
    sys.executable,
    "-c",
    "import errno, os, sys\n"
    "from s6tls.shell.confine.seccomp import Filter, compiled, load\n"
    "from s6tls.shell.confine.syscalls import no_new_privs\n"
    "def without_landlock():\n"
    "    f = Filter()\n"
    "    f.refuse('landlock_create_ruleset', errno.ENOSYS)\n"
    "    return f\n"
    "no_new_privs()\n"
    "load(compiled(without_landlock))\n"
    "os.execv(sys.argv[1], sys.argv[1:])",
]


def test_a_kernel_without_landlock_gets_a_warning_and_a_server(pki, tmp_path):
    srv = start(
        ["-H", "--", "127.0.0.1", "0", "cat"], {**pki.env(), **CONFINED}, tmp_path / "log",
        wrapper=NO_LANDLOCK,
    )  # fmt: skip
    try:
        warning = "s6-tlsserver: warning: the TLS engine is confined without Landlock"
        assert wait_for(lambda: any(line.startswith(warning) for line in srv.lines()))
        assert [line for line in srv.lines() if "warning" in line] == [
            f"{warning} (Function not implemented)"
        ]
        assert status(srv.pid) == {"NoNewPrivs": "1", "Seccomp": "2"}  # its own filter too
        with connect(srv.port) as s:
            assert echo(s) == b"ping\n"
    finally:
        srv.stop()
