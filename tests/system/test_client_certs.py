"""Access by client certificate through the real server (SPEC.md §4b, issue 27).

Real clients (``openssl s_client -cert/-key``, ``curl --cert/--key``,
Python's ssl) present certificates of the test CA; the rules allow or deny
them by fingerprint, SPKI pin, subject alternative name, commonName, any
certificate (``cert/@``) or none (``cert/none``), set prog's environment,
exec and identity, and keep the client's text in its own family.
Revocation (CRLFILE) is in test_revocation.py.
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography import x509

from s6tls.rules.tlskeys import escape
from tests.support import client
from tests.support.certs import Pair
from tests.support.server import BIN, run_command
from tests.support.trees import write_files

if TYPE_CHECKING:
    from tests.conftest import PKI, ServerFactory

pytestmark = [pytest.mark.timeout(60), pytest.mark.both_engines]

ENV_PROG = ("/usr/bin/env",)
SPIFFE = "spiffe://example.org/ns/prod/sa/web"
SPIFFE_KEY = "san/URI:spiffe:%2F%2Fexample.org%2Fns%2Fprod%2Fsa%2Fweb"
OUR_CDB_FROM_FS = str(BIN / "s6-accessrules-cdb-from-fs")
SKARNET_CDB_FROM_FS = "/usr/bin/s6-accessrules-cdb-from-fs"
needs_execline = pytest.mark.skipif(shutil.which("execlineb") is None, reason="no execline")


@dataclass(frozen=True)
class People:
    """Client certificates of the test CA, one per way a rule can name them."""

    alice: Pair  # by fingerprint
    bob: Pair  # by SPKI pin
    bob_again: Pair  # re-issued for bob's key: new serial, new fingerprint
    web: Pair  # by URI SAN (a SPIFFE ID)
    device: Pair  # by DNS SAN (written in mixed case)
    carol: Pair  # by email SAN
    dave: Pair  # by commonName
    mallory: Pair  # CN dave too, but denied by fingerprint
    eve: Pair  # valid, named by no rule


@pytest.fixture(scope="module")
def people(pki: PKI) -> People:
    ca = pki.ca

    def issue(stem: str, cn: str, *sans: x509.GeneralName, key: object = None) -> Pair:
        return ca.issue(f"cc-{stem}", client=True, subject={"CN": cn}, sans=sans, key=key)

    bob = issue("bob", "bob")
    return People(
        alice=issue("alice", "alice"),
        bob=bob,
        bob_again=issue("bob-again", "bob", key=bob.private_key),
        web=issue("web", "web", x509.UniformResourceIdentifier(SPIFFE)),
        device=issue("device", "device", x509.DNSName("Device1.Example.ORG")),
        carol=issue("carol", "carol", x509.RFC822Name("carol@example.org")),
        dave=issue("dave", "dave"),
        mallory=issue("mallory", "dave"),
        eve=issue("eve", "eve", x509.DNSName("eve.example.org")),
    )


def ca_env(pki: PKI, **more: str) -> dict[str, str]:
    return {**pki.env(), "CAFILE": str(pki.ca.pem), **more}


@dataclass
class Outcome:
    """What one client got: prog's output (empty when denied), how the
    connection ended, and the client's port (for the server's log)."""

    output: bytes
    how: str
    port: int

    @property
    def env(self) -> dict[str, str]:
        return client.env_of(self.output)


def session(
    port: int, pair: Pair | None, *, sni: str | None = None, version: ssl.TLSVersion | None = None
) -> Outcome:
    """Connect with pair's certificate (None: none) and read to the end."""
    ctx = client.context(cert=(pair.key, pair.cert) if pair else None, version=version)
    with client.connect(port, ctx=ctx, sni=sni) as s:
        local = s.getsockname()[1]
        data, how = client.read_all(s)
    return Outcome(data, how, local)


def marker_prog(marker: Path) -> tuple[str, ...]:
    """env, once a line is added to marker (so a test counts the progs that ran)."""
    return ("/bin/sh", "-c", f'echo "$SSL_PEER_CERT_HASH" >> {marker}; exec /usr/bin/env')


def ran(marker: Path) -> list[str]:
    return marker.read_text().splitlines() if marker.exists() else []


# -- who gets in


def test_each_kind_of_key_lets_its_certificate_in(
    server: ServerFactory, pki: PKI, people: People, tmp_path: Path
) -> None:
    p = people
    rules = write_files(
        tmp_path / "rules",
        {
            "ip4/0.0.0.0_0/allow": "",
            "ip4/0.0.0.0_0/env/USER": "ip\n",
            f"certhash/{p.alice.cert_hash}/allow": "",
            f"certhash/{p.alice.cert_hash}/env/USER": "alice\n",
            f"spki/{p.bob.spki_hash}/allow": "",
            f"spki/{p.bob.spki_hash}/env/USER": "bob\n",
            f"{SPIFFE_KEY}/allow": "",
            f"{SPIFFE_KEY}/env/USER": "web\n",
            "san/DNS:device1.example.org/allow": "",
            "san/DNS:device1.example.org/env/USER": "device\n",
            "san/email:carol@example.org/allow": "",
            "san/email:carol@example.org/env/USER": "carol\n",
            "cn/dave/allow": "",
            "cn/dave/env/USER": "dave\n",
            f"certhash/{p.mallory.cert_hash}/deny": "",
            "cert/@/deny": "",
        },
    )
    marker = tmp_path / "ran"
    prog = marker_prog(marker)
    srv = server("-H", "-v", "-Y", "-i", str(rules), "127.0.0.1", "0", *prog, env=ca_env(pki))

    # Python's ssl, TLS 1.3 and 1.2.
    for pair, user in (
        (p.bob_again, "bob"),  # the pin holds through a re-issue
        (p.web, "web"),
        (p.device, "device"),
        (p.carol, "carol"),
        (p.dave, "dave"),
    ):
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            got = session(srv.port, pair, version=version).env
            assert (got["USER"], got["SSL_PEER_CERT_HASH"]) == (user, pair.cert_hash), pair
    assert p.bob_again.cert_hash != p.bob.cert_hash
    assert p.bob_again.spki_hash == p.bob.spki_hash

    # openssl s_client: by fingerprint.
    r = run_command(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{srv.port}", "-ign_eof",
         "-cert", str(p.alice.cert), "-key", str(p.alice.key)]
    )  # fmt: skip
    assert "USER=alice\n" in r.stdout, r.stderr
    assert f"SSL_PEER_CERT_HASH={p.alice.cert_hash}\n" in r.stdout
    assert "SSL_PEER_CERT_SUBJECT=CN=alice\n" in r.stdout

    # curl: bob's first certificate, by the same pin.
    r = run_command(
        ["curl", "-sS", "--http0.9", "--cacert", str(pki.ca.pem),
         "--cert", str(p.bob.cert), "--key", str(p.bob.key),
         f"https://127.0.0.1:{srv.port}/"]
    )  # fmt: skip
    assert "USER=bob\n" in r.stdout, r.stderr
    assert f"SSL_PEER_CERT_HASH={p.bob.cert_hash}\n" in r.stdout
    served = len(ran(marker))
    assert served == 12

    # Denied after the handshake: close_notify, prog never runs, one log line.
    for pair, key in (
        (p.mallory, f"certhash/{p.mallory.cert_hash}"),  # CN dave, but this one is out
        (p.eve, "cert/@"),  # everyone else
    ):
        out = session(srv.port, pair)
        assert (out.output, out.how) == (b"", "close_notify")
        assert srv.wait_log(f"s6-tlsserver: info: deny 127.0.0.1_{out.port} key {key}\n")
    # A certificate of another CA never gets that far.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        session(srv.port, pki.rogue)
    assert srv.wait_log("CERTIFICATE_VERIFY_FAILED (self-signed certificate)")
    # Neither does a client with no certificate (no cert/none rule): the IP rule alone.
    assert session(srv.port, None).env["USER"] == "ip"
    assert len(ran(marker)) == served + 1
    assert "Traceback" not in srv.log()
    # At -v, each allow names the key that decided for the TLS stage.
    assert f"key certhash/{p.alice.cert_hash}\n" in srv.log()
    assert f"key spki/{p.bob.spki_hash}\n" in srv.log()
    assert f"key {SPIFFE_KEY}\n" in srv.log()


def test_cert_none_refuses_a_client_without_certificate(
    server: ServerFactory, pki: PKI, people: People, tmp_path: Path
) -> None:
    rules = write_files(
        tmp_path / "rules",
        {"ip4/0.0.0.0_0/allow": "", "cert/none/deny": "", "cert/@/allow": ""},
    )
    marker = tmp_path / "ran"
    prog = marker_prog(marker)
    srv = server("-H", "-v", "-Y", "-i", str(rules), "127.0.0.1", "0", *prog, env=ca_env(pki))
    out = session(srv.port, None)
    assert (out.output, out.how) == (b"", "close_notify")
    assert srv.wait_log(f"s6-tlsserver: info: deny 127.0.0.1_{out.port} key cert/none\n")
    assert ran(marker) == []
    assert session(srv.port, people.eve).env["SSL_PEER_CERT_HASH"] == people.eve.cert_hash
    # Without that rule (the directory is read per connection), the client is served.
    shutil.rmtree(rules / "cert/none")
    got = session(srv.port, None).env
    assert "SSL_PROTOCOL" in got and "SSL_PEER_CERT_HASH" not in got
    # Without -Y or -y no certificate is asked for: the certificate rules are not consulted.
    (rules / "cert/none").mkdir()
    (rules / "cert/none/deny").touch()
    plain = server("-H", "-i", str(rules), "127.0.0.1", "0", *ENV_PROG)
    assert "SSL_PROTOCOL" in session(plain.port, None).env


# -- what prog gets


@needs_execline
def test_the_environment_and_the_program_of_a_certificate_rule(
    server: ServerFactory, pki: PKI, people: People, tmp_path: Path
) -> None:
    p = people
    said = 'importas -i u USER printf "{} %s\\n" $u'
    rules = write_files(
        tmp_path / "rules",
        {
            "ip4/0.0.0.0_0/allow": "",
            "ip4/0.0.0.0_0/env/USER": "ip\n",
            "ip4/0.0.0.0_0/env/A": "ip\n",
            "ip4/0.0.0.0_0/env/B": "ip\n",
            f"certhash/{p.alice.cert_hash}/allow": "",
            f"certhash/{p.alice.cert_hash}/env/USER": "alice\n",
            f"certhash/{p.alice.cert_hash}/env/A": "cert\n",
            f"certhash/{p.alice.cert_hash}/env/B": "",  # an empty file removes B
            "cn/dave/allow": "",
            "cn/dave/env/USER": "dave\n",
            "cn/dave/exec": said.format("cert-exec"),
            "sni/smtp.example.org/allow": "",
            "sni/smtp.example.org/exec": said.format("submission"),
        },
    )
    srv = server("-H", "-Y", "-i", str(rules), "127.0.0.1", "0", *ENV_PROG, env=ca_env(pki))
    got = session(srv.port, p.alice).env
    # The certificate rule's USER reaches prog and wins a conflict with the IP rule's.
    assert (got["USER"], got["A"], "B" in got) == ("alice", "cert", False)
    # Without a certificate rule, the IP rule's environment stands.
    got = session(srv.port, p.eve).env
    assert (got["USER"], got["A"], got["B"]) == ("ip", "ip", "ip")
    # A certificate rule's exec replaces prog.
    assert session(srv.port, p.dave).output == b"cert-exec dave\n"
    # The SNI rule's exec wins over the certificate rule's; the certificate
    # rule's USER stays.
    assert session(srv.port, p.alice, sni="smtp.example.org").output == b"submission alice\n"
    assert session(srv.port, p.dave, sni="smtp.example.org").output == b"submission dave\n"
    assert session(srv.port, p.eve, sni="smtp.example.org").output == b"submission ip\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="-U needs root")
def test_a_certificate_rule_chooses_progs_user_with_dash_u(
    server: ServerFactory, pki: PKI, people: People, tmp_path: Path
) -> None:
    p = people
    rules = write_files(
        tmp_path / "rules",
        {
            "ip4/0.0.0.0_0/allow": "",
            "ip4/0.0.0.0_0/env/UID": "65534\n",
            "ip4/0.0.0.0_0/env/GID": "65534\n",
            f"certhash/{p.alice.cert_hash}/allow": "",
            f"certhash/{p.alice.cert_hash}/env/UID": "1000\n",
            f"certhash/{p.alice.cert_hash}/env/GID": "1001\n",
            f"certhash/{p.alice.cert_hash}/env/GIDLIST": "1002,1003\n",
            f"spki/{p.bob.spki_hash}/allow": "",
            f"spki/{p.bob.spki_hash}/env/UID": "2000\n",
            f"spki/{p.bob.spki_hash}/env/GID": "2000\n",
        },
    )
    show = ("/bin/sh", "-c", "echo uid=$(id -u) gid=$(id -g) groups=$(id -G); env")
    srv = server("-H", "-U", "-Y", "-i", str(rules), "127.0.0.1", "0", *show, env=ca_env(pki))

    def ids(pair: Pair) -> tuple[str, dict[str, str]]:
        out = session(srv.port, pair).output.decode()
        first, _, rest = out.partition("\n")
        return first, client.env_of(rest.encode())

    first, env = ids(p.alice)
    assert first == "uid=1000 gid=1001 groups=1001 1002 1003"  # id -G: gid first
    assert not {"UID", "GID", "GIDLIST"} & env.keys()
    assert ids(p.bob)[0] == "uid=2000 gid=2000 groups=2000"
    assert ids(p.bob_again)[0] == "uid=2000 gid=2000 groups=2000"
    assert ids(p.eve)[0] == "uid=65534 gid=65534 groups=65534"


def test_tls_settings_of_a_certificate_rule_reach_prog_and_change_no_handshake(
    server: ServerFactory, pki: PKI, people: People, tmp_path: Path
) -> None:
    p = people
    crl = tmp_path / "alice-revoked.pem"
    crl.write_bytes(pki.ca.crl([p.alice.serial]))
    rule = f"certhash/{p.alice.cert_hash}"
    rules = write_files(
        tmp_path / "rules",
        {
            "ip4/0.0.0.0_0/allow": "",
            f"{rule}/allow": "",
            f"{rule}/env/KEYFILE": f"{pki.rsa.key}\n",
            f"{rule}/env/CERTFILE": f"{pki.rsa.cert}\n",
            f"{rule}/env/CRLFILE": f"{crl}\n",  # revokes alice: too late, and for prog only
            f"{rule}/env/CAFILE": "/nonexistent\n",
        },
    )
    kept = server("-HZY", "-i", str(rules), "127.0.0.1", "0", *ENV_PROG, env=ca_env(pki))
    for _ in range(2):  # and the next handshake is as the first
        ctx = client.context(cert=(p.alice.key, p.alice.cert))
        with client.connect(kept.port, ctx=ctx) as s:
            assert s.getpeercert(binary_form=True) == pki.ec.cert_der_bytes
            got = client.env_of(client.read_all(s)[0])
        assert (got["KEYFILE"], got["CERTFILE"]) == (str(pki.rsa.key), str(pki.rsa.cert))
        assert (got["CRLFILE"], got["CAFILE"]) == (str(crl), "/nonexistent")
    assert "warning" not in kept.log()
    # Without -Z they are removed, as the server's own.
    removed = server("-H", "-Y", "-i", str(rules), "127.0.0.1", "0", *ENV_PROG, env=ca_env(pki))
    got = session(removed.port, p.alice).env
    assert not {"KEYFILE", "CERTFILE", "CRLFILE", "CAFILE"} & got.keys()
    assert got["SSL_PEER_CERT_HASH"] == p.alice.cert_hash


# -- the client's text stays the client's


def test_a_san_that_is_not_utf8_gets_a_decision(
    server: ServerFactory, pki: PKI, tmp_path: Path
) -> None:
    uri = b"spiffe://caf\xe9.example/ns/\xff\xfe/sa"
    odd = pki.ca.issue_raw_uri("cc-odd", uri, "odd client")
    key = f"san/URI:{escape(uri)}"
    assert key == "san/URI:spiffe:%2F%2Fcaf%E9.example%2Fns%2F%FF%FE%2Fsa"
    rules = write_files(
        tmp_path / "rules",
        {"ip4/0.0.0.0_0/allow": "", "cert/@/allow": "", "cert/@/env/WHO": "any\n"},
    )
    srv = server("-H", "-v", "-y", "-i", str(rules), "127.0.0.1", "0", *ENV_PROG, env=ca_env(pki))
    got = session(srv.port, odd).env
    assert (got["WHO"], got["SSL_PEER_CERT_HASH"]) == ("any", odd.cert_hash)
    assert got["SSL_PEER_CERT_SUBJECT"] == "CN=odd client"
    # A rule on its escaped key decides for it, from a directory or a cdb
    # (skarnet's compiler writes the same key, when it is installed).
    write_files(rules, {f"{key}/deny": ""})
    servers = [srv]
    for compiler in (OUR_CDB_FROM_FS, SKARNET_CDB_FROM_FS):
        if not os.path.exists(compiler):
            continue
        cdb = tmp_path / f"rules{len(servers)}.cdb"
        assert run_command([compiler, str(cdb), str(rules)]).returncode == 0
        args = ("-H", "-v", "-y", "-x", str(cdb), "127.0.0.1", "0", *ENV_PROG)
        servers.append(server(*args, env=ca_env(pki)))
    for running in servers:
        out = session(running.port, odd)
        assert (out.output, out.how) == (b"", "close_notify")
        assert running.wait_log(f"deny 127.0.0.1_{out.port} key {key}\n")
        assert "Traceback" not in running.log() and "warning" not in running.log()


def test_certificate_text_never_reaches_another_family(
    server: ServerFactory, pki: PKI, tmp_path: Path
) -> None:
    """A certificate whose names are paths to the IP rules: joined naively to
    the rules directory, its commonName would find ip6/::_0, which denies
    (cn/ exists, so even the kernel resolves ``cn/..``); normalised first,
    its URI, DNS and email names would too. Escaped, they stay in their
    families: the IP rule decides, and a rule on the escaped commonName
    applies."""
    climber = pki.ca.issue(
        "cc-climber",
        client=True,
        subject={"CN": "../ip6/::_0"},
        sans=[
            x509.UniformResourceIdentifier("x/../../ip6/::_0"),
            x509.DNSName("../../ip6/::_0"),
            x509.RFC822Name("../../ip6/::_0"),
        ],
    )
    cn_key = "cn/%2E.%2Fip6%2F::_0"
    rules = write_files(
        tmp_path / "rules",
        {
            "ip4/0.0.0.0_0/allow": "",
            "ip4/0.0.0.0_0/env/A": "ip\n",
            "ip6/::_0/deny": "",
            "cn/somebody else/allow": "",
        },
    )
    srv = server("-H", "-v", "-Y", "-i", str(rules), "127.0.0.1", "0", *ENV_PROG, env=ca_env(pki))
    got = session(srv.port, climber).env
    assert got["A"] == "ip" and "B" not in got
    write_files(rules, {f"{cn_key}/allow": "", f"{cn_key}/env/B": "cn\n"})
    got = session(srv.port, climber).env
    assert (got["A"], got["B"]) == ("ip", "cn")
    assert srv.wait_log(f"key {cn_key}\n")
    log = srv.log()
    assert "deny" not in log and "ip6/::_0\n" not in log
    # Every key the server tried stayed in the rules directory, under its family.
    keys = re.findall(r"key (\S+)", log)
    assert set(keys) == {"ip4/0.0.0.0_0", cn_key}
