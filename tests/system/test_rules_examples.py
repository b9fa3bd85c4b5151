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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography import x509

from s6tls.rules.keys import ALL_FAMILIES
from tests.support import client
from tests.support.certs import Pair
from tests.support.server import BIN, S6_TLSSERVER, Running, free_port, run_command

if TYPE_CHECKING:
    from tests.conftest import PKI, ServerFactory
    from tests.support.certs import Pair

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


# --- two-services-by-sni/: a whole service, run by its own run script ------------

SERVICE = EXAMPLES / "two-services-by-sni"
MAIL_NAMES = ("imap.example.org", "smtp.example.org")
# Stand-ins for the programs the exec files name: an IMAP and a submission
# server that greet with the name and protocol the client got, answer LOGOUT
# or QUIT, and add a line to MARKER each time one starts.
IMAPD = r"""#!/bin/sh
echo imapd >> MARKER
printf '* OK [CAPABILITY IMAP4rev1] %s ready, alpn %s\r\n' \
  "$SSL_TLS_SNI_SERVERNAME" "${SSL_ALPN_PROTOCOL:-none}"
while IFS= read -r line; do
  tag=${line%% *}
  case $line in
    *LOGOUT*) printf '* BYE\r\n%s OK LOGOUT completed\r\n' "$tag"; exit 0 ;;
  esac
  printf '%s BAD unknown command\r\n' "$tag"
done
"""
SUBMISSIOND = r"""#!/bin/sh
echo submissiond >> MARKER
printf '220 %s ESMTP submission ready, alpn %s\r\n' \
  "$SSL_TLS_SNI_SERVERNAME" "${SSL_ALPN_PROTOCOL:-none}"
while IFS= read -r line; do
  case $line in
    QUIT*) printf '221 2.0.0 Bye\r\n'; exit 0 ;;
  esac
  printf '502 5.5.1 not here\r\n'
done
"""


@dataclass
class MailService:
    """The example service, started from a copy of its directory."""

    running: Running
    port: int
    marker: Path
    pairs: dict[str, Pair]
    confined: bool

    def started(self) -> list[str]:
        """The programs started so far, in order."""
        return self.marker.read_text().split() if self.marker.exists() else []


@pytest.fixture(scope="module")
def mail_pairs(pki: PKI) -> dict[str, Pair]:
    """A key pair for each of the example's names, from the test CA."""
    return {
        name: pki.ca.issue(f"example-{name.split('.')[0]}", names=(name,), ips=())
        for name in MAIL_NAMES
    }


def service_copy(target: Path, pairs: dict[str, Pair], port: int, marker: Path) -> Path:
    """The example copied to target and edited as its README says: the key and
    certificate paths and the programs; also the port, and this checkout's server."""
    service = Path(shutil.copytree(SERVICE, target))
    run = (service / "run").read_text()
    for name, pair in pairs.items():
        for placeholder, path in (
            (f"/etc/ssl/private/{name}.key", pair.key),
            (f"/etc/ssl/certs/{name}.pem", pair.cert),
        ):
            assert placeholder in run
            run = run.replace(placeholder, str(path))
    assert "0.0.0.0 443 " in run and "/usr/bin/s6-tlsserver " in run
    run = run.replace("0.0.0.0 443 ", f"127.0.0.1 {port} ")
    run = run.replace("/usr/bin/s6-tlsserver ", f"{S6_TLSSERVER} ")
    (service / "run").write_text(run)
    for name, script in (("imapd", IMAPD), ("submissiond", SUBMISSIOND)):
        prog = service.parent / name
        prog.write_text(script.replace("MARKER", str(marker)))
        prog.chmod(0o755)
        execs = [p for p in service.glob("rules/*/*/exec") if name in p.read_text()]
        assert len(execs) == 2, name  # its name and its protocol
        for exec_file in execs:
            text = exec_file.read_text()
            assert text == f"/usr/local/sbin/{name}\n"
            exec_file.write_text(f"{prog}\n")
    return service


@pytest.fixture
def mail_service(tmp_path: Path, mail_pairs: dict[str, Pair], engine: str) -> Iterator[MailService]:
    """The example's run script, started as s6-supervise or runsv would: in
    its directory. Confined: with TLS_UID and TLS_GID in its environment."""
    port = free_port()
    marker = tmp_path / "started"
    service = service_copy(tmp_path / "two-services-by-sni", mail_pairs, port, marker)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    if engine == "confined":
        env.update(TLS_UID="65534", TLS_GID="65534")
    log = tmp_path / "service.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(service / "run")],
            cwd=service,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: stop() kills it whole
        )
    running = Running(proc, port, log)
    try:
        assert running.wait_log(f"starting - bound to ip 127.0.0.1 port {port}"), running.log()
        yield MailService(running, port, marker, mail_pairs, engine == "confined")
    finally:
        running.stop()


def s_client(port: int, *args: str, data: str = "") -> str:
    """openssl s_client's stdout and stderr, with data as its input."""
    done = run_command(
        [
            "sh",
            "-c",
            f'printf "$0" | openssl s_client -connect 127.0.0.1:{port} -ign_eof "$@" 2>&1',
            data,
            *args,
        ],
        timeout=10,
    )
    return done.stdout


def mail_session(port: int, sni: str, alpn: list[str] | None, ctx: ssl.SSLContext) -> bytes:
    """Python's ssl as a mail client: connect, send LOGOUT and QUIT, read to the end."""
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    with client.connect(port, ctx=ctx, sni=sni) as s:
        s.sendall(b"a1 LOGOUT\r\nQUIT\r\n")
        return client.read_all(s)[0]


def test_two_services_by_sni_is_described_and_compiles(tmp_path: Path) -> None:
    readme = (EXAMPLES / "README.rst").read_text()
    assert "``two-services-by-sni/``" in readme
    assert (SERVICE / "README.rst").is_file() and os.access(SERVICE / "run", os.X_OK)
    rules = SERVICE / "rules"
    assert {p.name for p in rules.iterdir()} == {"ip4", "ip6", "sni", "alpn"}
    for compiler in (OUR_CDB_FROM_FS, SKARNET_CDB_FROM_FS):
        if not os.path.exists(compiler):
            continue
        cdb = tmp_path / "rules.cdb"
        done = subprocess.run(
            [compiler, str(cdb), str(rules)], capture_output=True, text=True, timeout=30
        )
        assert (done.returncode, done.stderr) == (0, ""), compiler
        listed = subprocess.run(
            [S6_TCPRULES, "list", "-x", str(cdb)], capture_output=True, text=True, timeout=30
        )
        direct = subprocess.run(
            [S6_TCPRULES, "list", "-i", str(rules)], capture_output=True, text=True, timeout=30
        )
        assert listed.stdout == direct.stdout and "sni/@ deny" in listed.stdout


def service_readme_session() -> list[tuple[str, str]]:
    """The s6-tcprules commands of the service's README, each with its output."""
    lines = (SERVICE / "README.rst").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "Check what the rules decide" in line)
    session: list[tuple[str, str]] = []
    for line in lines[start + 2 :]:
        if line and not line.startswith("     "):
            break
        text = line[5:]
        if text.startswith("$ "):
            session.append((text[2:], ""))
        elif session:
            command, output = session[-1]
            session[-1] = (command, f"{output}{text}\n")
    return session


def test_two_services_by_sni_readme_checks() -> None:
    """The README's s6-tcprules session, run in the example's directory, as shown."""
    session = service_readme_session()
    assert len(session) == 3
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    for command, output in session:
        done = subprocess.run(
            ["sh", "-c", command], cwd=SERVICE, env=env, capture_output=True, text=True, timeout=30
        )
        assert (done.stdout, done.stderr) == (output.rstrip("\n") + "\n", ""), command
    # Without a name, the rules deny too (with -k 2 the handshake already did).
    no_name = subprocess.run(
        [S6_TCPRULES, "check", "--json", "-i", "rules", "--alpn", "imap", "192.0.2.1"],
        cwd=SERVICE,
        capture_output=True,
        text=True,
        timeout=30,
    )
    answer = json.loads(no_name.stdout)
    assert (no_name.returncode, answer["decision"]) == (1, "deny")
    assert answer["tls"]["denied_by"] == "sni/none"


@pytest.mark.skipif(shutil.which("execlineb") is None, reason="execline is not installed")
@pytest.mark.parametrize("engine", ["open", "confined"], indirect=True)
def test_two_services_by_sni(mail_service: MailService, pki: PKI) -> None:
    port, pairs = mail_service.port, mail_service.pairs
    # openssl s_client as an IMAP client that names its protocol.
    out = s_client(port, "-servername", "imap.example.org", "-alpn", "imap", data="a1 LOGOUT\r\n")
    assert "ALPN protocol: imap" in out
    assert "* OK [CAPABILITY IMAP4rev1] imap.example.org ready, alpn imap\n" in out
    assert "a1 OK LOGOUT completed" in out
    # Confined: the TLS engine runs as TLS_UID, a root helper starts the programs.
    assert (mail_service.running.helper() is not None) == mail_service.confined
    # Python's ssl as a submission client that names no protocol, as most mail
    # clients do; it checks the certificate for the name it asked for.
    verifying = client.context(cafile=pki.ca.pem)
    got = mail_session(port, "smtp.example.org", None, verifying)
    assert got.startswith(b"220 smtp.example.org ESMTP submission ready, alpn none\r\n")
    assert got.endswith(b"221 2.0.0 Bye\r\n")
    with client.connect(port, ctx=client.context(cafile=pki.ca.pem), sni="imap.example.org") as s:
        assert s.getpeercert(binary_form=True) == pairs["imap.example.org"].cert_der_bytes
        s.sendall(b"a1 LOGOUT\r\n")
        assert b"a1 OK LOGOUT completed" in client.read_all(s)[0]
    # The protocol negotiated wins over the name: the program speaks it.
    got = mail_session(port, "imap.example.org", ["smtp"], client.context())
    assert got.startswith(b"220 imap.example.org ESMTP submission ready, alpn smtp\r\n")
    assert mail_service.started() == ["imapd", "submissiond", "imapd", "submissiond"]
    # A web browser sent here (ALPACA): refused during the handshake.
    out = s_client(port, "-servername", "imap.example.org", "-alpn", "h2,http/1.1")
    assert "alert number 120" in out and "ALPN protocol" not in out
    with pytest.raises(ssl.SSLError, match="alert no application protocol"):
        mail_session(port, "smtp.example.org", ["http/1.1"], client.context())
    # A name without its own certificate, or none: refused too (-k 2).
    with pytest.raises(ssl.SSLError, match="alert handshake failure"):
        mail_session(port, "www.example.org", None, client.context())
    out = s_client(port, "-noservername", "-alpn", "imap")
    assert "alert handshake failure" in out and "* OK" not in out
    log = mail_service.running
    assert log.wait_log("no application protocol in common (offered: h2, http/1.1)")
    assert log.wait_log("no application protocol in common (offered: http/1.1)")
    assert log.wait_log("handshake: no certificate for SNI name www.example.org")
    assert log.wait_log("handshake: no SNI name sent")
    assert mail_service.started() == ["imapd", "submissiond", "imapd", "submissiond"]
    assert "Traceback" not in log.log()


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
