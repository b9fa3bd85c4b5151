"""Access rules (-i rulesdir, -x cdb) through the real s6-tlsserver, clients on 127.0.0.1-3.

The same rulesets are served from a directory, from a cdb compiled by our
s6-accessrules-cdb-from-fs and from one compiled by skarnet's, and edited
under a running server (SPEC.md §4, REFERENCE-BEHAVIOUR.md §10, E08).
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import socket
import ssl
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support import client
from tests.support.server import BIN, S6_TLSSERVER, Running, run_command, start
from tests.support.trees import write_files

if TYPE_CHECKING:
    from tests.conftest import PKI, ServerFactory

pytestmark = [pytest.mark.timeout(60), pytest.mark.both_engines]

ENV_PROG = ("/usr/bin/env",)
OUR_CDB_FROM_FS = str(BIN / "s6-accessrules-cdb-from-fs")
SKARNET_CDB_FROM_FS = "/usr/bin/s6-accessrules-cdb-from-fs"
NOBODY = "65534"

FORMS = [
    "dir",
    "cdb-ours",
    pytest.param(
        "cdb-skarnet",
        marks=pytest.mark.skipif(
            not os.path.exists(SKARNET_CDB_FROM_FS), reason="skarnet's s6 is not installed"
        ),
    ),
]


# --- rules trees -------------------------------------------------------------------


def compile_cdb(compiler: str, tree: Path, cdb: Path) -> None:
    done = run_command([compiler, str(cdb), str(tree)])
    assert done.returncode == 0, done.stderr


def replace_cdb(compiler: str, tree: Path, cdb: Path) -> None:
    """Compile `tree` under a temporary name, then rename it over `cdb` (atomic)."""
    temp = cdb.with_name(cdb.name + ".new")
    compile_cdb(compiler, tree, temp)
    os.rename(temp, cdb)


def rules_option(form: str, tree: Path) -> list[str]:
    """The -i or -x option serving `tree` in `form`, compiling a cdb beside it if needed."""
    if form == "dir":
        return ["-i", str(tree)]
    cdb = tree.with_name(tree.name + ".cdb")
    compile_cdb(OUR_CDB_FROM_FS if form == "cdb-ours" else SKARNET_CDB_FROM_FS, tree, cdb)
    return ["-x", str(cdb)]


# --- clients -----------------------------------------------------------------------


@dataclass
class Outcome:
    """What one client saw: its own port, and prog's output if it was served."""

    port: int
    output: bytes | None
    cert: bytes | None = None

    @property
    def env(self) -> dict[str, str]:
        assert self.output is not None, "the connection was denied"
        return client.env_of(self.output)

    @property
    def denied(self) -> bool:
        return self.output is None


def attempt(port: int, source: str, host: str = "127.0.0.1", send: bytes | None = None) -> Outcome:
    """Connect from `source` and handshake; read prog's output (after sending `send`
    and a half-close, if given). A handshake the server cuts is a denial."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    raw = socket.socket(family, socket.SOCK_STREAM)
    raw.settimeout(10)
    raw.bind((source, 0))
    raw.connect((host, port))
    own_port = raw.getsockname()[1]
    try:
        tls = client.context().wrap_socket(raw, suppress_ragged_eofs=False)
    except (ssl.SSLError, ConnectionError):
        raw.close()
        return Outcome(own_port, None)
    with tls:
        cert = tls.getpeercert(binary_form=True)
        if send is not None:
            tls.sendall(send)
            client.half_close(tls)
        data, _ = client.read_all(tls)
    return Outcome(own_port, data, cert)


def closed_without_a_byte(port: int, source: str) -> bool:
    """Connect from `source`, send nothing, and tell whether the server closes
    without sending anything (an allowed client would be waited on for its ClientHello)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as raw:
        raw.settimeout(5)
        raw.bind((source, 0))
        raw.connect(("127.0.0.1", port))
        try:
            return raw.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


def logged(srv: Running, text: str) -> list[str]:
    return [line for line in srv.lines() if text in line]


def about(srv: Running, outcome: Outcome) -> list[str]:
    """The log lines about one connection: those naming its client's port."""
    return [line for line in srv.lines() if re.search(rf"_{outcome.port}\b", line)]


# --- allow, deny, env ----------------------------------------------------------------

E08_TREE = {
    "ip4/127.0.0.1_32/allow": "",
    "ip4/127.0.0.1_32/env/FOO": "bar\n",
    "ip4/127.0.0.1_32/env/EMPTY": "",
    "ip4/127.0.0.1_32/env/TWOLINES": "first\nsecond\n",
    "ip4/127.0.0.2_32/deny": "",
}


@pytest.mark.parametrize("form", FORMS)
def test_allow_deny_and_env(server: ServerFactory, pki: PKI, tmp_path: Path, form: str) -> None:
    tree = write_files(tmp_path / "rules", E08_TREE)
    ran = tmp_path / "ran"
    # prog notes who it ran for, then shows its environment.
    prog = ("/bin/sh", "-c", 'echo "$TCPREMOTEIP" >> "$0"; exec /usr/bin/env', str(ran))
    env = {**pki.env(), "EMPTY": "preset", "TWOLINES": "preset", "OTHER": "kept"}
    srv = server("-v", "-H", *rules_option(form, tree), "127.0.0.1", "0", *prog, env=env)

    one = attempt(srv.port, "127.0.0.1")
    assert one.env["FOO"] == "bar"
    assert one.env["TWOLINES"] == "first"
    assert "EMPTY" not in one.env  # an empty file unsets a variable the server had
    assert one.env["OTHER"] == "kept"
    assert one.env["TCPREMOTEIP"] == "127.0.0.1"
    assert logged(srv, f"info: allow 127.0.0.1_{one.port}")

    two = attempt(srv.port, "127.0.0.2")  # deny rule
    three = attempt(srv.port, "127.0.0.3")  # no rule, and -H: no reversedns rules
    assert two.denied
    assert three.denied
    assert closed_without_a_byte(srv.port, "127.0.0.2")
    assert closed_without_a_byte(srv.port, "127.0.0.3")
    assert srv.wait_log(f"info: deny 127.0.0.2_{two.port}")
    assert srv.wait_log(f"info: deny 127.0.0.3_{three.port}")
    assert ran.read_text() == "127.0.0.1\n"  # prog never ran for the denied ones
    assert not logged(srv, "accept 127.0.0.2_") and not logged(srv, "accept 127.0.0.3_")
    assert srv.proc.poll() is None


def test_deny_is_silent_at_default_verbosity(server: ServerFactory, tmp_path: Path) -> None:
    tree = write_files(tmp_path / "rules", E08_TREE)
    srv = server("-H", "-i", str(tree), "127.0.0.1", "0", *ENV_PROG)
    denied = [attempt(srv.port, source) for source in ("127.0.0.2", "127.0.0.3")]
    assert all(outcome.denied for outcome in denied)
    assert attempt(srv.port, "127.0.0.1").env["FOO"] == "bar"  # the server is done with them
    assert about(srv, denied[0]) == about(srv, denied[1]) == []


@pytest.mark.parametrize("form", FORMS)
def test_longest_prefix_wins(server: ServerFactory, tmp_path: Path, form: str) -> None:
    tree = write_files(
        tmp_path / "rules",
        {
            "ip4/0.0.0.0_0/deny": "",
            "ip4/127.0.0.0_8/allow": "",
            "ip4/127.0.0.0_8/env/WHICH": "8\n",
            "ip4/127.0.0.2_31/allow": "",  # 127.0.0.2 and 127.0.0.3
            "ip4/127.0.0.2_31/env/WHICH": "31\n",
            "ip4/127.0.0.2_32/deny": "",
        },
    )
    srv = server("-H", *rules_option(form, tree), "127.0.0.1", "0", *ENV_PROG)
    assert attempt(srv.port, "127.0.0.1").env["WHICH"] == "8"
    assert attempt(srv.port, "127.0.0.2").denied  # the /32 deny beats both allows
    assert attempt(srv.port, "127.0.0.3").env["WHICH"] == "31"


@pytest.mark.parametrize("form", ["dir", "cdb-ours"])
def test_ipv6_rules(server: ServerFactory, tmp_path: Path, form: str) -> None:
    files = {
        "ip6/::_0/deny": "",
        "ip6/::_96/allow": "",
        "ip6/::_96/env/WHICH": "96\n",
        "ip6/::1_128/allow": "",
        "ip6/::1_128/env/WHICH": "128\n",
    }
    tree = write_files(tmp_path / "rules", files)
    srv = server("-H", *rules_option(form, tree), "::1", "0", *ENV_PROG)

    def now() -> Outcome:
        if form != "dir":
            replace_cdb(OUR_CDB_FROM_FS, tree, tree.with_name("rules.cdb"))
        return attempt(srv.port, "::1", host="::1")

    assert now().env["WHICH"] == "128"
    shutil.rmtree(tree / "ip6/::1_128")
    assert now().env["WHICH"] == "96"  # ::1 in its /96 network, written ::
    shutil.rmtree(tree / "ip6/::_96")
    assert now().denied


def test_rules_directory_and_file_are_exclusive(pki: PKI, tmp_path: Path) -> None:
    for first, second in (("-i", "-x"), ("-x", "-i")):
        done = run_command(
            [
                S6_TLSSERVER,
                first,
                str(tmp_path),
                second,
                str(tmp_path / "x.cdb"),
                "127.0.0.1",
                "0",
                *ENV_PROG,
            ],
            env=pki.env(),
        )
        assert done.returncode == 100
        assert "s6-tlsserver: fatal: " in done.stderr
        assert "usage: s6-tlsserver" in done.stderr


# --- what an allow rule chooses: certificate, program -----------------------------


@pytest.mark.parametrize("form", FORMS)
def test_rule_chooses_the_certificate(
    server: ServerFactory, pki: PKI, tmp_path: Path, form: str
) -> None:
    tree = write_files(
        tmp_path / "rules",
        {
            "ip4/127.0.0.0_8/allow": "",
            "ip4/127.0.0.2_32/allow": "",
            "ip4/127.0.0.2_32/env/KEYFILE": f"{pki.alt.key}\n",
            "ip4/127.0.0.2_32/env/CERTFILE": f"{pki.alt.cert}\n",
        },
    )
    srv = server("-H", *rules_option(form, tree), "127.0.0.1", "0", *ENV_PROG)
    seen = {source: attempt(srv.port, source) for source in ("127.0.0.1", "127.0.0.2")}
    again = [attempt(srv.port, source) for source in ("127.0.0.3", "127.0.0.2")]
    assert seen["127.0.0.1"].cert == again[0].cert == pki.ec.cert_der_bytes
    assert seen["127.0.0.2"].cert == again[1].cert == pki.alt.cert_der_bytes
    # The rule's TLS files are cleaned from prog's environment like the server's.
    assert "KEYFILE" not in seen["127.0.0.2"].env
    assert "CERTFILE" not in seen["127.0.0.2"].env


@pytest.mark.parametrize("form", FORMS)
def test_exec_rule_keeps_tls(server: ServerFactory, tmp_path: Path, form: str) -> None:
    tree = write_files(
        tmp_path / "rules",
        {
            "ip4/127.0.0.1_32/allow": "",
            "ip4/127.0.0.2_32/allow": "",
            "ip4/127.0.0.2_32/env/VIA": "exec rule\n",
            # execline syntax: only execlineb -c runs this.
            "ip4/127.0.0.2_32/exec": "foreground { /usr/bin/env }\n/bin/cat\n",
        },
    )
    srv = server("-H", *rules_option(form, tree), "127.0.0.1", "0", *ENV_PROG)
    plain = attempt(srv.port, "127.0.0.1", send=b"ping\n")
    assert plain.output is not None and not plain.output.endswith(b"ping\n")
    assert "VIA" not in plain.env

    over = attempt(srv.port, "127.0.0.2", send=b"ping\n")
    assert over.output is not None
    assert over.output.endswith(b"\nping\n")  # cat echoed the client over TLS
    env = client.env_of(over.output.removesuffix(b"ping\n"))
    assert env["VIA"] == "exec rule"
    assert env["TCPREMOTEIP"] == "127.0.0.2"
    assert env["SSL_PROTOCOL"] in ("TLSv1.2", "TLSv1.3")
    assert "SSL_CIPHER" in env


# --- live changes ------------------------------------------------------------------


def test_rules_directory_edits_apply_at_once(server: ServerFactory, tmp_path: Path) -> None:
    tree = write_files(
        tmp_path / "rules", {"ip4/127.0.0.0_8/allow": "", "ip4/127.0.0.0_8/env/V": "1"}
    )
    srv = server("-H", "-i", str(tree), "127.0.0.1", "0", *ENV_PROG)
    assert attempt(srv.port, "127.0.0.2").env["V"] == "1"

    (tree / "ip4/127.0.0.0_8/env/V").write_text("2\n")
    assert attempt(srv.port, "127.0.0.2").env["V"] == "2"

    write_files(tree, {"ip4/127.0.0.2_32/deny": ""})
    assert attempt(srv.port, "127.0.0.2").denied
    assert attempt(srv.port, "127.0.0.1").env["V"] == "2"

    shutil.rmtree(tree / "ip4/127.0.0.2_32")
    assert attempt(srv.port, "127.0.0.2").env["V"] == "2"


def test_missing_rules_directory_denies_until_created(
    server: ServerFactory, tmp_path: Path
) -> None:
    tree = tmp_path / "rules"
    srv = server("-H", "-i", str(tree), "127.0.0.1", "0", *ENV_PROG)
    assert attempt(srv.port, "127.0.0.1").denied  # as upstream: no directory, no rule
    write_files(tree, {"ip4/127.0.0.1_32/allow": ""})
    assert attempt(srv.port, "127.0.0.1").env["TCPREMOTEIP"] == "127.0.0.1"


@pytest.mark.parametrize(
    "compiler",
    [
        OUR_CDB_FROM_FS,
        pytest.param(
            SKARNET_CDB_FROM_FS,
            marks=pytest.mark.skipif(
                not os.path.exists(SKARNET_CDB_FROM_FS), reason="skarnet's s6 is not installed"
            ),
        ),
    ],
)
def test_replaced_cdb_applies_to_the_next_connection(
    server: ServerFactory, tmp_path: Path, compiler: str
) -> None:
    tree = write_files(
        tmp_path / "rules", {"ip4/127.0.0.0_8/allow": "", "ip4/127.0.0.0_8/env/V": "1"}
    )
    cdb = tmp_path / "rules.cdb"
    compile_cdb(compiler, tree, cdb)
    srv = server("-H", "-x", str(cdb), "127.0.0.1", "0", *ENV_PROG)
    assert attempt(srv.port, "127.0.0.2").env["V"] == "1"

    write_files(tree, {"ip4/127.0.0.2_32/deny": "", "ip4/127.0.0.0_8/env/V": "2"})
    replace_cdb(compiler, tree, cdb)
    assert attempt(srv.port, "127.0.0.2").denied
    assert attempt(srv.port, "127.0.0.1").env["V"] == "2"

    # The compiler replaces the file atomically by itself too.
    shutil.rmtree(tree / "ip4/127.0.0.2_32")
    (tree / "ip4/127.0.0.0_8/env/V").write_text("3\n")
    compile_cdb(compiler, tree, cdb)
    assert attempt(srv.port, "127.0.0.2").env["V"] == "3"
    assert srv.proc.poll() is None


class OpenWatch:
    """Names of the files opened in a directory, by anyone (inotify IN_OPEN)."""

    IN_OPEN = 0x20
    EVENT = struct.Struct("iIII")  # wd, mask, cookie, length of the name that follows

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, os.fsencode(directory), self.IN_OPEN) < 0:
            pytest.skip(f"inotify: {os.strerror(ctypes.get_errno())}")

    def opened(self) -> list[str]:
        """The files opened since the last call, in order."""
        names: list[str] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return names
            offset = 0
            while offset < len(data):
                *_, length = self.EVENT.unpack_from(data, offset)
                offset += self.EVENT.size
                names.append(os.fsdecode(data[offset : offset + length].rstrip(b"\0")))
                offset += length

    def close(self) -> None:
        os.close(self.fd)


def test_unchanged_cdb_is_not_read_again(server: ServerFactory, tmp_path: Path) -> None:
    tree = write_files(tmp_path / "rules", {"ip4/127.0.0.0_8/allow": ""})
    watched = tmp_path / "watched"
    watched.mkdir()
    cdb = watched / "rules.cdb"
    compile_cdb(OUR_CDB_FROM_FS, tree, cdb)
    watch = OpenWatch(watched)
    try:
        srv = server("-H", "-x", str(cdb), "127.0.0.1", "0", *ENV_PROG)
        for _ in range(3):
            assert not attempt(srv.port, "127.0.0.1").denied
        assert watch.opened() == ["rules.cdb"]
        for _ in range(3):
            assert not attempt(srv.port, "127.0.0.2").denied
        assert watch.opened() == []
        replace_cdb(OUR_CDB_FROM_FS, tree, cdb)
        watch.opened()
        for _ in range(3):
            assert not attempt(srv.port, "127.0.0.1").denied
        assert watch.opened() == ["rules.cdb"]
    finally:
        watch.close()


# --- failing closed ------------------------------------------------------------------


def _truncated(good: bytes) -> bytes:
    # The 2048-byte header survives, the first record is cut inside its key.
    return good[:2056]


@pytest.mark.parametrize("garbage", ["text", "truncated"])
def test_corrupt_cdb_denies_and_recovers(
    server: ServerFactory, tmp_path: Path, garbage: str
) -> None:
    tree = write_files(tmp_path / "rules", {"ip4/127.0.0.0_8/allow": ""})
    cdb = tmp_path / "rules.cdb"
    compile_cdb(OUR_CDB_FROM_FS, tree, cdb)
    good = cdb.read_bytes()
    srv = server("-H", "-x", str(cdb), "127.0.0.1", "0", *ENV_PROG)  # default verbosity
    assert not attempt(srv.port, "127.0.0.1").denied

    bad = tmp_path / "bad.cdb"
    bad.write_bytes(b"this is not a cdb\n" if garbage == "text" else _truncated(good))
    os.rename(bad, cdb)
    for count, source in enumerate(("127.0.0.1", "127.0.0.2"), 1):
        denied = attempt(srv.port, source)
        assert denied.denied
        assert srv.wait_log(str(cdb), count=count)
        [line] = about(srv, denied)  # one line per denied connection
        assert "warning" in line and str(cdb) in line
    assert srv.proc.poll() is None

    replace_cdb(OUR_CDB_FROM_FS, tree, cdb)
    assert attempt(srv.port, "127.0.0.1").env["TCPREMOTEIP"] == "127.0.0.1"
    assert len(logged(srv, str(cdb))) == 2


def test_missing_cdb_at_start_denies_until_created(server: ServerFactory, tmp_path: Path) -> None:
    cdb = tmp_path / "later.cdb"
    srv = server("-H", "-x", str(cdb), "127.0.0.1", "0", *ENV_PROG)
    denied = attempt(srv.port, "127.0.0.1")
    assert denied.denied
    assert srv.wait_log(str(cdb))
    [line] = about(srv, denied)
    assert "warning" in line and str(cdb) in line and "No such file or directory" in line
    tree = write_files(tmp_path / "rules", {"ip4/127.0.0.1_32/allow": ""})
    compile_cdb(OUR_CDB_FROM_FS, tree, cdb)
    assert attempt(srv.port, "127.0.0.1").env["TCPREMOTEIP"] == "127.0.0.1"
    assert len(logged(srv, str(cdb))) == 1


@pytest.fixture
def as_nobody() -> Iterator[list[Running]]:
    """Servers started by start_as_nobody, killed after the test."""
    started: list[Running] = []
    yield started
    for running in started:
        running.stop()


def start_as_nobody(args: list[str], env: dict[str, str], log: Path) -> Running:
    """Start s6-tlsserver with uid and gid 65534 and no groups, and wait for -1."""
    as_nobody = ["setpriv", "--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"]
    return start(args, env, log, wrapper=as_nobody)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the server as another user")
def test_unreadable_rules_deny_and_recover(
    pki: PKI, shared_dir: Path, tmp_path: Path, as_nobody: list[Running]
) -> None:
    for name in ("key", "cert"):
        shutil.copy(getattr(pki.ec, name), shared_dir / name)
        (shared_dir / name).chmod(0o644)
    tree = write_files(
        shared_dir / "rules", {"ip4/127.0.0.0_8/allow": "", "ip4/127.0.0.0_8/env/V": "1\n"}
    )
    tree.chmod(0o000)
    env = {"KEYFILE": str(shared_dir / "key"), "CERTFILE": str(shared_dir / "cert")}
    srv = start_as_nobody(
        ["-H", "-i", str(tree), "127.0.0.1", "0", *ENV_PROG], env, tmp_path / "log"
    )
    as_nobody.append(srv)

    denied = attempt(srv.port, "127.0.0.1")
    assert denied.denied
    assert srv.wait_log(str(tree))
    [line] = about(srv, denied)
    assert "warning" in line and str(tree) in line and "Permission denied" in line

    tree.chmod(0o755)
    assert attempt(srv.port, "127.0.0.1").env["V"] == "1"

    # An unreadable env/ must not let the client in without the rule's variables.
    envdir = tree / "ip4/127.0.0.0_8/env"
    envdir.chmod(0o000)
    denied = attempt(srv.port, "127.0.0.1")
    assert denied.denied
    assert srv.wait_log(str(envdir))
    [line] = about(srv, denied)
    assert "warning" in line and str(envdir) in line
    envdir.chmod(0o755)
    assert attempt(srv.port, "127.0.0.1").env["V"] == "1"
    assert len(logged(srv, str(tree))) == 2
    assert srv.proc.poll() is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the server as another user")
def test_unreadable_cdb_denies_and_recovers(
    pki: PKI, shared_dir: Path, tmp_path: Path, as_nobody: list[Running]
) -> None:
    for name in ("key", "cert"):
        shutil.copy(getattr(pki.ec, name), shared_dir / name)
        (shared_dir / name).chmod(0o644)
    tree = write_files(tmp_path / "rules", {"ip4/127.0.0.0_8/allow": ""})
    cdb = shared_dir / "rules.cdb"
    compile_cdb(OUR_CDB_FROM_FS, tree, cdb)  # mode 0600, owned by root
    env = {"KEYFILE": str(shared_dir / "key"), "CERTFILE": str(shared_dir / "cert")}
    srv = start_as_nobody(
        ["-H", "-x", str(cdb), "127.0.0.1", "0", *ENV_PROG], env, tmp_path / "log"
    )
    as_nobody.append(srv)

    denied = attempt(srv.port, "127.0.0.1")
    assert denied.denied
    assert srv.wait_log(str(cdb))
    [line] = about(srv, denied)
    assert "warning" in line and str(cdb) in line and "Permission denied" in line
    cdb.chmod(0o644)
    assert not attempt(srv.port, "127.0.0.1").denied
    assert len(logged(srv, str(cdb))) == 1
