"""Start-up errors through the real command line: exit codes and one-line reasons.

Bad usage exits 100 with the reason and the usage line; a system failure (bind,
unusable key files) exits 111 naming what failed (SPEC.md §1, §7;
REFERENCE-BEHAVIOUR.md §16, transcripts E13, E14). Never a traceback.
"""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest

from tests.support.server import S6_TLSSERVER, run_command

FATAL = "s6-tlsserver: fatal: "
USAGE = "s6-tlsserver: usage: s6-tlsserver [ options ]"


def run_server(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the server with args; a start-up error makes it exit at once."""
    return run_command([S6_TLSSERVER, "-H", *args], env=env, timeout=20)


def check_fatal(r: subprocess.CompletedProcess[str], rc: int, reason: str, usage: bool) -> None:
    """One fatal line giving reason, the usage line if asked, nothing else."""
    assert r.returncode == rc, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines[0].startswith(FATAL), r.stderr
    assert reason in lines[0]
    if usage:
        assert len(lines) == 2 and lines[1].startswith(USAGE), r.stderr
    else:
        assert len(lines) == 1, r.stderr


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ([], "too few arguments"),
        (["127.0.0.1", "0"], "too few arguments"),
        (["-X", "127.0.0.1", "0", "/bin/cat"], "unrecognized short option: X"),
        (
            ["-c", "abc", "127.0.0.1", "0", "/bin/cat"],
            "global-max-connections must be an unsigned integer",
        ),
        (
            ["-K", "abc", "127.0.0.1", "0", "/bin/cat"],
            "handshake-timeout must be an unsigned integer",
        ),
        (["1.2.3", "0", "/bin/cat"], "1.2.3"),
        (["localhost", "0", "/bin/cat"], "localhost"),
        (["127.0.0.1", "abc", "/bin/cat"], "port"),
        (["127.0.0.1", "70000", "/bin/cat"], "70000"),
        (["-i", "/nonexistent", "-x", "/nonexistent.cdb", "127.0.0.1", "0", "/bin/cat"], "-x"),
    ],
)
def test_bad_usage_exits_100_with_usage(pki, args, reason):
    check_fatal(run_server(args, pki.env()), 100, reason, usage=True)


def test_port_in_use_exits_111(pki):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        r = run_server(["127.0.0.1", str(port), "/bin/cat"], pki.env())
    check_fatal(
        r, 111, f"unable to bind to 127.0.0.1 port {port}: Address already in use", usage=False
    )


@pytest.mark.parametrize(
    ("unset", "reason"), [("KEYFILE", "KEYFILE not set"), ("CERTFILE", "CERTFILE not set")]
)
def test_unset_key_or_certificate_exits_100(pki, unset, reason):
    env = pki.env()
    del env[unset]
    check_fatal(run_server(["127.0.0.1", "0", "/bin/cat"], env), 100, reason, usage=False)


def test_empty_key_variable_counts_as_unset(pki):
    env = {**pki.env(), "KEYFILE": ""}
    r = run_server(["127.0.0.1", "0", "/bin/cat"], env)
    check_fatal(r, 100, "KEYFILE not set", usage=False)


def test_client_certificates_need_trust_anchors(pki):
    r = run_server(["-Y", "127.0.0.1", "0", "/bin/cat"], pki.env())
    check_fatal(r, 100, "CADIR or CAFILE not set", usage=False)


@pytest.mark.parametrize("which", ["KEYFILE", "CERTFILE"])
def test_missing_file_exits_111_naming_it(pki, tmp_path, which):
    missing = str(tmp_path / "missing.pem")
    env = {**pki.env(), which: missing}
    r = run_server(["127.0.0.1", "0", "/bin/cat"], env)
    check_fatal(r, 111, missing, usage=False)
    assert "No such file or directory" in r.stderr


def test_key_that_is_not_a_key_exits_111(pki):
    env = {"KEYFILE": str(pki.ec.cert), "CERTFILE": str(pki.ec.cert)}
    r = run_server(["127.0.0.1", "0", "/bin/cat"], env)
    check_fatal(r, 111, str(pki.ec.cert), usage=False)


def test_key_certificate_mismatch_exits_111(pki):
    env = {"KEYFILE": str(pki.rsa.key), "CERTFILE": str(pki.ec.cert)}
    r = run_server(["127.0.0.1", "0", "/bin/cat"], env)
    check_fatal(r, 111, str(pki.rsa.key), usage=False)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_unreadable_key_exits_111(pki, shared_dir):
    key = shared_dir / "key.pem"
    cert = shared_dir / "cert.pem"
    shutil.copyfile(pki.ec.key, key)
    shutil.copyfile(pki.ec.cert, cert)
    key.chmod(0)
    cert.chmod(0o644)
    nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    argv = [*nobody, S6_TLSSERVER, "-H", "127.0.0.1", "0", "/bin/cat"]
    r = run_command(argv, env={"KEYFILE": str(key), "CERTFILE": str(cert)}, timeout=20)
    check_fatal(r, 111, str(key), usage=False)
    assert "Permission denied" in r.stderr
