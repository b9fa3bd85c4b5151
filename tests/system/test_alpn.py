"""Application protocols through the real server: the ALPN setting, strict
refusal (alert 120), SSL_ALPN_PROTOCOL, and the TLS stage of the rules
picking prog by SNI name or ALPN protocol (SPEC.md §4b).

Clients: ``openssl s_client -alpn``, ``curl --http2``/``--http1.1``, Python's
ssl, and a hand-driven one whose ClientHello is cut into many records and
TCP segments, or sent right behind a PROXY header.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support import client
from tests.support.server import S6_TLSSERVER, run_command, wait_for

if TYPE_CHECKING:
    from tests.conftest import PKI, ServerFactory

pytestmark = [pytest.mark.timeout(60), pytest.mark.both_engines]

ENV_PROG = ("/usr/bin/env",)
# An exec rule that says which service answered, and for which SNI name.
NAMED = 'importas -i n SSL_TLS_SNI_SERVERNAME printf "{} %s\\n" $n'


def write_rules(root: Path, files: dict[str, str]) -> Path:
    """A rules directory: each path (relative to root) with its content."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


def s_client(port: int, *args: str, data: str = "") -> tuple[str, str]:
    """openssl s_client's stdout and stderr, with data as its input."""
    r = run_command(
        [
            "sh",
            "-c",
            f'printf %s "$0" | openssl s_client -connect 127.0.0.1:{port} "$@"',
            data,
            *args,
        ],
        timeout=10,
    )
    return r.stdout, r.stderr


def fetch_env(port: int, alpn: list[str] | None = None, sni: str | None = None) -> dict[str, str]:
    ctx = client.context()
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    with client.connect(port, ctx=ctx, sni=sni) as s:
        return client.env_of(client.read_all(s)[0])


# -- the ALPN setting


def test_a_protocol_in_common_is_negotiated_and_told_to_prog(
    server: ServerFactory, pki: PKI
) -> None:
    srv = server("-H", "127.0.0.1", "0", *ENV_PROG, env={**pki.env(), "ALPN": "h2,http/1.1"})
    out, _ = s_client(srv.port, "-alpn", "http/1.1,h2", "-ign_eof")
    assert "ALPN protocol: h2" in out  # the server's preference
    assert "SSL_ALPN_PROTOCOL=h2" in out
    assert fetch_env(srv.port, ["http/1.1", "x"])["SSL_ALPN_PROTOCOL"] == "http/1.1"


def test_an_offer_without_a_protocol_in_common_gets_alert_120(
    server: ServerFactory, pki: PKI, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    prog = ("/bin/sh", "-c", f"touch {marker}; exec /usr/bin/env")
    srv = server("-H", "127.0.0.1", "0", *prog, env={**pki.env(), "ALPN": "h2,http/1.1"})
    _, err = s_client(srv.port, "-alpn", "imap,smtp")
    assert "alert no application protocol" in err and "alert number 120" in err
    assert srv.wait_log("no application protocol in common (offered: imap, smtp)")
    assert not marker.exists()
    # Python's client sees the alert too; the server goes on serving.
    ctx = client.context()
    ctx.set_alpn_protocols(["spdy/3"])
    with pytest.raises(ssl.SSLError, match="alert no application protocol"):
        client.connect(srv.port, ctx=ctx).close()
    assert not marker.exists()
    assert fetch_env(srv.port, ["h2"])["SSL_ALPN_PROTOCOL"] == "h2"


def test_a_client_offering_no_alpn_is_served_without_the_variable(
    server: ServerFactory, pki: PKI
) -> None:
    srv = server("-H", "127.0.0.1", "0", *ENV_PROG, env={**pki.env(), "ALPN": "h2"})
    got = fetch_env(srv.port)
    assert "SSL_PROTOCOL" in got and "SSL_ALPN_PROTOCOL" not in got


def test_without_the_setting_nothing_is_negotiated(server: ServerFactory, pki: PKI) -> None:
    srv = server("-H", "127.0.0.1", "0", *ENV_PROG)
    got = fetch_env(srv.port, ["h2"])
    assert "SSL_ALPN_PROTOCOL" not in got


def test_inherited_ssl_alpn_protocol_and_the_setting_are_not_passed_on(
    server: ServerFactory, pki: PKI
) -> None:
    env = {**pki.env(), "ALPN": "h2", "SSL_ALPN_PROTOCOL": "forged"}
    srv = server("-H", "127.0.0.1", "0", *ENV_PROG, env=env)
    got = fetch_env(srv.port)
    assert "SSL_ALPN_PROTOCOL" not in got and "ALPN" not in got
    kept = server("-H", "-Z", "127.0.0.1", "0", *ENV_PROG, env=env)
    assert fetch_env(kept.port, ["h2"])["ALPN"] == "h2"


@pytest.mark.parametrize(
    ("alpn", "message"),
    [
        ("h2,,http/1.1", "ALPN: empty protocol name"),
        ("h2,", "ALPN: empty protocol name"),
        ("x" * 256, "ALPN: protocol name over 255 bytes"),
    ],
)
def test_a_bad_list_exits_100(pki: PKI, alpn: str, message: str) -> None:
    r = run_command([S6_TLSSERVER, "-H", "127.0.0.1", "0", "cat"], {**pki.env(), "ALPN": alpn})
    assert r.returncode == 100
    assert r.stderr.splitlines()[0] == f"s6-tlsserver: fatal: {message}"


def test_a_bad_list_from_a_rule_drops_that_connection(
    server: ServerFactory, pki: PKI, tmp_path: Path
) -> None:
    rules = write_rules(
        tmp_path / "rules",
        {
            "ip4/127.0.0.2_32/allow": "",
            "ip4/127.0.0.2_32/env/ALPN": "h2,,x\n",
            "ip4/0.0.0.0_0/allow": "",
        },
    )
    srv = server(
        "-H", "-i", str(rules), "127.0.0.1", "0", *ENV_PROG, env={**pki.env(), "ALPN": "h2"}
    )
    with pytest.raises((ssl.SSLError, ConnectionError)):
        client.connect(srv.port, source="127.0.0.2").close()
    assert srv.wait_log("127.0.0.2_")
    assert "ALPN: empty protocol name" in srv.log()
    assert fetch_env(srv.port, ["h2"])["SSL_ALPN_PROTOCOL"] == "h2"


def test_a_rule_sets_the_list_for_one_client(
    server: ServerFactory, pki: PKI, tmp_path: Path
) -> None:
    rules = write_rules(
        tmp_path / "rules",
        {
            "ip4/127.0.0.2_32/allow": "",
            "ip4/127.0.0.2_32/env/ALPN": "imap\n",
            "ip4/0.0.0.0_0/allow": "",
        },
    )
    srv = server(
        "-H", "-i", str(rules), "127.0.0.1", "0", *ENV_PROG, env={**pki.env(), "ALPN": "h2"}
    )
    ctx = client.context()
    ctx.set_alpn_protocols(["imap"])
    with client.connect(srv.port, ctx=ctx, source="127.0.0.2") as s:
        assert client.env_of(client.read_all(s)[0])["SSL_ALPN_PROTOCOL"] == "imap"
    with pytest.raises(ssl.SSLError, match="alert no application protocol"):
        client.connect(srv.port, ctx=ctx).close()


def test_every_named_context_gets_the_list(server: ServerFactory, pki: PKI) -> None:
    env = {
        **pki.env(),
        "KEYFILE:alt.test": str(pki.alt.key),
        "CERTFILE:alt.test": str(pki.alt.cert),
        "ALPN": "h2",
    }
    srv = server("-H", "-k", "2", "127.0.0.1", "0", *ENV_PROG, env=env)
    assert fetch_env(srv.port, ["h2", "http/1.1"], sni="alt.test")["SSL_ALPN_PROTOCOL"] == "h2"
    ctx = client.context()
    ctx.set_alpn_protocols(["http/1.1"])
    with pytest.raises(ssl.SSLError, match="alert no application protocol"):
        client.connect(srv.port, ctx=ctx, sni="alt.test").close()


# -- a ClientHello the hard way


def hello_client(alpn: list[str]) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO, bytes]:
    """A client on memory BIOs, and the first flight (its ClientHello) it wants to send."""
    ctx = client.context()
    ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=False)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return obj, incoming, outgoing, outgoing.read()


def records(flight: bytes, size: int) -> list[bytes]:
    """The handshake records of flight, their content cut into records of size bytes."""
    assert flight[0] == 22
    body = flight[5 : 5 + int.from_bytes(flight[3:5], "big")]
    assert len(flight) == 5 + len(body)
    return [
        flight[:3] + len(chunk).to_bytes(2, "big") + chunk
        for chunk in (body[i : i + size] for i in range(0, len(body), size))
    ]


def finish(
    sock: socket.socket, obj: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
) -> bytes:
    """Complete the handshake, then read prog's output to the end."""
    while True:
        try:
            obj.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed during the handshake") from None
            incoming.write(data)
    sock.sendall(outgoing.read())
    out = b""
    while True:
        try:
            chunk = obj.read(65536)
        except ssl.SSLWantReadError:
            data = sock.recv(65536)
            if not data:
                return out
            incoming.write(data)
            continue
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return out
        if not chunk:
            return out
        out += chunk


def test_a_hello_in_many_records_and_segments_still_negotiates(
    server: ServerFactory, pki: PKI
) -> None:
    srv = server("-D", "-H", "127.0.0.1", "0", *ENV_PROG, env={**pki.env(), "ALPN": "h2,http/1.1"})
    obj, incoming, outgoing, flight = hello_client(["x", "http/1.1"])
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for record in records(flight, 7):
            for at in range(0, len(record), 4):  # a segment every few bytes
                sock.sendall(record[at : at + 4])
                time.sleep(0.0005)
        out = finish(sock, obj, incoming, outgoing)
    assert obj.selected_alpn_protocol() == "http/1.1"
    assert client.env_of(out)["SSL_ALPN_PROTOCOL"] == "http/1.1"


def test_a_hello_behind_a_proxy_header_in_the_same_segment(
    server: ServerFactory, pki: PKI, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    prog = ("/bin/sh", "-c", f"touch {marker}; exec /usr/bin/env")
    srv = server("-H", "-L", "127.0.0.1", "0", *prog, env={**pki.env(), "ALPN": "h2"})
    header = b"PROXY TCP4 192.0.2.7 127.0.0.1 4711 443\r\n"
    for offer, protocol in ((["h2"], "h2"), (["imap"], None)):
        obj, incoming, outgoing, flight = hello_client(offer)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.sendall(header + flight)
            if protocol is None:
                with pytest.raises(ssl.SSLError, match="alert no application protocol"):
                    finish(sock, obj, incoming, outgoing)
                continue
            got = client.env_of(finish(sock, obj, incoming, outgoing))
        assert got["SSL_ALPN_PROTOCOL"] == protocol and got["TCPREMOTEIP"] == "192.0.2.7"
    assert srv.wait_log("192.0.2.7_4711: the TLS engine closed the connection")
    assert "no application protocol in common (offered: imap)" in srv.log()


# -- one listener, several services


def test_two_services_on_one_port_by_alpn(server: ServerFactory, pki: PKI, tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path / "rules",
        {
            "ip4/0.0.0.0_0/allow": "",
            "alpn/h2/allow": "",
            "alpn/h2/exec": f"foreground {{ touch {tmp_path}/h2 }} cat",
            "alpn/http%2F1.1/allow": "",
            "alpn/http%2F1.1/exec": (
                f"foreground {{ touch {tmp_path}/http1 }} "
                'printf "HTTP/1.0 200 OK\\r\\nContent-Length: 6\\r\\n\\r\\nhttp1\\n"'
            ),
            "alpn/none/deny": "",
        },
    )
    srv = server(
        "-H",
        "-v",
        "-i",
        str(rules),
        "127.0.0.1",
        "0",
        *ENV_PROG,
        env={**pki.env(), "ALPN": "h2,http/1.1"},
    )
    url = f"https://127.0.0.1:{srv.port}/"
    r = run_command(["curl", "-sSk", "--http1.1", url])
    assert r.stdout == "http1\n", r.stderr
    assert (tmp_path / "http1").exists() and not (tmp_path / "h2").exists()
    r = run_command(["curl", "-sSkv", "--http2", "--max-time", "3", url])
    assert "ALPN: server accepted h2" in r.stderr
    assert wait_for((tmp_path / "h2").exists)
    # A client that offers no ALPN meets alpn/none, which denies: prog never runs.
    s_client(srv.port)
    assert srv.wait_log("key alpn/none")
    assert "deny 127.0.0.1_" in srv.log()


def test_two_services_on_one_port_by_sni_and_sni_none(
    server: ServerFactory, pki: PKI, tmp_path: Path
) -> None:
    rules = write_rules(
        tmp_path / "rules",
        {
            "ip4/0.0.0.0_0/allow": "",
            "sni/imap.example.org/allow": "",
            "sni/imap.example.org/exec": NAMED.format("imapd"),
            "sni/smtp.example.org/allow": "",
            "sni/smtp.example.org/exec": NAMED.format("smtpd"),
            "sni/example.org/allow": "",
            "sni/example.org/env/SERVICE": "web\n",
            "sni/@/deny": "",
            "sni/none/deny": "",
        },
    )
    srv = server("-H", "-v", "-i", str(rules), "127.0.0.1", "0", *ENV_PROG)

    def answer(sni: str | None) -> bytes:
        with client.connect(srv.port, sni=sni) as s:
            return client.read_all(s)[0]

    assert answer("imap.example.org") == b"imapd imap.example.org\n"
    assert answer("SMTP.Example.Org") == b"smtpd SMTP.Example.Org\n"
    assert client.env_of(answer("www.example.org"))["SERVICE"] == "web"  # a parent domain
    for sni in ("other.test", None):
        data, how = b"", ""
        try:
            with client.connect(srv.port, sni=sni) as s:
                data, how = client.read_all(s)
        except (ssl.SSLError, ConnectionError):
            pass
        assert data == b""
        assert how in ("", "close_notify")
    assert srv.wait_log("key sni/@") and srv.wait_log("key sni/none")
