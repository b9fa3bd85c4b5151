"""Deployment: PROXY protocol behind a real haproxy, sockets handed in, supervision."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support import client, units
from tests.support.notify import notify_socket
from tests.support.probes import listening
from tests.support.server import BIN, S6_TLSSERVER, free_port, wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "rules-examples"
ENV_PROG = ("/usr/bin/env",)


class Proc:
    """A helper process, killed by pid (with its process group) at the end."""

    def __init__(self, argv, **kw):
        self.p = subprocess.Popen(argv, start_new_session=True, **kw)

    def stop(self):
        try:
            os.killpg(self.p.pid, 9)
        except ProcessLookupError:
            pass
        self.p.wait(timeout=5)


@pytest.fixture
def procs():
    started: list[Proc] = []
    yield lambda argv, **kw: started.append(Proc(argv, **kw)) or started[-1]
    for p in started:
        p.stop()


def haproxy_config(tmp_path: Path, front: int, back: int, send: str) -> Path:
    """The example configuration, pointed at loopback ports for the test."""
    text = (EXAMPLES / "haproxy" / "haproxy.cfg").read_text()
    text = text.replace("0.0.0.0:443", f"127.0.0.1:{front}")
    text = re.sub(r"    server node1 .*\n", f"    server node1 127.0.0.1:{back} {send}\n", text)
    text = re.sub(r"    server node2 .*\n", "", text)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    return cfg


@pytest.mark.skipif(not shutil.which("haproxy"), reason="haproxy not installed")
@pytest.mark.parametrize("send", ["send-proxy", "send-proxy-v2"])
def test_behind_haproxy(server, procs, tmp_path, send):
    srv = server("-L", "-H", "127.0.0.1", "0", *ENV_PROG)
    front = free_port()
    procs(
        ["haproxy", "-db", "-f", str(haproxy_config(tmp_path, front, srv.port, send))],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert wait_for(lambda: listening(front))
    with client.connect(front, source="127.0.0.3") as s:
        mine = s.getsockname()
        got = client.env_of(client.read_all(s)[0])
    assert (got["TCPREMOTEIP"], got["TCPREMOTEPORT"]) == ("127.0.0.3", str(mine[1]))
    assert (got["TCPLOCALIP"], got["TCPLOCALPORT"]) == ("127.0.0.1", str(front))


def test_direct_client_without_header_is_dropped(server, tmp_path):
    marker = tmp_path / "ran"
    srv = server("-L", "-H", "127.0.0.1", "0", "/bin/sh", "-c", f"touch {marker}")
    with pytest.raises((OSError, ConnectionError)):
        client.connect(srv.port).close()
    assert srv.wait_log("bad PROXY header")
    assert len(srv.lines()) == 1 and not marker.exists()


def test_proxy_header_then_tls_in_one_write(server):
    srv = server("-L", "-H", "127.0.0.1", "0", *ENV_PROG)
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    raw.sendall(b"PROXY TCP6 2001:db8::1 ::1 4242 443\r\n")
    with client.context().wrap_socket(raw, suppress_ragged_eofs=False) as s:
        got = client.env_of(client.read_all(s)[0])
    assert (got["TCPREMOTEIP"], got["TCPREMOTEPORT"]) == ("2001:db8::1", "4242")
    assert (got["TCPLOCALIP"], got["TCPLOCALPORT"]) == ("::1", "443")


def test_rules_judge_the_proxy(server, tmp_path):
    rules = tmp_path / "rules"
    (rules / "ip4" / "127.0.0.1_32").mkdir(parents=True)
    (rules / "ip4" / "127.0.0.1_32" / "allow").touch()
    srv = server("-v", "-L", "-H", "-i", str(rules), "127.0.0.1", "0", *ENV_PROG)
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    raw.sendall(b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 443\r\n")
    with client.context().wrap_socket(raw, suppress_ragged_eofs=False) as s:
        assert client.env_of(client.read_all(s)[0])["TCPREMOTEIP"] == "192.0.2.7"
    # a peer that is not a trusted proxy never gets its header read
    raw = socket.socket()
    raw.bind(("127.0.0.2", 0))
    raw.connect(("127.0.0.1", srv.port))
    raw.sendall(b"PROXY TCP4 127.0.0.1 127.0.0.1 5555 443\r\n")
    raw.settimeout(5)
    try:
        assert raw.recv(100) == b""
    except ConnectionResetError:
        pass  # closed with our header unread: a reset is as good as an EOF
    assert srv.wait_log("deny 127.0.0.2_")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_listening_socket_on_fd_0(pki, tmp_path, workers):
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]
    proc = subprocess.Popen(
        [S6_TLSSERVER, "-H", "-v", "0.0.0.0", "0", *ENV_PROG],
        stdin=lsock.fileno(),
        stderr=(tmp_path / "log").open("wb"),
        env={"PATH": "/usr/bin:/bin", "S6TLS_WORKERS": workers, **pki.env()},
        start_new_session=True,
    )
    lsock.close()
    try:
        assert wait_for(lambda: "starting" in (tmp_path / "log").read_text())
        assert f"bound to ip 127.0.0.1 port {port}" in (tmp_path / "log").read_text()
        for _ in range(3):
            with client.connect(port) as s:
                got = client.env_of(client.read_all(s)[0])
            assert got["TCPLOCALPORT"] == str(port)
        assert "S6TLS_WORKERS" not in got
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


@pytest.mark.skipif(
    not shutil.which("systemd-socket-activate"), reason="no systemd-socket-activate"
)
@pytest.mark.skipif(os.geteuid() != 0, reason="the unit's example runs as root (TLS_UID, -u -g)")
@pytest.mark.parametrize("workers", ["1", "2"])
def test_systemd_socket_activation_example(pki, procs, tmp_path, workers):
    """s6tls@.service's command line, with example.conf, on a socket systemd
    would pass, and its NOTIFY_SOCKET (Type=notify)."""
    example = (EXAMPLES / "run-systemd" / "example.conf").read_text()
    conf = units.configure(
        example, KEYFILE=str(pki.ec.key), CERTFILE=str(pki.ec.cert), PROG="/usr/bin/env"
    )
    (tmp_path / "etc" / "s6tls").mkdir(parents=True)
    (tmp_path / "etc" / "s6tls" / "t.conf").write_text(f"{conf}S6TLS_WORKERS={workers}\n")
    argv, env = units.service_command(EXAMPLES / "run-systemd" / "s6tls@.service", "t", tmp_path)
    argv[argv.index("/usr/bin/s6-tlsserver")] = S6_TLSSERVER  # this checkout's
    notify = notify_socket("path", tmp_path)
    env["NOTIFY_SOCKET"] = notify.address
    port = free_port()
    log = (tmp_path / "log").open("wb")
    started = procs(
        [
            "systemd-socket-activate",
            "-l",
            f"127.0.0.1:{port}",
            *[f"-E{k}={v}" for k, v in env.items()],
            *argv,
        ],
        stderr=log,
        stdout=subprocess.DEVNULL,
        env=env,
    )
    assert wait_for(lambda: listening(port))
    for _ in range(3):
        with client.connect(port) as s:
            got = client.env_of(client.read_all(s)[0])
        assert got["TCPLOCALPORT"] == str(port)
    assert "LISTEN_FDS" not in got and "LISTEN_PID" not in got
    # env -u: the command line's settings stay out of prog's environment
    assert not units.NOT_FOR_PROG & set(got)
    # ready, said by the unit's main process (NotifyAccess=main), and only that
    assert notify.receive() == ("READY=1", started.p.pid)
    assert "NOTIFY_SOCKET" not in got
    assert notify.receive(timeout=0.2) is None
    notify.close()


def test_the_unit_waits_for_readiness():
    """Type=notify: systemctl start returns once s6-tlsserver serves and reacts
    to its signals; only s6-tlsserver is heard (NotifyAccess=main). The
    package's unit is this one (debian/ links to it)."""
    example = EXAMPLES / "run-systemd" / "s6tls@.service"
    packaged = EXAMPLES.parent / "debian" / "s6tls@.service"
    assert packaged.read_text() == example.read_text()
    unit = example.read_text()
    assert units.directive(unit, "Type") == "notify"
    assert units.directive(unit, "NotifyAccess") == "main"


def example_script(name: str, tmp_path: Path, pki, port: int) -> Path:
    """A run script from the examples, pointed at the test's files and port."""
    text = (EXAMPLES / name / "run").read_text()
    text = text.replace("/etc/ssl/private/server.key", str(pki.ec.key))
    text = text.replace("/etc/ssl/certs/server.pem", str(pki.ec.cert))
    text = text.replace("0.0.0.0 443", f"127.0.0.1 {port}")
    text = text.replace("/usr/local/bin/myprog", "/usr/bin/env")
    text = text.replace("/usr/bin/s6-tlsserver", S6_TLSSERVER)  # this checkout's
    service = tmp_path / name
    service.mkdir()
    for extra in (EXAMPLES / name).iterdir():
        if extra.name != "run":
            shutil.copy(extra, service / extra.name)
    (service / "run").write_text(text)
    (service / "run").chmod(0o755)
    return service


@pytest.mark.skipif(not shutil.which("s6-supervise"), reason="s6 not installed")
def test_s6_run_script_with_readiness(pki, procs, tmp_path):
    port = free_port()
    service = example_script("run-s6", tmp_path, pki, port)
    env = {"PATH": f"{BIN}:/usr/bin:/bin"}
    procs(
        ["s6-supervise", str(service)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert wait_for(lambda: (service / "supervise" / "status").exists())
    r = subprocess.run(["s6-svwait", "-U", "-t", "10000", str(service)], timeout=15)
    assert r.returncode == 0  # ready: s6-tlsserver's -1 line reached notification-fd
    with client.connect(port) as s:
        assert client.env_of(client.read_all(s)[0])["TCPLOCALPORT"] == str(port)
    subprocess.run(["s6-svc", "-wD", "-T", "10000", "-d", str(service)], timeout=15, check=True)
    assert not listening(port)
    subprocess.run(["s6-svc", "-x", str(service)], timeout=5)


def test_runit_run_script(pki, procs, tmp_path):
    port = free_port()
    service = example_script("run-runit", tmp_path, pki, port)
    procs(
        [str(service / "run")],
        env={"PATH": f"{BIN}:/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert wait_for(lambda: listening(port))
    with client.connect(port) as s:
        assert client.env_of(client.read_all(s)[0])["TCPLOCALPORT"] == str(port)
