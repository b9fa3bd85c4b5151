"""The TLS surface, as sslscan and testssl.sh see it, and key material kept out of logs and prog.

sslscan (Debian's) probes the running server: only TLS 1.2 and 1.3, only
ECDHE with AEAD suites in TLS 1.2, no compression, no insecure
renegotiation. testssl.sh finds nothing to report (LOW and above) but what
the test certificate itself earns. The key's PEM text and the TLS engine's
variables never reach prog (without -Z) or the log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess

import pytest

from tests.reliability import observe
from tests.support import client

pytestmark = pytest.mark.timeout(120)

ENGINE_VARIABLES = ("KEYFILE", "CERTFILE", "CAFILE", "CADIR", "TLS_UID", "TLS_GID")
STRONG_SUITE = re.compile(
    r"TLS_(AES_128_GCM_SHA256|AES_256_GCM_SHA384|CHACHA20_POLY1305_SHA256)"  # TLS 1.3
    r"|ECDHE-(ECDSA|RSA)-(AES128-GCM-SHA256|AES256-GCM-SHA384|CHACHA20-POLY1305)"  # TLS 1.2
)
TESTSSL = shutil.which("testssl") or shutil.which("testssl.sh")  # Debian's name, upstream's


def sslscan(port: int) -> str:
    proc = subprocess.run(
        ["sslscan", "--no-colour", f"127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=90,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def protocols(scan: str) -> dict[str, str]:
    """The 'SSL/TLS Protocols' section: protocol name to 'enabled' / 'disabled'."""
    found = re.findall(r"^(SSLv[23]|TLSv1\.[0-3])\s+(enabled|disabled)\s*$", scan, re.M)
    return dict(found)


def suites(scan: str) -> list[tuple[str, str]]:
    """(protocol, suite name) for every suite the server accepted."""
    return re.findall(r"^(?:Preferred|Accepted)\s+(\S+)\s+\d+ bits\s+(\S+)", scan, re.M)


@pytest.mark.skipif(shutil.which("sslscan") is None, reason="sslscan is not installed")
@pytest.mark.parametrize("pair", ["ec", "rsa"])
def test_sslscan_sees_only_strong_tls(server, pki, pair):
    srv = server("-H", "127.0.0.1", "0", "/bin/cat", env=pki.env(getattr(pki, pair)))
    idle = observe.idle(srv.pid)
    scan = sslscan(srv.port)

    assert protocols(scan) == {
        "SSLv2": "disabled",
        "SSLv3": "disabled",
        "TLSv1.0": "disabled",
        "TLSv1.1": "disabled",
        "TLSv1.2": "enabled",
        "TLSv1.3": "enabled",
    }, scan
    accepted = suites(scan)
    assert {p for p, _ in accepted} == {"TLSv1.2", "TLSv1.3"}, scan
    weak = [s for _, s in accepted if not STRONG_SUITE.fullmatch(s)]
    assert not weak, weak
    assert "Compression enabled" not in scan
    assert re.search(
        r"^(Session renegotiation not supported|Secure session renegotiation supported)$",
        scan,
        re.M,
    ), scan
    assert "Insecure session renegotiation" not in scan
    heartbleed = re.findall(r"^TLSv1\.[23] (.*) heartbleed$", scan, re.M)
    assert heartbleed and set(heartbleed) == {"not vulnerable to"}, scan

    # A real client agrees: no compression, and the server is unharmed by the probes.
    with client.connect(srv.port) as s:
        assert s.compression() is None
        s.sendall(b"x")
        assert s.recv(1) == b"x"
    assert srv.proc.poll() is None
    end = observe.settle(srv.pid, idle)
    assert (end.fds, end.children) == (idle.fds, idle.children), end.describe()


# What testssl.sh reports about the certificate rather than the server: the
# test CA's certificates are throwaways. Every other finding of LOW and above fails.
CERTIFICATE_FINDINGS = {
    "cert_expirationStatus": "the test certificates live 30 days; testssl.sh warns under 60",
    "cert_notAfter": "the same expiry, reported as a date",
    "cert_revocation": "the test CA publishes neither a CRL nor an OCSP responder",
}
SEVERE = {"LOW", "MEDIUM", "HIGH", "CRITICAL", "FATAL"}  # FATAL: the scan itself failed
# One finding from each part of the scan, so that a scan cut short cannot pass.
SCANNED = {
    "TLS1_2",  # -p
    "cipherlist_AVERAGE",  # -s
    "PFS",  # -f
    "cipher_order",  # -P
    "TLS_session_ticket",  # -S
    "cert_chain_of_trust",
    "heartbleed",  # -U
    "ROBOT",
    "SWEET32",
    "LUCKY13",
}


def run_testssl(port: int, cafile: str, tmp_path) -> list[dict[str, str]]:
    """testssl.sh's findings on 127.0.0.1:port, bounded in time and loopback only.

    It checks protocols, cipher categories, forward secrecy, the server's
    order, its defaults (tickets, certificate) and every vulnerability; it
    leaves out what only informs (client simulation, each cipher) or does not
    apply (HTTP headers: prog is not a web server).
    """
    report = tmp_path / "testssl.json"
    argv = [
        TESTSSL, "--quiet", "--color", "0", "--warnings", "batch",
        "--nodns", "none",  # no DNS query leaves the machine (CAA, rDNS)
        "--add-ca", cafile, "--connect-timeout", "10", "--openssl-timeout", "10",
        "-p", "-s", "-f", "-P", "-S", "-U",
        "--jsonfile", str(report), f"127.0.0.1:{port}",
    ]  # fmt: skip
    with open(tmp_path / "testssl.txt", "wb") as out:
        # Its own session, so that the openssl processes it starts die with it.
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
        try:
            proc.wait(timeout=150)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    assert report.exists(), (tmp_path / "testssl.txt").read_text()
    findings: list[dict[str, str]] = json.loads(report.read_text())
    return findings


@pytest.mark.timeout(200)
@pytest.mark.skipif(TESTSSL is None, reason="testssl.sh is not installed")
def test_testssl_finds_nothing_but_the_test_certificate(server, pki, tmp_path):
    srv = server("-H", "127.0.0.1", "0", "/bin/cat", env=pki.env(pki.ec))
    findings = run_testssl(srv.port, str(pki.ca.pem), tmp_path)

    seen = {f["id"] for f in findings}
    assert seen >= SCANNED, (sorted(SCANNED - seen), (tmp_path / "testssl.txt").read_text())
    problems = [
        f"{f['id']} {f['severity']}: {f['finding']}"
        for f in findings
        if f["severity"] in SEVERE and f["id"] not in CERTIFICATE_FINDINGS
    ]
    assert not problems, problems
    assert srv.proc.poll() is None


def key_lines(pki, *pairs: str) -> list[str]:
    """The base64 lines of the PEM keys (all but the BEGIN/END lines)."""
    lines = []
    for pair in pairs:
        text = getattr(pki, pair).key.read_text()
        lines += [x for x in text.splitlines() if x and not x.startswith("-----")]
    assert len(lines) > 2
    return lines


def assert_no_key_material(text: str, pki, *pairs: str) -> None:
    assert "PRIVATE KEY" not in text
    for line in key_lines(pki, *pairs):
        assert line not in text


def prog_output(srv, **kw) -> str:
    with client.connect(srv.port, **kw) as s:
        return client.read_all(s)[0].decode(errors="replace")


def test_key_material_never_reaches_prog_or_log(server, pki, tmp_path):
    """KEYFILE, CERTFILE and their SNI forms, CAFILE: none reach prog; the log holds no key,
    not even when a rotated key file fails to load."""
    keyfile = tmp_path / "served.key"
    keyfile.write_bytes(pki.ec.key.read_bytes())
    env = {
        "KEYFILE": str(keyfile),
        "CERTFILE": str(pki.ec.cert),
        "KEYFILE:alt.test": str(pki.alt.key),
        "CERTFILE:alt.test": str(pki.alt.cert),
        "CAFILE": str(pki.ca.pem),
    }
    prog = ("/bin/sh", "-c", "env; echo ---; ls -l /proc/$$/fd/")
    srv = server("-v", "-H", "-k", "1", "-Y", "127.0.0.1", "0", *prog, env=env)
    outputs = [prog_output(srv), prog_output(srv, sni="alt.test")]
    for text in outputs:
        environ, _, fds = text.partition("---\n")
        names = {line.partition("=")[0] for line in environ.splitlines()}
        assert not names & set(ENGINE_VARIABLES), names
        assert not [n for n in names if n.startswith(("KEYFILE:", "CERTFILE:"))], names
        assert str(keyfile) not in text and str(pki.alt.key) not in text
        assert_no_key_material(text, pki, "ec", "alt")
        # prog holds its three standard descriptors (and ls its directory): no key, no memfd.
        assert "memfd" not in fds and ".key" not in fds, fds

    # Rotations that fail to load: the wrong key, then half a key.
    keyfile.write_bytes(pki.rsa.key.read_bytes())
    prog_output(srv)
    half = pki.rsa.key.read_text().splitlines()
    keyfile.write_text("\n".join(half[: len(half) // 2]) + "\n")
    prog_output(srv)
    assert srv.wait_log("still serving the previous one", count=2), srv.log()
    assert_no_key_material(srv.log(), pki, "ec", "alt", "rsa")


def test_rule_chosen_key_never_reaches_prog(server, pki, tmp_path):
    """A rule's env may choose KEYFILE/CERTFILE for a client: prog still never sees them."""
    rule = tmp_path / "rules/ip4/127.0.0.1_32"
    (rule / "env").mkdir(parents=True)
    (rule / "allow").touch()
    (rule / "env/KEYFILE").write_text(f"{pki.rsa.key}\n")
    (rule / "env/CERTFILE").write_text(f"{pki.rsa.cert}\n")
    srv = server("-H", "-i", str(tmp_path / "rules"), "127.0.0.1", "0", "/usr/bin/env")
    with client.connect(srv.port) as s:
        der = s.getpeercert(binary_form=True)
        text = client.read_all(s)[0].decode()
    assert der == pki.rsa.cert_der_bytes  # the rule's pair served this client
    names = {line.partition("=")[0] for line in text.splitlines()}
    assert not names & set(ENGINE_VARIABLES), names
    assert_no_key_material(text + srv.log(), pki, "rsa", "ec")


def test_Z_keeps_the_variables_so_the_checks_above_can_fail(server, pki):
    srv = server("-H", "-Z", "127.0.0.1", "0", "/usr/bin/env")
    names = {line.partition("=")[0] for line in prog_output(srv).splitlines()}
    assert {"KEYFILE", "CERTFILE"} <= names


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_client_renegotiation_is_refused(server):
    """A TLS 1.2 client asking to renegotiate (openssl s_client's R) is refused; the
    server lives on."""
    srv = server("-v", "-H", "127.0.0.1", "0", "/bin/cat")
    proc = subprocess.Popen(
        ["openssl", "s_client", "-tls1_2", "-connect", f"127.0.0.1:{srv.port}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"before\n")
        proc.stdin.flush()
        for line in proc.stdout:
            if line == b"before\n":
                break  # echoed: the session runs
        proc.stdin.write(b"R\n")  # s_client: renegotiate
        proc.stdin.flush()
        rest = proc.stdout.read()  # to the end: the server refused
        proc.stdin.close()
        proc.wait(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert b"RENEGOTIATING" in rest and b"no renegotiation" in rest, rest
    assert srv.wait_log("end pid")
    assert srv.proc.poll() is None
    with client.connect(srv.port) as s:
        s.sendall(b"x")
        assert s.recv(1) == b"x"
