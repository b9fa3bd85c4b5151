"""Application protocols through the real server: the ALPN setting, strict
refusal (alert 120), SSL_ALPN_PROTOCOL, and the TLS stage of the rules
picking prog by SNI name or ALPN protocol (SPEC.md §4b).

Clients: ``openssl s_client -alpn``, ``curl --http2``/``--http1.1``, Python's
ssl, and a hand-driven one whose ClientHello is cut into many records and
TCP segments, carries a key share of post-quantum size, comes again after a
HelloRetryRequest, or is sent right behind a PROXY header.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support import client
from tests.support.server import S6_TLSSERVER, Running, run_command, wait_for
from tests.support.trees import write_files

if TYPE_CHECKING:
    from tests.conftest import PKI, ServerFactory
    from tests.support.certs import Pair

pytestmark = [pytest.mark.timeout(60), pytest.mark.both_engines]

ENV_PROG = ("/usr/bin/env",)
# An exec rule that says which service answered, and for which SNI name.
NAMED = 'importas -i n SSL_TLS_SNI_SERVERNAME printf "{} %s\\n" $n'


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


def serving_alpn_to_127_0_0_2(
    server: ServerFactory, pki: PKI, tmp_path: Path, alpn: str
) -> Running:
    """A server with ALPN=h2 whose rules give the client at 127.0.0.2 ALPN=alpn."""
    rules = write_files(
        tmp_path / "rules",
        {
            "ip4/127.0.0.2_32/allow": "",
            "ip4/127.0.0.2_32/env/ALPN": f"{alpn}\n",
            "ip4/0.0.0.0_0/allow": "",
        },
    )
    return server(
        "-H", "-i", str(rules), "127.0.0.1", "0", *ENV_PROG, env={**pki.env(), "ALPN": "h2"}
    )


def test_a_bad_list_from_a_rule_drops_that_connection(
    server: ServerFactory, pki: PKI, tmp_path: Path
) -> None:
    srv = serving_alpn_to_127_0_0_2(server, pki, tmp_path, "h2,,x")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        client.connect(srv.port, source="127.0.0.2").close()
    assert srv.wait_log("127.0.0.2_")
    assert "ALPN: empty protocol name" in srv.log()
    assert fetch_env(srv.port, ["h2"])["SSL_ALPN_PROTOCOL"] == "h2"


def test_a_rule_sets_the_list_for_one_client(
    server: ServerFactory, pki: PKI, tmp_path: Path
) -> None:
    srv = serving_alpn_to_127_0_0_2(server, pki, tmp_path, "imap")
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


def hello_client(
    alpn: list[str], group: str | None = None
) -> tuple[ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO, bytes]:
    """A client on memory BIOs, and the first flight (its ClientHello) it wants
    to send; group: the only key exchange group it offers."""
    ctx = client.context()
    ctx.set_alpn_protocols(alpn)
    if group is not None:
        ctx.set_ecdh_curve(group)
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


def split_records(flight: bytes, size: int) -> list[bytes]:
    """The records of flight, each handshake record cut as ``records`` does."""
    out = []
    while flight:
        end = 5 + int.from_bytes(flight[3:5], "big")
        record, flight = flight[:end], flight[end:]
        out += records(record, size) if record[0] == 22 else [record]
    return out


def trickle(sock: socket.socket, pieces: list[bytes], segment: int) -> None:
    """Send each piece in TCP segments of a few bytes (the socket has TCP_NODELAY)."""
    for piece in pieces:
        for at in range(0, len(piece), segment):
            sock.sendall(piece[at : at + segment])
            time.sleep(0.0002)


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
    rules = write_files(
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
    rules = write_files(
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


# -- a big ClientHello, and a second one after a HelloRetryRequest

HRR_RANDOM = hashlib.sha256(b"HelloRetryRequest").digest()  # RFC 8446, 4.1.3
ALERT_120 = bytes.fromhex("15030300020278")  # fatal no_application_protocol, in clear
# Makes the server's TLS engine take only P-384 or P-256, so that a client's
# X25519 key share (the default one) gets a HelloRetryRequest.
RETRYING_OPENSSL_CNF = """\
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
Groups = P-384:P-256
"""


def first_record(sock: socket.socket) -> bytes:
    """What the server sent, read at least up to the end of its first record."""
    data = b""
    while len(data) < 5 or len(data) < 5 + int.from_bytes(data[3:5], "big"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def is_retry_request(data: bytes) -> bool:
    """Whether data starts with a HelloRetryRequest (a ServerHello with its random)."""
    return data[:1] == b"\x16" and data[5:6] == b"\x02" and data[11:43] == HRR_RANDOM


def read_to_end(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_big_hello_in_many_records_and_segments_still_negotiates(
    server: ServerFactory, pki: PKI
) -> None:
    """A ClientHello of post-quantum size (X25519MLKEM768's key share takes 1216
    bytes; OpenSSL 3.0 has no ML-KEM, so an ffdhe8192 share of 1024 bytes stands
    in) with a long ALPN list, in records of 7 bytes, 5 bytes a TCP segment."""
    srv = server("-D", "-H", "127.0.0.1", "0", *ENV_PROG, env={**pki.env(), "ALPN": "h2,http/1.1"})
    offer = [f"x-{n:02d}-{'p' * 60}" for n in range(12)]
    for protocols, protocol in (([*offer, "http/1.1"], "http/1.1"), (offer, None)):
        obj, incoming, outgoing, flight = hello_client(protocols, group="ffdhe8192")
        assert len(flight) > 1900
        assert b"\x01\x04\x04\x00" in flight  # a key share: ffdhe8192 (0x0104), 1024 bytes
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            trickle(sock, records(flight, 7), 5)
            if protocol is None:
                with pytest.raises(ssl.SSLError, match="alert no application protocol"):
                    finish(sock, obj, incoming, outgoing)
                continue
            out = finish(sock, obj, incoming, outgoing)
        assert (obj.selected_alpn_protocol(), obj.version()) == (protocol, "TLSv1.3")
        assert client.env_of(out)["SSL_ALPN_PROTOCOL"] == protocol
    assert srv.wait_log("no application protocol in common (offered: x-00-pppp")
    # openssl s_client, with the same key share, in one piece.
    out, _ = s_client(srv.port, "-groups", "ffdhe8192", "-alpn", "x,http/1.1", "-ign_eof")
    assert "Server Temp Key: DH, 8192 bits" in out
    assert "ALPN protocol: http/1.1" in out and "SSL_ALPN_PROTOCOL=http/1.1" in out


@pytest.fixture
def retrying_env(pki: PKI, tmp_path: Path) -> dict[str, str]:
    """The server's environment, ALPN h2,http/1.1, with an OpenSSL configuration
    (OPENSSL_CONF) that makes it answer an X25519 key share with a HelloRetryRequest."""
    conf = tmp_path / "openssl.cnf"
    conf.write_text(RETRYING_OPENSSL_CNF)
    return {**pki.env(), "ALPN": "h2,http/1.1", "OPENSSL_CONF": str(conf)}


def after_a_retry(
    sock: socket.socket,
    obj: ssl.SSLObject,
    incoming: ssl.MemoryBIO,
    outgoing: ssl.MemoryBIO,
    flight: bytes,
) -> bytes:
    """Send the first ClientHello; the client's second flight, once the
    server has answered with a HelloRetryRequest."""
    sock.sendall(flight)
    retry = first_record(sock)
    assert is_retry_request(retry)
    incoming.write(retry)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_alpn_is_negotiated_after_a_hello_retry_request(
    server: ServerFactory, retrying_env: dict[str, str]
) -> None:
    srv = server("-D", "-H", "127.0.0.1", "0", *ENV_PROG, env=retrying_env)
    out, _ = s_client(srv.port, "-alpn", "imap,h2", "-msg", "-ign_eof")
    assert out.count(", ClientHello") == 2  # asked again
    assert "Server Temp Key: ECDH, secp384r1" in out
    assert "ALPN protocol: h2" in out and "SSL_ALPN_PROTOCOL=h2" in out
    # By hand, the second ClientHello (behind a ChangeCipherSpec) cut into
    # records of 7 bytes, 5 bytes a TCP segment.
    obj, incoming, outgoing, flight = hello_client(["x", "http/1.1"])
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        second = after_a_retry(sock, obj, incoming, outgoing, flight)
        assert second[:1] == b"\x14" and second[6:7] == b"\x16"  # ChangeCipherSpec, handshake
        trickle(sock, split_records(second, 7), 5)
        out = finish(sock, obj, incoming, outgoing)
    assert obj.selected_alpn_protocol() == "http/1.1"
    assert client.env_of(out)["SSL_ALPN_PROTOCOL"] == "http/1.1"


def test_the_offer_of_the_second_client_hello_decides(
    server: ServerFactory, retrying_env: dict[str, str], tmp_path: Path
) -> None:
    """A second ClientHello must repeat the first one's ALPN offer (RFC 8446,
    4.1.2); one that offers none of ours instead is refused, though the first
    offered h2. And a first one that offers none of ours gets no retry."""
    marker = tmp_path / "ran"
    prog = ("/bin/sh", "-c", f"touch {marker}; exec /usr/bin/env")
    srv = server("-H", "127.0.0.1", "0", *prog, env=retrying_env)
    obj, incoming, outgoing, flight = hello_client(["h2"])
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        second = after_a_retry(sock, obj, incoming, outgoing, flight)
        offer = b"\x00\x10\x00\x05\x00\x03\x02h2"  # extension 16: one name, h2
        assert second.count(offer) == 1
        sock.sendall(second.replace(offer, offer[:-2] + b"x2"))
        assert read_to_end(sock) == ALERT_120
    assert srv.wait_log("no application protocol in common (offered: x2)")
    out, err = s_client(srv.port, "-alpn", "imap", "-msg")
    assert out.count(", ClientHello") == 1 and "alert number 120" in err
    assert srv.wait_log("no application protocol in common (offered: imap)")
    assert not marker.exists()
    assert "Traceback" not in srv.log()


# -- the rules of the TLS stage, more


def test_alpn_none_denied_refuses_a_client_offering_no_protocol(
    server: ServerFactory, pki: PKI, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    prog = ("/bin/sh", "-c", f"echo ran >> {marker}; exec /usr/bin/env")
    rules = write_files(tmp_path / "rules", {"ip4/0.0.0.0_0/allow": "", "alpn/none/deny": ""})
    env = {**pki.env(), "ALPN": "h2,http/1.1"}
    srv = server("-H", "-v", "-i", str(rules), "127.0.0.1", "0", *prog, env=env)
    # The handshake completes (no protocol, nothing to refuse it for); then the
    # rule denies: close_notify, and prog never runs.
    with client.connect(srv.port) as s:
        port = s.getsockname()[1]
        assert s.selected_alpn_protocol() is None
        assert client.read_all(s) == (b"", "close_notify")
    assert srv.wait_log(f"deny 127.0.0.1_{port} key alpn/none")
    out, _ = s_client(srv.port, "-ign_eof")
    assert "SSL_PROTOCOL" not in out
    assert srv.wait_log("key alpn/none", count=2)
    assert not marker.exists()
    # A client offering a common protocol is served.
    out, _ = s_client(srv.port, "-alpn", "http/1.1", "-ign_eof")
    assert "SSL_ALPN_PROTOCOL=http/1.1" in out
    assert fetch_env(srv.port, ["spdy/3", "h2"])["SSL_ALPN_PROTOCOL"] == "h2"
    assert marker.read_text() == "ran\nran\n"


MAIL_NAMES = ("imap.example.org", "smtp.example.org")
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
# An exec rule that says which service answered, then its environment.
SERVICE = "foreground {{ echo {} }} /usr/bin/env"


@pytest.fixture(scope="module")
def mail_pairs(pki: PKI) -> dict[str, Pair]:
    """A key pair for each name, from the test CA."""
    return {
        name: pki.ca.issue(f"alpn-{name.split('.')[0]}", names=(name,), ips=())
        for name in MAIL_NAMES
    }


def proxy_header(version: int, source: tuple[str, int], dest: tuple[str, int]) -> bytes:
    """A PROXY protocol header, v1 (text) or v2 (binary), for TCP over IPv4."""
    if version == 1:
        return f"PROXY TCP4 {source[0]} {dest[0]} {source[1]} {dest[1]}\r\n".encode()
    body = socket.inet_aton(source[0]) + socket.inet_aton(dest[0])
    body += source[1].to_bytes(2, "big") + dest[1].to_bytes(2, "big")
    return V2_SIGNATURE + b"\x21\x11" + len(body).to_bytes(2, "big") + body


@pytest.mark.parametrize("version", [1, 2])
def test_two_services_by_sni_with_k2_behind_a_proxy_header(
    server: ServerFactory, pki: PKI, mail_pairs: dict[str, Pair], tmp_path: Path, version: int
) -> None:
    rules = write_files(
        tmp_path / "rules",
        {
            "ip4/0.0.0.0_0/allow": "",
            "sni/imap.example.org/allow": "",
            "sni/imap.example.org/exec": SERVICE.format("imapd"),
            "sni/smtp.example.org/allow": "",
            "sni/smtp.example.org/exec": SERVICE.format("submissiond"),
            "sni/@/deny": "",
            "sni/none/deny": "",
        },
    )
    env = {"ALPN": "imap,smtp"}
    for name, pair in mail_pairs.items():
        env.update({f"KEYFILE:{name}": str(pair.key), f"CERTFILE:{name}": str(pair.cert)})
    options = ("-H", "-v", "-k", "2", "-L", "-i", str(rules))
    srv = server(*options, "127.0.0.1", "0", "/bin/false", env=env)

    def session(n: int, sni: str | None, alpn: list[str] | None = None) -> tuple[bytes, bytes]:
        """From 192.0.2.n behind the header, a client asking for sni that checks
        the certificate for it: the certificate, and what the service said."""
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw:
            raw.sendall(proxy_header(version, (f"192.0.2.{n}", 4000 + n), ("198.51.100.1", 993)))
            ctx = client.context(cafile=pki.ca.pem) if sni else client.context()
            if alpn:
                ctx.set_alpn_protocols(alpn)
            with ctx.wrap_socket(raw, server_hostname=sni, suppress_ragged_eofs=False) as s:
                der = s.getpeercert(binary_form=True)
                assert der is not None
                return der, client.read_all(s)[0]

    cert, said = session(1, "imap.example.org", ["imap"])
    assert cert == mail_pairs["imap.example.org"].cert_der_bytes
    assert said.startswith(b"imapd\n")
    got = client.env_of(said)
    assert (got["TCPREMOTEIP"], got["TCPREMOTEPORT"]) == ("192.0.2.1", "4001")
    assert (got["TCPLOCALIP"], got["TCPLOCALPORT"]) == ("198.51.100.1", "993")
    assert got["SSL_TLS_SNI_SERVERNAME"] == "imap.example.org"
    assert got["SSL_ALPN_PROTOCOL"] == "imap"
    cert, said = session(2, "smtp.example.org")
    assert cert == mail_pairs["smtp.example.org"].cert_der_bytes
    assert said.startswith(b"submissiond\n")
    got = client.env_of(said)
    assert got["TCPREMOTEIP"] == "192.0.2.2" and "SSL_ALPN_PROTOCOL" not in got
    assert srv.wait_log("allow 192.0.2.2_4002 key sni/smtp.example.org")
    # Refused in the handshake, each logged under the address the header gave.
    refused = [
        (3, "www.example.org", None, "alert handshake failure", "no certificate for SNI name"),
        (4, None, None, "alert handshake failure", "no SNI name sent"),
        (5, "imap.example.org", ["http/1.1"], "alert no application protocol", "(offered: h"),
    ]
    for n, sni, alpn, alert, _ in refused:
        with pytest.raises(ssl.SSLError, match=alert):
            session(n, sni, alpn)
    for n, _, _, _, reason in refused:
        assert srv.wait_log(f"192.0.2.{n}_400{n}: the TLS engine closed the connection"), n
        assert reason in next(line for line in srv.lines() if f"192.0.2.{n}_" in line)
    assert "Traceback" not in srv.log()
