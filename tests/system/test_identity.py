"""Identity and privilege separation: -u -g -G -U, TLS_UID/TLS_GID (run as root)."""

from __future__ import annotations

import json
import os
import shutil
import socket

import pytest

from tests.support import client
from tests.support.server import S6_TLSSERVER, run_command

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

SHOW_IDS = ("/bin/sh", "-c", "grep -E '^(Uid|Gid|Groups):' /proc/self/status; env")


def ids_of(status_text: str) -> dict[str, list[str]]:
    out = {}
    for line in status_text.splitlines():
        name, _, value = line.partition(":")
        if name in ("Uid", "Gid", "Groups"):
            out[name] = value.split()
    return out


def proc_ids(pid: int) -> dict[str, list[str]]:
    with open(f"/proc/{pid}/status") as f:
        return ids_of(f.read())


def session(port: int) -> tuple[dict[str, list[str]], dict[str, str]]:
    with client.connect(port) as s:
        text = client.read_all(s)[0].decode()
    return ids_of(text), client.env_of("\n".join(x for x in text.splitlines() if "=" in x).encode())


def root_only_pair(pair, directory):
    key, cert = directory / "root.key", directory / "root.pem"
    shutil.copy(pair.key, key)
    shutil.copy(pair.cert, cert)
    key.chmod(0o600)
    os.chmod(directory, 0o700)  # not even searchable by TLS_UID
    return key, cert


def test_prog_identity_from_options(server):
    srv = server("-H", "-u", "1000", "-g", "1001", "-G", "1002,1003", "127.0.0.1", "0", *SHOW_IDS)
    ids, _ = session(srv.port)
    assert ids == {"Uid": ["1000"] * 4, "Gid": ["1001"] * 4, "Groups": ["1002", "1003"]}


def test_prog_identity_from_environment_with_s6_envuidgid(pki):
    if not os.path.exists("/usr/bin/s6-envuidgid"):
        pytest.skip("s6 not installed")
    import subprocess

    proc = subprocess.Popen(
        [
            "/usr/bin/s6-envuidgid",
            "nobody",
            S6_TLSSERVER,
            "-1",
            "-H",
            "-U",
            "127.0.0.1",
            "0",
            *SHOW_IDS,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={"PATH": os.environ["PATH"], **pki.env()},
    )
    try:
        port = int(proc.stdout.readline())
        ids, env = session(port)
        assert ids["Uid"] == ["65534"] * 4 and ids["Gid"] == ["65534"] * 4
        assert not {"UID", "GID", "GIDLIST"} & env.keys()
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def test_tls_engine_runs_as_tls_uid_with_a_root_only_key(server, pki, tmp_path):
    keydir = tmp_path / "private"
    keydir.mkdir()
    key, cert = root_only_pair(pki.ec, keydir)
    env = {"KEYFILE": str(key), "CERTFILE": str(cert), "TLS_UID": "65534", "TLS_GID": "65533"}
    srv = server("-H", "-u", "1000", "-g", "1000", "127.0.0.1", "0", *SHOW_IDS, env=env)
    assert proc_ids(srv.pid) == {"Uid": ["65534"] * 4, "Gid": ["65533"] * 4, "Groups": []}
    ids, prog_env = session(srv.port)
    assert ids == {"Uid": ["1000"] * 4, "Gid": ["1000"] * 4, "Groups": []}
    assert "TLS_UID" not in prog_env and "KEYFILE" not in prog_env
    # Rotation of the root-only pair: the helper reads it for the server.
    shutil.copy(pki.rsa.key, keydir / "new.key")
    shutil.copy(pki.rsa.cert, keydir / "new.pem")
    os.rename(keydir / "new.key", key)
    os.rename(keydir / "new.pem", cert)
    with client.connect(srv.port) as s:
        assert s.getpeercert(binary_form=True) == pki.rsa.cert_der_bytes
        client.read_all(s)


def test_identity_options_need_root(pki):
    r = run_command(
        [
            "setpriv",
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            S6_TLSSERVER,
            "-u",
            "1000",
            "127.0.0.1",
            "0",
            "cat",
        ],
        {"KEYFILE": str(pki.ec.cert), "CERTFILE": str(pki.ec.cert)},
    )
    assert r.returncode == 100
    assert r.stderr == "s6-tlsserver: fatal: -u, -g, -G and -U need the server to run as root\n"


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("-u", "x"), {}, "uid must be an unsigned integer"),
        (("-G", "1,a"), {}, "gidlist must be an unsigned integer"),
        ((), {"TLS_UID": "65534"}, "TLS_UID and TLS_GID must be set together"),
        ((), {"TLS_UID": "nobody", "TLS_GID": "1"}, "TLS_UID must be an unsigned integer"),
    ],
)
def test_bad_identity_values(pki, args, env, message):
    r = run_command([S6_TLSSERVER, *args, "127.0.0.1", "0", "cat"], {**pki.env(), **env})
    assert r.returncode == 100
    assert r.stderr.splitlines()[0] == f"s6-tlsserver: fatal: {message}"


# -- the helper refuses what the configuration does not allow


@pytest.fixture
def helper(pki, tmp_path):
    """A real root helper process, as the server forks it, talked to directly."""
    from s6tls.options import parse
    from s6tls.rules import DirRules
    from s6tls.shell.privsep.helper import Helper

    rules = tmp_path / "rules"
    (rules / "ip4" / "127.0.0.1_32").mkdir(parents=True)
    (rules / "ip4" / "127.0.0.1_32" / "allow").touch()
    opts = parse(["-H", "-i", str(rules), "-u", "1000", "127.0.0.1", "0", "/bin/true"])
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        ours.close()
        Helper(theirs, opts, pki.env(), DirRules(str(rules))).serve()
    theirs.close()

    def ask(request, fds=()):
        """The helper's reply, with the descriptors it passed as "fds"."""
        socket.send_fds(ours, [json.dumps(request).encode()], list(fds))
        while True:
            data, passed, _, _ = socket.recv_fds(ours, 1 << 20, 2)
            reply = json.loads(data)
            if "exit" not in reply:
                return {**reply, "fds": passed} if passed else reply

    yield ask
    ours.close()
    os.kill(pid, 9)
    os.waitpid(pid, 0)


GOOD_CONN = {
    "local_ip": "127.0.0.1",
    "local_port": 1,
    "remote_ip": "127.0.0.1",
    "remote_port": 2,
    "connnum": 0,
}
GOOD_INFO = {"protocol": "TLSv1.3", "cipher": "x"}


def test_helper_opens_only_configured_files(helper, pki):
    (fd,) = helper({"op": "open", "path": str(pki.ec.key)})["fds"]
    with open(fd, "rb") as f:
        assert f.read() == pki.ec.key.read_bytes()
    for path in ("/etc/shadow", str(pki.rsa.key), "/proc/self/environ"):
        assert "not a file the configuration names" in helper({"op": "open", "path": path})["error"]


def test_helper_opens_no_fifo_and_no_device(tmp_path):
    """A KEYFILE that names a FIFO or a device neither blocks the helper nor
    streams forever: only regular files are opened."""
    from s6tls.options import parse
    from s6tls.shell.privsep.helper import Helper

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    env = {"KEYFILE": str(fifo), "CERTFILE": "/dev/zero"}
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        ours.close()
        Helper(theirs, parse(["-H", "127.0.0.1", "0", "/bin/true"]), env, None).serve()
    theirs.close()
    try:
        ours.settimeout(5)
        for path in (str(fifo), "/dev/zero"):
            socket.send_fds(ours, [json.dumps({"op": "open", "path": path}).encode()], [])
            data, fds, _, _ = socket.recv_fds(ours, 1 << 20, 2)
            assert (json.loads(data)["error"], fds) == ("not a regular file", [])
    finally:
        ours.close()
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_helper_spawns_only_what_is_configured(helper):
    r, w = os.pipe()
    try:
        good = {"op": "spawn", "conn": GOOD_CONN, "info": GOOD_INFO, "keys": ["ip4/127.0.0.1_32"]}
        assert "pid" in helper(good, [r, w])
        forged = [
            {"op": "spawn", "conn": GOOD_CONN, "info": GOOD_INFO},  # no rule's keys
            {**good, "keys": ["ip4/0.0.0.0_0"]},  # a rule the ruleset does not have
            {**good, "keys": ["ip4/127.0.0.1_32", "ip4/127.0.0.1_32"]},  # two of one stage
            {**good, "keys": "ip4/127.0.0.1_32"},
            {
                "op": "spawn",
                "conn": {**GOOD_CONN, "remote_host": "a\0LD_PRELOAD=/x"},
                "info": GOOD_INFO,
            },
            {"op": "spawn", "conn": {**GOOD_CONN, "local_port": 70000}, "info": GOOD_INFO},
            {"op": "spawn", "argv": ["/bin/sh"], "info": GOOD_INFO},
            {"op": "exec", "argv": ["/bin/sh"]},
            "not even an object",
        ]
        for request in forged:
            assert "error" in helper(request, [r, w]), request
        assert helper({"op": "kill", "pid": 1, "signal": 9}) == {
            "id": None
        }  # not its child: ignored
    finally:
        os.close(r)
        os.close(w)
