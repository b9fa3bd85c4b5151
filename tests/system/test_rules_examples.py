"""The rulesets of rules-examples/ through the real s6-tlsserver, clients on 127.0.0.1-3
(and, for mutual-tls/, with certificates of the test CA filling in its placeholders).

The README's sessions (scripting a ruleset, filling in mutual-tls/) run as they are shown, too.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography import x509

from s6tls.rules.keys import ALL_FAMILIES
from tests.support import client
from tests.support.certs import Pair
from tests.support.server import BIN

if TYPE_CHECKING:
    from tests.conftest import PKI, ServerFactory

pytestmark = pytest.mark.timeout(60)

EXAMPLES = Path(__file__).resolve().parents[2] / "rules-examples"
S6_TCPRULES = str(BIN / "s6-tcprules")
OUR_CDB_FROM_FS = str(BIN / "s6-accessrules-cdb-from-fs")
SKARNET_CDB_FROM_FS = "/usr/bin/s6-accessrules-cdb-from-fs"
TCPRULES = "/usr/bin/tcprules"
TCPRULESCHECK = "/usr/bin/tcprulescheck"
RULESETS = [
    "lan-only",
    "deny-range",
    "per-client-certificate",
    "env-per-client",
    "exec-override",
    "imported-from-tcprules",
    "mutual-tls",
]
ENV_PROG = ("/usr/bin/env",)


@dataclass
class Seen:
    """What a client saw: prog's output (None if denied) and the server's certificate."""

    output: bytes | None
    cert: bytes | None = None

    @property
    def env(self) -> dict[str, str]:
        assert self.output is not None, "the connection was denied"
        return client.env_of(self.output)


def connect_from(port: int, source: str) -> Seen:
    """Connect from a loopback address; a handshake the server cuts is a denial."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.settimeout(10)
    raw.bind((source, 0))
    raw.connect(("127.0.0.1", port))
    try:
        tls = client.context().wrap_socket(raw, suppress_ragged_eofs=False)
    except (ssl.SSLError, ConnectionError):
        raw.close()
        return Seen(None)
    with tls:
        cert = tls.getpeercert(binary_form=True)
        return Seen(client.read_all(tls)[0], cert)


def check(ruleset: Path, ip: str) -> dict[str, object]:
    done = subprocess.run(
        [S6_TCPRULES, "check", "--json", "-i", str(ruleset), ip],
        capture_output=True,
        text=True,
        timeout=30,
    )
    answer: dict[str, object] = json.loads(done.stdout)
    return answer


def files_of(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def test_every_ruleset_is_described_and_compiles(tmp_path: Path) -> None:
    readme = (EXAMPLES / "README.rst").read_text()
    for name in RULESETS:
        assert f"``{name}/``" in readme
        ruleset = EXAMPLES / name
        assert {p.name for p in ruleset.iterdir()} <= set(ALL_FAMILIES)
        for compiler in (OUR_CDB_FROM_FS, SKARNET_CDB_FROM_FS):
            if not os.path.exists(compiler):
                continue
            cdb = tmp_path / f"{name}.cdb"
            done = subprocess.run(
                [compiler, str(cdb), str(ruleset)], capture_output=True, text=True, timeout=30
            )
            assert (done.returncode, done.stderr) == (0, ""), compiler


def readme_session(heading: str) -> list[tuple[str, str]]:
    """The commands of the README's literal block under ``heading``, each with its output."""
    lines = (EXAMPLES / "README.rst").read_text().splitlines()
    after = lines.index(heading)
    start = next(i for i in range(after, len(lines)) if lines[i].endswith("::"))
    block: list[str] = []
    for line in lines[start + 1 :]:
        if line and not line.startswith("    "):
            break
        block.append(line[4:])
    session: list[tuple[str, str]] = []
    for line in "\n".join(block).strip("\n").splitlines():
        if line.startswith("$ "):
            session.append((line[2:], ""))
        else:
            command, output = session[-1]
            session[-1] = (command, f"{output}{line}\n")
    return session


def test_scripting_a_ruleset_from_nothing(server: ServerFactory, tmp_path: Path) -> None:
    """The README's session, run as it is shown, in an empty directory; then served."""
    session = readme_session("Scripting a ruleset from nothing")
    used = {command.split()[1] for command, _ in session if command.startswith("s6-tcprules ")}
    assert used == {"add", "list", "compile", "check"}
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    for command, output in session:
        done = subprocess.run(
            ["sh", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
        )
        assert done.stdout + done.stderr == output, command
    srv = server("-H", "-x", str(tmp_path / "rules.cdb"), "127.0.0.1", "0", *ENV_PROG)
    assert connect_from(srv.port, "127.0.0.1").env["ROLE"] == "local"


def test_lan_only(server: ServerFactory) -> None:
    ruleset = EXAMPLES / "lan-only"
    srv = server("-H", "-i", str(ruleset), "127.0.0.1", "0", *ENV_PROG)
    for source in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
        assert connect_from(srv.port, source).env["TCPREMOTEIP"] == source
    # Clients from elsewhere cannot be made on loopback: ask the rules instead.
    for ip in ("10.1.2.3", "172.31.255.255", "192.168.0.1", "::1", "fd00::1", "fe80::1"):
        assert check(ruleset, ip)["decision"] == "allow", ip
    for ip in ("8.8.8.8", "172.32.0.1", "192.0.2.1", "2001:db8::1"):
        answer = check(ruleset, ip)
        assert (answer["decision"], answer["key"]) == ("deny", None), ip


def test_deny_range(server: ServerFactory) -> None:
    ruleset = EXAMPLES / "deny-range"
    srv = server("-H", "-i", str(ruleset), "127.0.0.1", "0", *ENV_PROG)
    assert connect_from(srv.port, "127.0.0.1").env["TCPREMOTEIP"] == "127.0.0.1"
    assert connect_from(srv.port, "127.0.0.2").output is None
    assert connect_from(srv.port, "127.0.0.3").output is None
    assert connect_from(srv.port, "127.0.0.4").env["TCPREMOTEIP"] == "127.0.0.4"
    assert check(ruleset, "198.51.100.77")["key"] == "ip4/198.51.100.0_24"
    assert check(ruleset, "198.51.101.1")["decision"] == "allow"


def test_per_client_certificate(server: ServerFactory, pki: PKI, tmp_path: Path) -> None:
    # The README names the two files to edit; they hold placeholder paths.
    env_dir = "ip4/127.0.0.2_32/env"
    readme = (EXAMPLES / "README.rst").read_text()
    assert f"``{env_dir}/KEYFILE``" in readme
    assert f"``{env_dir}/CERTFILE``" in readme
    ruleset = shutil.copytree(EXAMPLES / "per-client-certificate", tmp_path / "rules")
    for name, path in (("KEYFILE", pki.alt.key), ("CERTFILE", pki.alt.cert)):
        placeholder = (ruleset / env_dir / name).read_text()
        assert placeholder.startswith("/etc/s6tls/")
        (ruleset / env_dir / name).write_text(f"{path}\n")
    srv = server("-H", "-i", str(ruleset), "127.0.0.1", "0", *ENV_PROG)
    partner = connect_from(srv.port, "127.0.0.2")
    others = [connect_from(srv.port, source) for source in ("127.0.0.1", "127.0.0.3")]
    assert partner.cert == pki.alt.cert_der_bytes
    assert [seen.cert for seen in others] == [pki.ec.cert_der_bytes] * 2
    assert "KEYFILE" not in partner.env  # cleaned like the server's own


def test_env_per_client(server: ServerFactory, pki: PKI) -> None:
    env = {**pki.env(), "DEBUG": "1", "RELAYCLIENT": "inherited"}
    srv = server("-H", "-i", str(EXAMPLES / "env-per-client"), "127.0.0.1", "0", *ENV_PROG, env=env)
    admin = connect_from(srv.port, "127.0.0.1").env
    guest = connect_from(srv.port, "127.0.0.2").env
    local = connect_from(srv.port, "127.0.0.3").env
    assert (admin["ROLE"], admin["RELAYCLIENT"], admin["DEBUG"]) == ("admin", "", "1")
    assert (guest["ROLE"], guest["RELAYCLIENT"]) == ("guest", "inherited")
    assert "DEBUG" not in guest
    assert (local["ROLE"], local["DEBUG"]) == ("local", "1")


@pytest.mark.skipif(shutil.which("execlineb") is None, reason="execline is not installed")
def test_exec_override(server: ServerFactory) -> None:
    prog = ("/bin/echo", "normal service")
    srv = server("-H", "-i", str(EXAMPLES / "exec-override"), "127.0.0.1", "0", *prog)
    assert connect_from(srv.port, "127.0.0.1").output == b"normal service\n"
    maintenance = connect_from(srv.port, "127.0.0.2")
    assert maintenance.output == b"down for maintenance, 127.0.0.2: come back later\n"
    assert maintenance.cert is not None  # over TLS
    assert connect_from(srv.port, "127.0.0.3").output == b"normal service\n"


def test_imported_from_tcprules_is_what_import_writes(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            S6_TCPRULES,
            "import",
            "-o",
            str(tmp_path / "imported"),
            str(EXAMPLES / "imported-from-tcprules.tcprules"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert files_of(tmp_path / "imported") == files_of(EXAMPLES / "imported-from-tcprules")


def test_imported_from_tcprules(server: ServerFactory, tmp_path: Path) -> None:
    ruleset = EXAMPLES / "imported-from-tcprules"
    srv = server("-H", "-i", str(ruleset), "127.0.0.1", "0", *ENV_PROG)
    seen = {
        source: connect_from(srv.port, source)
        for source in ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.10")
    }
    assert seen["127.0.0.2"].output is None
    got = {source: s.env for source, s in seen.items() if s.output is not None}
    assert (got["127.0.0.1"]["ORIGIN"], got["127.0.0.1"]["RELAYCLIENT"]) == ("local", "")
    assert got["127.0.0.3"]["ORIGIN"] == "lab"
    assert "RELAYCLIENT" not in got["127.0.0.3"]
    assert got["127.0.0.10"]["ORIGIN"] == "loopback"
    if not (os.path.exists(TCPRULES) and os.path.exists(TCPRULESCHECK)):
        return
    # ucspi-tcp's tcpserver would decide the same from the source file.
    text = (EXAMPLES / "imported-from-tcprules.tcprules").read_bytes()
    cdb = tmp_path / "tcp.cdb"
    subprocess.run([TCPRULES, str(cdb), str(tmp_path / "tcp.tmp")], input=text, check=True)
    for source, s in seen.items():
        verdict = subprocess.run(
            [TCPRULESCHECK, str(cdb)],
            env={"TCPREMOTEIP": source},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        assert verdict[-1] == ("deny connection" if s.output is None else "allow connection")
        prefix = "set environment variable "
        for line in verdict:
            if line.startswith(prefix):
                name, _, value = line[len(prefix) :].partition("=")
                assert s.env[name] == value


# The digests the README's session shows, for certificates of its own.
README_CERT_HASH = "0eae4581482f14f185c167c69f97152838f229dc9606ba83d60713996d4d677c"
README_SPKI_HASH = "5d3c2f2b0b8a6c1e9f7a4d0e6b2c8f1a3e5d7c9b0a2f4e6d8c1b3a5f7e9d0c2b"


def colons(digest: str) -> str:
    """A hex digest as openssl's -fingerprint writes it."""
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2)).upper()


@pytest.mark.both_engines
def test_mutual_tls(server: ServerFactory, pki: PKI, tmp_path: Path) -> None:
    """Filled in as the README shows with certificates of the test CA, bob's
    first certificate revoked: alice, bob's re-issued certificate and the
    SPIFFE workload are served with their USER; bob's revoked certificate,
    any other and none at all are not."""
    ca = pki.ca

    def issue(stem: str, cn: str, *sans: x509.GeneralName, key: object = None) -> Pair:
        return ca.issue(f"mtls-{stem}", client=True, subject={"CN": cn}, sans=sans, key=key)

    alice = issue("alice", "alice")
    bob = issue("bob", "bob")
    bob_again = issue("bob-again", "bob", key=bob.private_key)
    web = issue("web", "web", x509.UniformResourceIdentifier("spiffe://example.org/ns/prod/sa/web"))
    eve = issue("eve", "eve", x509.UniformResourceIdentifier("spiffe://example.org/ns/dev/sa/web"))

    shutil.copytree(EXAMPLES / "mutual-tls", tmp_path / "mutual-tls")
    shutil.copy(alice.cert, tmp_path / "alice.pem")
    shutil.copy(bob.cert, tmp_path / "bob.pem")
    digests = {
        README_CERT_HASH: alice.cert_hash[7:],
        colons(README_CERT_HASH): colons(alice.cert_hash[7:]),
        README_SPKI_HASH: bob.spki_hash[7:],
    }
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    for command, output in readme_session("Filling in mutual-tls"):
        for sample, real in digests.items():
            output = output.replace(sample, real)
        done = subprocess.run(
            ["sh", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
        )
        assert done.stdout + done.stderr == output, command
    ruleset = tmp_path / "mutual-tls"
    crl = tmp_path / "clients.crl"
    crl.write_bytes(ca.crl([bob.serial]))
    for rule in ("ip4/0.0.0.0_0", "ip6/::_0"):
        placeholder = ruleset / rule / "env" / "CRLFILE"
        assert placeholder.read_text() == "/etc/s6tls/clients.crl\n"
        placeholder.write_text(f"{crl}\n")

    srv = server(
        "-H", "-v", "-Y", "-i", str(ruleset), "127.0.0.1", "0", *ENV_PROG,
        env={**pki.env(), "CAFILE": str(pki.ca.pem)},
    )  # fmt: skip

    def served(pair: Pair | None) -> tuple[dict[str, str], str]:
        ctx = client.context(cert=(pair.key, pair.cert) if pair else None)
        with client.connect(srv.port, ctx=ctx) as s:
            data, how = client.read_all(s)
        return client.env_of(data) if data else {}, how

    for pair, user in ((alice, "alice"), (bob_again, "bob"), (web, "web")):
        got, _ = served(pair)
        assert (got["USER"], got["SSL_PEER_CERT_HASH"]) == (user, pair.cert_hash)
        assert "CRLFILE" not in got
    with pytest.raises(ssl.SSLError, match="alert certificate revoked"):
        served(bob)
    assert served(eve) == ({}, "close_notify")
    assert served(None) == ({}, "close_notify")
    assert srv.wait_log("key cert/none\n")
    log = srv.log()
    assert "CERTIFICATE_VERIFY_FAILED (certificate revoked)" in log
    assert "key cert/@\n" in log
    assert f"key spki/{bob.spki_hash}\n" in log
