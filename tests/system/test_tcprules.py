"""s6-tcprules through its real command line: compile, decompile, check, import, add, remove.

Imports are checked against ucspi-tcp itself: Debian's tcprules compiles the
same text and tcprulescheck says what tcpserver would decide. The keys of the
TLS stage are checked with certificates of the test CA, and against the
real server.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import cdbx
import pytest
from cryptography import x509

from s6tls.rules import Rule, lookup_dir
from s6tls.rules.cdbfile import write_cdb
from s6tls.rules.edit import add_rule
from s6tls.rules.tcprules_text import parse_tcprules
from tests.support import client
from tests.support.certs import Pair
from tests.support.server import BIN
from tests.support.trees import write_files

if TYPE_CHECKING:
    from tests.conftest import PKI, ServerFactory

pytestmark = pytest.mark.timeout(120)

S6_TCPRULES = str(BIN / "s6-tcprules")
CDB_FROM_FS = str(BIN / "s6-accessrules-cdb-from-fs")
FS_FROM_CDB = str(BIN / "s6-accessrules-fs-from-cdb")
SKARNET_CDB_FROM_FS = "/usr/bin/s6-accessrules-cdb-from-fs"
TCPRULES = "/usr/bin/tcprules"
TCPRULESCHECK = "/usr/bin/tcprulescheck"
needs_ucspi = pytest.mark.skipif(
    not (os.path.exists(TCPRULES) and os.path.exists(TCPRULESCHECK)),
    reason="ucspi-tcp's tcprules and tcprulescheck are not installed",
)

Decision = tuple[bool, dict[str, str]]


def run(
    *argv: str, stdin: bytes | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        input=stdin.decode() if stdin is not None else None,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def tcprules(
    *argv: str, stdin: bytes | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return run(S6_TCPRULES, *argv, stdin=stdin, cwd=cwd)


def tree_of(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): path.read_text()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def records(path: Path) -> dict[bytes, bytes]:
    return dict(cdbx.CDB(str(path)).items(all=True))


def entries(directory: Path) -> list[str]:
    """Every name under directory, hidden ones included, to spot leftovers."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def unprivileged(*argv: str) -> list[str]:
    """argv as a user whom permissions stop: root enters any directory, so uid 65534 then."""
    if os.geteuid() != 0:
        return list(argv)
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv]


# --- compile and decompile: the s6-accessrules-* code -----------------------------

TREE = {
    "ip4/10.0.0.0_8/allow": "",
    "ip4/10.0.0.0_8/env/SITE": "office\n",
    "ip4/10.0.0.0_8/env/DEBUG": "",
    "ip4/10.9.0.0_16/deny": "",
    "ip4/10.1.2.3_32/allow": "",
    "ip4/10.1.2.3_32/exec": "fdmove -c 2 1 echo hi\n",
    "ip6/::1_128/allow": "",
    "reversedns/example.com/allow": "",
    "reversedns/example.com/env/VIA": "name\n",
}


def test_compile_is_s6_accessrules_cdb_from_fs(tmp_path: Path) -> None:
    tree = write_files(tmp_path / "rules", TREE)
    assert run(CDB_FROM_FS, str(tmp_path / "theirs.cdb"), str(tree)).returncode == 0
    done = tcprules("compile", "-m", "640", str(tree), str(tmp_path / "ours.cdb"))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert records(tmp_path / "ours.cdb") == records(tmp_path / "theirs.cdb")
    assert stat.S_IMODE((tmp_path / "ours.cdb").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "theirs.cdb").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "argv",
    [
        ["missing", "out.cdb"],
        ["-m", "9", "rules", "out.cdb"],
    ],
)
def test_compile_fails_as_s6_accessrules_cdb_from_fs(tmp_path: Path, argv: list[str]) -> None:
    write_files(tmp_path / "rules", TREE)
    ours = tcprules("compile", *argv, cwd=tmp_path)
    operands = [*argv[:-2], argv[-1], argv[-2]]  # upstream takes cdbfile first
    theirs = run(CDB_FROM_FS, *operands, cwd=tmp_path)
    assert ours.returncode == theirs.returncode != 0
    assert ours.stderr == theirs.stderr
    assert not (tmp_path / "out.cdb").exists()


def test_decompile_is_s6_accessrules_fs_from_cdb(tmp_path: Path) -> None:
    tree = write_files(tmp_path / "rules", TREE)
    assert run(CDB_FROM_FS, str(tmp_path / "rules.cdb"), str(tree)).returncode == 0
    done = tcprules("decompile", str(tmp_path / "rules.cdb"), str(tmp_path / "ours"))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert run(FS_FROM_CDB, str(tmp_path / "theirs"), str(tmp_path / "rules.cdb")).returncode == 0
    assert tree_of(tmp_path / "ours") == tree_of(tmp_path / "theirs") == TREE
    # An existing directory is refused alike.
    ours = tcprules("decompile", "rules.cdb", "ours", cwd=tmp_path)
    theirs = run(FS_FROM_CDB, "ours", "rules.cdb", cwd=tmp_path)
    assert ours.returncode == theirs.returncode == 111
    assert ours.stderr == theirs.stderr


# --- check ---------------------------------------------------------------------------


@pytest.fixture(params=["dir", "cdb"])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    tree = write_files(tmp_path / "rules", TREE)
    if request.param == "dir":
        return ["-i", str(tree)]
    assert run(CDB_FROM_FS, str(tmp_path / "rules.cdb"), str(tree)).returncode == 0
    return ["-x", str(tmp_path / "rules.cdb")]


def test_check_says_which_key_decides(source: list[str]) -> None:
    done = tcprules("check", *source, "10.7.8.9")
    assert (done.returncode, done.stderr) == (0, "")
    answer = [
        "client: 10.7.8.9, no name",
        "decision: allow",
        "key: ip4/10.0.0.0_8",
        "unset: DEBUG",
        "set: SITE=office",
    ]
    assert done.stdout.splitlines() == answer
    # -v adds every key tried, in order, up to the one that decides.
    verbose = tcprules("check", "-v", *source, "10.7.8.9")
    assert (verbose.returncode, verbose.stderr) == (0, "")
    assert verbose.stdout.splitlines() == answer + [
        f"tried: ip4/{n.network_address}_{n.prefixlen}"
        for n in (
            ipaddress.ip_network(f"10.7.8.9/{length}", strict=False) for length in range(32, 7, -1)
        )
    ]


def test_check_json(source: list[str]) -> None:
    done = tcprules("check", "--json", *source, "10.1.2.3")
    assert done.returncode == 0
    assert json.loads(done.stdout) == {
        "ip": "10.1.2.3",
        "name": None,
        "decision": "allow",
        "key": "ip4/10.1.2.3_32",
        "set": {},
        "unset": [],
        "exec": "fdmove -c 2 1 echo hi\n",
        "tried": ["ip4/10.1.2.3_32"],
    }
    human = tcprules("check", *source, "10.1.2.3")
    assert 'exec: execlineb -c "fdmove -c 2 1 echo hi\\n"' in human.stdout.splitlines()


def test_check_denials_exit_1(source: list[str]) -> None:
    denied = json.loads(tcprules("check", "--json", *source, "10.9.1.1").stdout)
    assert (denied["decision"], denied["key"], denied["set"]) == ("deny", "ip4/10.9.0.0_16", {})
    done = tcprules("check", *source, "192.0.2.1")
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "client: 192.0.2.1, no name",
        "decision: deny",
        "key: none (no rule matches)",
    ]
    verbose = tcprules("check", "-v", *source, "192.0.2.1")
    assert verbose.returncode == 1
    assert verbose.stdout.startswith(done.stdout)
    assert verbose.stdout.count("tried: ") == 33
    ipv6 = tcprules("check", "-v", *source, "2001:db8::1")
    assert (ipv6.returncode, ipv6.stdout.count("tried: ")) == (1, 129)


def test_check_names(source: list[str]) -> None:
    named = tcprules("check", "--json", *source, "192.0.2.1", "www.example.com.")
    assert named.returncode == 0
    answer = json.loads(named.stdout)
    assert (answer["name"], answer["key"], answer["set"]) == (
        "www.example.com",
        "reversedns/example.com",
        {"VIA": "name"},
    )
    assert answer["tried"][-3:] == [
        "ip4/0.0.0.0_0",
        "reversedns/www.example.com",
        "reversedns/example.com",
    ]
    # As a server run with -H: the name is not looked at.
    without = tcprules("check", "-H", *source, "192.0.2.1", "www.example.com")
    assert without.returncode == 1
    assert without.stdout.splitlines()[0] == (
        "client: 192.0.2.1, no name (www.example.com ignored: -H)"
    )
    ipv6 = tcprules("check", "--json", *source, "0:0::1")
    assert json.loads(ipv6.stdout)["key"] == "ip6/::1_128"


def test_check_many_clients_from_stdin(source: list[str]) -> None:
    clients = "10.7.8.9\n# a comment\n\n192.0.2.1 www.example.com\n10.9.0.1\n"
    many = tcprules("check", "--json", *source, "-", stdin=clients.encode())
    assert many.returncode == 1  # one at least was denied
    singles = [
        tcprules("check", "--json", *source, "10.7.8.9"),
        tcprules("check", "--json", *source, "192.0.2.1", "www.example.com"),
        tcprules("check", "--json", *source, "10.9.0.1"),
    ]
    assert many.stdout == "".join(done.stdout for done in singles)
    for options in (["-H"], ["-H", "-v"]):
        text = tcprules("check", *options, *source, "-", stdin=clients.encode())
        assert text.returncode == 1
        assert text.stdout == "\n".join(
            tcprules("check", *options, *source, *words).stdout
            for words in (["10.7.8.9"], ["192.0.2.1", "www.example.com"], ["10.9.0.1"])
        )
    allowed = tcprules("check", *source, "-", stdin=b"10.1.1.1\n10.2.2.2\n")
    assert allowed.returncode == 0
    bad = tcprules("check", *source, "-", stdin=b"10.1.1.1\n10.2.2.2 a b\n")
    assert (bad.returncode, bad.stderr) == (
        100,
        "s6-tcprules: fatal: stdin line 2: expected IP [NAME]\n",
    )


def test_check_errors(tmp_path: Path) -> None:
    tree = write_files(tmp_path / "rules", TREE)
    bad_ip = tcprules("check", "-i", str(tree), "10.1.2")
    assert (bad_ip.returncode, bad_ip.stderr) == (
        100,
        "s6-tcprules: fatal: invalid IP address: 10.1.2\n",
    )
    missing = tcprules("check", "-i", "none", "10.1.2.3", cwd=tmp_path)
    assert (missing.returncode, missing.stdout, missing.stderr) == (
        111,
        "",
        "s6-tcprules: fatal: unable to open none: No such file or directory\n",
    )
    a_file = tcprules("check", "-i", "rules/ip4/10.0.0.0_8/allow", "10.1.2.3", cwd=tmp_path)
    assert (a_file.returncode, a_file.stderr) == (
        111,
        "s6-tcprules: fatal: unable to open rules/ip4/10.0.0.0_8/allow: Not a directory\n",
    )
    no_cdb = tcprules("check", "-x", str(tmp_path / "none.cdb"), "10.1.2.3")
    assert (no_cdb.returncode, no_cdb.stdout) == (111, "")
    assert no_cdb.stderr.startswith("s6-tcprules: fatal: unable to cdb_init ")
    usage = tcprules("check", "10.1.2.3")
    assert usage.returncode == 100
    assert usage.stderr.startswith("s6-tcprules: usage:\n")


# --- check with what a handshake tells: --sni, --alpn (SPEC 4b) ---------------------------

TLS_TREE = {
    "ip4/10.0.0.0_8/allow": "",
    "ip4/10.0.0.0_8/env/SITE": "office\n",
    "ip4/10.0.0.0_8/exec": "ip-prog\n",
    "ip4/10.9.0.0_16/deny": "",
    "sni/imap.example.org/allow": "",
    "sni/imap.example.org/env/SERVICE": "imap\n",
    "sni/imap.example.org/exec": "imapd\n",
    "sni/example.org/allow": "",
    "sni/example.org/env/SITE": "web\n",
    "sni/none/deny": "",
    "alpn/smtp/allow": "",
    "alpn/smtp/env/SERVICE": "submission\n",
    "alpn/smtp/env/DEBUG": "",
    "alpn/smtp/exec": "submissiond\n",
    "alpn/http%2F1.1/allow": "",
    "alpn/http%2F1.1/env/PROTOCOL": "http\n",
    "alpn/h2/deny": "",
}


@pytest.fixture(params=["dir", "cdb"])
def tls_source(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    tree = write_files(tmp_path / "tls-rules", TLS_TREE)
    if request.param == "dir":
        return ["-i", str(tree)]
    assert run(CDB_FROM_FS, str(tmp_path / "tls-rules.cdb"), str(tree)).returncode == 0
    return ["-x", str(tmp_path / "tls-rules.cdb")]


def ip_tried(ip: str, down_to: int) -> list[str]:
    """The IPv4 keys the IP stage tries for ip, from /32 down to /down_to."""
    return [
        f"ip4/{net.network_address}_{net.prefixlen}"
        for net in (
            ipaddress.ip_network(f"{ip}/{length}", strict=False)
            for length in range(32, down_to - 1, -1)
        )
    ]


def test_check_sni_text(tls_source: list[str]) -> None:
    done = tcprules("check", *tls_source, "--sni", "imap.example.org", "10.1.2.3")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [
        "client: 10.1.2.3, no name",
        "sni: imap.example.org",
        "alpn: none",
        "decision: allow",
        "key: ip4/10.0.0.0_8",
        "key: sni/imap.example.org",
        "set: SERVICE=imap",
        "set: SITE=office",
        'exec: execlineb -c "imapd\\n"',
    ]
    # A parent domain's rule, whose SITE wins over the IP rule's; the IP
    # rule's exec, as no TLS rule has one; the ALPN key escaped.
    parent = tcprules(
        "check", "-v", *tls_source, "--sni=WWW.Example.Org.", "--alpn=http/1.1", "10.1.2.3"
    )
    assert (parent.returncode, parent.stderr) == (0, "")
    assert parent.stdout.splitlines() == [
        "client: 10.1.2.3, no name",
        "sni: WWW.Example.Org.",
        "alpn: http/1.1",
        "decision: allow",
        "key: ip4/10.0.0.0_8",
        "key: sni/example.org",
        "key: alpn/http%2F1.1",
        "set: PROTOCOL=http",
        "set: SITE=web",
        'exec: execlineb -c "ip-prog\\n"',
        *(f"tried: {key}" for key in ip_tried("10.1.2.3", 8)),
        "tried: sni/www.example.org",
        "tried: sni/example.org",
        "tried: alpn/http%2F1.1",
    ]


def test_check_the_alpn_rules_exec_wins_over_the_sni_rules(tls_source: list[str]) -> None:
    args = ("--sni", "imap.example.org", "--alpn", "smtp", "10.1.2.3")
    done = tcprules("check", *tls_source, *args)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [
        "client: 10.1.2.3, no name",
        "sni: imap.example.org",
        "alpn: smtp",
        "decision: allow",
        "key: ip4/10.0.0.0_8",
        "key: sni/imap.example.org",
        "key: alpn/smtp",
        "unset: DEBUG",
        "set: SERVICE=submission",
        "set: SITE=office",
        'exec: execlineb -c "submissiond\\n"',
    ]
    as_json = tcprules("check", "--json", *tls_source, *args)
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout) == {
        "ip": "10.1.2.3",
        "name": None,
        "decision": "allow",
        "key": "ip4/10.0.0.0_8",
        "set": {"SERVICE": "submission", "SITE": "office"},
        "unset": ["DEBUG"],
        "exec": "submissiond\n",
        "tried": ip_tried("10.1.2.3", 8),
        "tls": {
            "sni": "imap.example.org",
            "alpn": "smtp",
            "certificate": None,
            "keys": ["sni/imap.example.org", "alpn/smtp"],
            "denied_by": None,
            "tried": ["sni/imap.example.org", "alpn/smtp"],
        },
    }


def test_check_tls_denials(tls_source: list[str]) -> None:
    # No SNI: sni/none denies, whatever the ALPN rule says.
    done = tcprules("check", *tls_source, "--alpn", "smtp", "10.1.2.3")
    assert (done.returncode, done.stderr) == (1, "")
    assert done.stdout.splitlines() == [
        "client: 10.1.2.3, no name",
        "sni: none",
        "alpn: smtp",
        "decision: deny",
        "key: ip4/10.0.0.0_8",
        "key: sni/none (deny)",
        "key: alpn/smtp",
    ]
    answer = json.loads(tcprules("check", "--json", *tls_source, "10.1.2.3").stdout)
    assert (answer["decision"], answer["set"], answer["exec"]) == ("deny", {}, None)
    assert answer["tls"] == {
        "sni": None,
        "alpn": None,
        "certificate": None,
        "keys": ["sni/none"],
        "denied_by": "sni/none",
        "tried": ["sni/none", "alpn/none"],
    }
    # A protocol denied, the name allowed.
    h2 = tcprules(
        "check", "--json", *tls_source, "--sni", "www.example.org", "--alpn", "h2", "10.1.2.3"
    )
    answer = json.loads(h2.stdout)
    assert (h2.returncode, answer["decision"]) == (1, "deny")
    assert answer["tls"]["keys"] == ["sni/example.org", "alpn/h2"]
    assert answer["tls"]["denied_by"] == "alpn/h2"
    # Denied by its address: the TLS stage is never reached, and not shown.
    ip = tcprules("check", *tls_source, "--sni", "imap.example.org", "10.9.1.1")
    assert (ip.returncode, ip.stdout.splitlines()) == (
        1,
        ["client: 10.9.1.1, no name", "decision: deny", "key: ip4/10.9.0.0_16"],
    )
    assert "tls" not in json.loads(
        tcprules("check", "--json", *tls_source, "--sni", "imap.example.org", "10.9.1.1").stdout
    )


def test_check_tls_options_apply_to_every_client_from_stdin(tls_source: list[str]) -> None:
    options = ("--json", *tls_source, "--sni", "smtp.example.org", "--alpn", "smtp")
    many = tcprules("check", *options, "-", stdin=b"10.1.2.3\n10.9.0.1\n10.2.0.1\n")
    assert many.returncode == 1  # 10.9.0.1 is denied
    answers = [json.loads(line) for line in many.stdout.splitlines()]
    assert [a["decision"] for a in answers] == ["allow", "deny", "allow"]
    assert [a.get("tls", {}).get("keys") for a in answers] == [
        ["sni/example.org", "alpn/smtp"],
        None,
        ["sni/example.org", "alpn/smtp"],
    ]
    assert answers[0]["set"] == {"SERVICE": "submission", "SITE": "web"}


# --- list ----------------------------------------------------------------------------------

TREE_LISTED = [
    'ip4/10.1.2.3_32 allow "--exec=fdmove -c 2 1 echo hi\\n"',
    "ip4/10.9.0.0_16 deny",
    "ip4/10.0.0.0_8 allow DEBUG SITE=office",
    "ip6/::1_128 allow",
    "reversedns/example.com allow VIA=name",
]


def test_list_shows_every_rule_most_specific_first(source: list[str]) -> None:
    done = tcprules("list", *source)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == TREE_LISTED
    as_json = tcprules("list", "--json", *source)
    assert as_json.returncode == 0
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == [
        {"key": "ip4/10.1.2.3_32", "decision": "allow", "set": {}, "unset": [],
         "exec": "fdmove -c 2 1 echo hi\n"},
        {"key": "ip4/10.9.0.0_16", "decision": "deny", "set": {}, "unset": [], "exec": None},
        {"key": "ip4/10.0.0.0_8", "decision": "allow", "set": {"SITE": "office"},
         "unset": ["DEBUG"], "exec": None},
        {"key": "ip6/::1_128", "decision": "allow", "set": {}, "unset": [], "exec": None},
        {"key": "reversedns/example.com", "decision": "allow", "set": {"VIA": "name"},
         "unset": [], "exec": None},
    ]  # fmt: skip


def test_list_is_the_same_for_a_directory_and_its_cdbs(tmp_path: Path) -> None:
    tree = write_files(
        tmp_path / "rules",
        {
            **TREE,
            # Variables in no particular directory order, which skarnet's compiler keeps.
            **{f"ip4/10.1.2.3_32/env/{name}": f"{name.lower()}\n" for name in "QZAMB"},
            "ip4/10.1.2.3_32/env/SPACE": "two words\n",
            "ip4/10.1.2.3_32/env/TAB": "a\tb\n",
            "ip4/0.0.0.0_0/deny": "",
            "ip4/10.1.2.3_8/deny": "",  # never looked up: host bits set
            "ip6/::_0/deny": "",
            "reversedns/@/deny": "",
            "reversedns/www.example.com/deny": "",
            "uid/0/allow": "",  # s6-ipcserver's, compiled all the same
            "ip4/empty/README": "",  # no allow, no deny: no rule
        },
    )
    listed = tcprules("list", "-i", str(tree))
    assert listed.returncode == 0
    assert listed.stdout.splitlines() == [
        "ip4/10.1.2.3_32 allow A=a B=b M=m Q=q 'SPACE=two words' \"TAB=a\\tb\" Z=z"
        ' "--exec=fdmove -c 2 1 echo hi\\n"',
        *TREE_LISTED[1:3],
        "ip4/0.0.0.0_0 deny",
        "ip4/10.1.2.3_8 deny",
        TREE_LISTED[3],
        "ip6/::_0 deny",
        "reversedns/www.example.com deny",
        TREE_LISTED[4],
        "reversedns/@ deny",
        "uid/0 allow",
    ]
    assert tcprules("compile", str(tree), str(tmp_path / "ours.cdb")).returncode == 0
    cdbs = [tmp_path / "ours.cdb"]
    if os.path.exists(SKARNET_CDB_FROM_FS):
        theirs = tmp_path / "theirs.cdb"
        assert run(SKARNET_CDB_FROM_FS, str(theirs), str(tree)).returncode == 0
        cdbs.append(theirs)
    for cdb in cdbs:
        for options in ([], ["--json"]):
            from_cdb = tcprules("list", *options, "-x", str(cdb))
            from_dir = tcprules("list", *options, "-i", str(tree))
            assert (from_cdb.returncode, from_cdb.stderr) == (0, "")
            assert from_cdb.stdout == from_dir.stdout


def test_list_errors(tmp_path: Path) -> None:
    write_files(tmp_path, {"file": "", "empty/.hidden/x": ""})
    empty = tcprules("list", "-i", "empty", cwd=tmp_path)
    assert (empty.returncode, empty.stdout, empty.stderr) == (0, "", "")
    for argv, message in [
        (["-i", "none"], "unable to opendir none: No such file or directory"),
        (["-i", "file"], "unable to opendir file: Not a directory"),
        (["-x", "none.cdb"], "unable to cdb_init none.cdb: No such file or directory"),
        (["-x", "file"], "unable to cdb_init file: invalid cdb file"),
    ]:
        done = tcprules("list", *argv, cwd=tmp_path)
        assert (done.returncode, done.stdout, done.stderr) == (
            111,
            "",
            f"s6-tcprules: fatal: {message}\n",
        ), argv
    # A value that is neither A nor D is no rule, as for the server; a damaged one is an error.
    write_cdb(str(tmp_path / "odd.cdb"), {"ip4/10.0.0.0_8": b"D", "ip4/10.1.0.0_16": b"Xwhat"})
    odd = tcprules("list", "-x", "odd.cdb", cwd=tmp_path)
    assert (odd.returncode, odd.stdout, odd.stderr) == (0, "ip4/10.0.0.0_8 deny\n", "")
    write_cdb(str(tmp_path / "bad.cdb"), {"ip4/10.0.0.0_8": b"D", "ip4/10.1.0.0_16": b"A\x00"})
    bad = tcprules("list", "-x", "bad.cdb", cwd=tmp_path)
    assert (bad.returncode, bad.stdout, bad.stderr) == (
        111,
        "",
        "s6-tcprules: fatal: unable to read bad.cdb: key ip4/10.1.0.0_16:"
        " invalid rule value: truncated\n",
    )
    for usage in (["list"], ["list", "-i", "a", "-x", "b"], ["list", "-i", "a", "more"]):
        done = tcprules(*usage, cwd=tmp_path)
        assert (done.returncode, done.stdout) == (100, ""), usage
        assert done.stderr.startswith("s6-tcprules: usage:\n")


def test_list_names_an_unreadable_directory(shared_dir: Path) -> None:
    rules = write_files(shared_dir / "rules", {"ip4/10.0.0.0_8/deny": ""})
    rules.chmod(0)
    try:
        done = run(*unprivileged(S6_TCPRULES, "list", "-i", "rules"), cwd=shared_dir)
    finally:
        rules.chmod(0o755)
    assert (done.returncode, done.stdout, done.stderr) == (
        111,
        "",
        "s6-tcprules: fatal: unable to opendir rules: Permission denied\n",
    )


def test_help_and_usage() -> None:
    done = tcprules("--help")
    assert done.returncode == 0
    assert "s6-tcprules import [-H] [-o DIR | -x CDB [-m MODE]] [--] [FILE]" in done.stdout
    assert "s6-tcprules list (-i DIR | -x CDB) [--json]" in done.stdout
    assert tcprules().returncode == 100
    assert tcprules("frobnicate").returncode == 100


# --- import, against ucspi-tcp ----------------------------------------------------------

SMTP_RULES = """\
# /etc/tcp.smtp: who may talk to the mail server, and how
# (compile: tcprules tcp.smtp.cdb tcp.smtp.tmp < tcp.smtp)

# this machine relays
127.0.0.1:allow,RELAYCLIENT="",SITE="localhost"
127.:allow,SITE="loopback"

# head office relays, except the printers and the guest networks
10.1.250.66:deny
10.1.:allow,RELAYCLIENT="",SITE="office"
10.1.8.:allow,SITE="printers"
10.1.200-255.:allow,SITE="guests"

# branch offices relay; one of them is closed (listed first: the first line wins)
10.5.:deny
10.2-9.:allow,RELAYCLIENT="",SITE="branch"

# the VPN pool, split between staff and contractors
172.16.0.1-127:allow,RELAYCLIENT="",SITE="vpn-staff"
172.16.0.128-254:allow,SITE="vpn-contractor"
172.16.0.255:deny

# partners
192.0.2.:allow,SITE="partner-a",MAXMSG=/10485760/
198.51.100.0-63:allow,SITE="partner-b"
198.51.100.64-127:deny
203.0.113.7:allow,SITE="monitoring",NOLOG="1"
203.0.113.:deny

# home workers, but not their ISP's spam range
192.168.13.:deny
192.168.:allow,SITE="home"

# known hosts (tcpserver -p)
=mx.partner.example:allow,SITE="partner-mx"
=.spam.example:deny

# everyone else
:deny
"""

# Lines matching names only, each name with its subdomains: s6 can say that.
PARTNER_RULES = """\
# a service for partner hosts only (tcpserver -p)
192.0.2.7:deny
192.0.2.8:allow,SITE="monitor"
192.0.2.10-20:allow,SITE="lab"
=mx.partner.example:allow,SITE="mx"
=.mx.partner.example:allow,SITE="mx"
=partner.example:allow,SITE="partner"
=.partner.example:allow,SITE="partner"
=.spam.example:deny
=:deny
:deny
"""


def ucspi_cdb(tmp_path: Path, text: str) -> Path:
    """Compile text with ucspi-tcp's tcprules."""
    cdb = tmp_path / "ucspi.cdb"
    done = run(TCPRULES, str(cdb), str(tmp_path / "ucspi.tmp"), stdin=text.encode())
    assert done.returncode == 0, done.stderr
    return cdb


def tcpserver_decision(cdb: Path, ip: str, host: str | None = None) -> Decision:
    """What tcpserver does with a client, as ucspi-tcp's tcprulescheck tells it."""
    env = {"TCPREMOTEIP": ip, **({"TCPREMOTEHOST": host} if host else {})}
    done = subprocess.run(
        [TCPRULESCHECK, str(cdb)], env=env, capture_output=True, text=True, timeout=10
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] in ("allow connection", "deny connection"), lines
    allowed = lines[-1] == "allow connection"
    prefix = "set environment variable "
    env_set = dict(line[len(prefix) :].split("=", 1) for line in lines if line.startswith(prefix))
    return allowed, env_set if allowed else {}


def s6_decision(source: list[str], ip: str, host: str | None = None) -> Decision:
    done = tcprules("check", "--json", *source, ip, *([host] if host else []))
    answer = json.loads(done.stdout)
    allowed = answer["decision"] == "allow"
    assert done.returncode == (0 if allowed else 1)
    assert answer["unset"] == [] and answer["exec"] is None
    return allowed, answer["set"]


def s6_decisions(source: list[str], clients: list[tuple[str, str | None]]) -> list[Decision]:
    """s6-tcprules check for many clients at once (IP -, one client per line of stdin)."""
    lines = "".join(f"{ip} {host}\n" if host else f"{ip}\n" for ip, host in clients)
    done = tcprules("check", "--json", *source, "-", stdin=lines.encode())
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(a["ip"], a["name"]) for a in answers] == clients
    assert all(a["unset"] == [] and a["exec"] is None for a in answers)
    decisions = [(a["decision"] == "allow", a["set"]) for a in answers]
    assert done.returncode == (0 if all(allowed for allowed, _ in decisions) else 1)
    return decisions


def sample_addresses(text: str, count: int, seed: int) -> list[str]:
    """Addresses around the edges and inside of every line's addresses, then random ones."""
    chooser = random.Random(seed)
    found = {0, (1 << 32) - 1}
    for rule in parse_tcprules(text):
        spans = [span(key) for key in rule.keys if key and not key.startswith("=")]
        if not spans:
            continue
        low, high = min(s[0] for s in spans), max(s[1] for s in spans)
        for value in (low - 1, low, low + 1, high - 1, high, high + 1, chooser.randint(low, high)):
            if 0 <= value < 1 << 32:
                found.add(value)
    while len(found) < count:
        found.add(chooser.getrandbits(32))
    return [str(ipaddress.IPv4Address(value)) for value in sorted(found)[:count]]


def span(key: str) -> tuple[int, int]:
    """The first and last address a tcprules address or prefix (``10.1.``) matches."""
    octets = key.rstrip(".").split(".")
    first = ipaddress.IPv4Address(".".join(octets + ["0"] * (4 - len(octets))))
    last = ipaddress.IPv4Address(".".join(octets + ["255"] * (4 - len(octets))))
    return int(first), int(last)


@needs_ucspi
def test_import_decides_as_tcprulescheck(tmp_path: Path) -> None:
    (tmp_path / "tcp.smtp").write_text(SMTP_RULES)
    cdb = ucspi_cdb(tmp_path, SMTP_RULES)
    # The file names a host before address prefixes, which s6 cannot say:
    # imported for a server run with -H, the name lines are left out.
    done = tcprules("import", "-H", "-o", str(tmp_path / "rules"), str(tmp_path / "tcp.smtp"))
    assert done.returncode == 0, done.stderr
    assert done.stderr == (
        f"s6-tcprules: warning: {tmp_path}/tcp.smtp: left out the lines matching names"
        " (35, 36): a server run with -H never looks names up\n"
    )
    source = ["-i", str(tmp_path / "rules")]
    addresses = [*sample_addresses(SMTP_RULES, 198, seed=10), "::1", "2001:db8::1"]
    ours = s6_decisions(source, [(ip, None) for ip in addresses])
    theirs = [tcpserver_decision(cdb, ip) for ip in addresses]
    assert [(ip, a) for ip, a, b in zip(addresses, theirs, ours, strict=True) if a != b] == []
    # Every line's decision was met: 12 SITEs, and deny.
    assert len({str(decision) for decision in theirs}) == 13


@needs_ucspi
def test_import_with_names_decides_as_tcprulescheck(tmp_path: Path) -> None:
    cdb = ucspi_cdb(tmp_path, PARTNER_RULES)
    done = tcprules("import", "-o", str(tmp_path / "rules"), stdin=PARTNER_RULES.encode())
    assert (done.returncode, done.stderr) == (0, "")
    source = ["-i", str(tmp_path / "rules")]
    hosts = [
        None,
        "mx.partner.example",
        "a.mx.partner.example",
        "partner.example",
        "www.partner.example",
        "spam.example",
        "x.spam.example",
        "other.example",
        "partner.example.evil.example",
    ]
    addresses = ("192.0.2.7", "192.0.2.8", "192.0.2.15", "192.0.2.21", "198.51.100.1")
    clients = [(ip, host) for ip in addresses for host in hosts]
    ours = s6_decisions(source, clients)
    theirs = [tcpserver_decision(cdb, ip, host) for ip, host in clients]
    assert [(c, a) for c, a, b in zip(clients, theirs, ours, strict=True) if a != b] == []
    assert len({str(decision) for decision in theirs}) == 5


@needs_ucspi
def test_import_refuses_what_s6_would_decide_otherwise(tmp_path: Path) -> None:
    (tmp_path / "tcp.smtp").write_text(SMTP_RULES)
    done = tcprules("import", "-o", "rules", "tcp.smtp", cwd=tmp_path)
    assert done.returncode == 100
    assert entries(tmp_path) == ["tcp.smtp"]  # nothing written
    lines = done.stderr.splitlines()
    assert all(line.startswith("s6-tcprules: fatal: tcp.smtp: a client at ") for line in lines)
    prefix_conflict = next(line for line in lines if "named mx.partner.example gets" in line)
    assert 'line 35 (=mx.partner.example:allow,SITE="partner-mx") from tcpserver' in prefix_conflict
    assert "s6 tries every address rule" in prefix_conflict
    # ucspi-tcp confirms: for that client, tcpserver follows the name line,
    # and the address rules alone (as s6 would order them) say otherwise.
    ip = prefix_conflict.split("a client at ")[1].split(" ")[0]
    cdb = ucspi_cdb(tmp_path, SMTP_RULES)
    assert tcpserver_decision(cdb, ip, "mx.partner.example") == (True, {"SITE": "partner-mx"})
    assert tcprules("import", "-H", "-o", "rules", "tcp.smtp", cwd=tmp_path).returncode == 0
    assert s6_decision(["-i", str(tmp_path / "rules")], ip) != (True, {"SITE": "partner-mx"})
    # =mx.partner.example matches that name only, while reversedns/ matches below too.
    below = next(line for line in lines if "named unlisted.mx.partner.example" in line)
    assert "matches only mx.partner.example itself" in below
    outside = "198.18.0.1"  # in no address rule
    assert tcpserver_decision(cdb, outside, "mx.partner.example") == (True, {"SITE": "partner-mx"})
    assert tcpserver_decision(cdb, outside, "www.mx.partner.example") == (False, {})


@needs_ucspi
def test_import_refuses_a_line_tcprules_never_uses(tmp_path: Path) -> None:
    text = "10.0.0.1-50:allow\n10.0.0.13:deny\n:deny\n"
    done = tcprules("import", "-x", str(tmp_path / "rules.cdb"), stdin=text.encode())
    assert done.returncode == 100
    assert done.stderr == (
        "s6-tcprules: fatal: stdin: line 2 (10.0.0.13:deny) never applies: line 1"
        " (10.0.0.1-50:allow) comes first for the same address, and tcprules keeps the"
        " first line, while in s6 the more specific one would win; remove line 2 or"
        " move it above line 1\n"
    )
    assert entries(tmp_path) == []
    assert tcpserver_decision(ucspi_cdb(tmp_path, text), "10.0.0.13") == (True, {})
    # Moved above, the exception is the tcprules idiom, and imports exactly.
    text = "10.0.0.13:deny\n10.0.0.1-50:allow\n:deny\n"
    cdb = ucspi_cdb(tmp_path, text)
    done = tcprules("import", "-x", str(tmp_path / "rules.cdb"), stdin=text.encode())
    assert (done.returncode, done.stderr) == (0, "")
    for last in range(10, 17):
        ip = f"10.0.0.{last}"
        assert s6_decision(["-x", str(tmp_path / "rules.cdb")], ip) == tcpserver_decision(cdb, ip)


@needs_ucspi
def test_import_without_a_default_allows_like_tcpserver(tmp_path: Path) -> None:
    text = "10.:deny\n"
    done = tcprules("import", stdin=text.encode())
    assert done.returncode == 0
    assert done.stdout == (
        "ip4/0.0.0.0_0 allow  # tcpserver's default\n"
        "ip4/10.0.0.0_8 deny  # line 1\n"
        "ip6/::_0 allow  # tcpserver's default\n"
    )
    assert "tcpserver allows a client no line matches" in done.stderr
    assert tcpserver_decision(ucspi_cdb(tmp_path, text), "192.0.2.1") == (True, {})


def test_import_forms(tmp_path: Path) -> None:
    (tmp_path / "in").write_text(SMTP_RULES)
    listing = tcprules("import", "-H", "in", cwd=tmp_path)
    assert listing.returncode == 0
    assert "ip4/10.1.200.0_21 allow SITE=guests  # line 12\n" in listing.stdout
    assert "ip4/127.0.0.1_32 allow RELAYCLIENT= SITE=localhost  # line 5\n" in listing.stdout
    assert tcprules("import", "-H", "-o", "rules", "in", cwd=tmp_path).returncode == 0
    done = tcprules(
        "import", "-H", "-x", "rules.cdb", "-m", "644", "-", cwd=tmp_path, stdin=SMTP_RULES.encode()
    )
    assert done.returncode == 0
    assert stat.S_IMODE((tmp_path / "rules.cdb").stat().st_mode) == 0o644
    assert run(CDB_FROM_FS, "compiled.cdb", "rules", cwd=tmp_path).returncode == 0
    assert records(tmp_path / "rules.cdb") == records(tmp_path / "compiled.cdb")
    assert len(listing.stdout.splitlines()) == len(records(tmp_path / "compiled.cdb"))
    tree = tree_of(tmp_path / "rules")
    assert tree["ip4/127.0.0.1_32/env/RELAYCLIENT"] == "\n"  # set, to the empty string
    assert tree["ip4/192.0.2.0_24/env/MAXMSG"] == "10485760\n"
    assert sorted(os.listdir(tmp_path)) == ["compiled.cdb", "in", "rules", "rules.cdb"]
    # An existing directory is left alone.
    again = tcprules("import", "-H", "-o", "rules", "in", cwd=tmp_path)
    assert again.returncode == 111
    assert "File exists" in again.stderr
    assert tree_of(tmp_path / "rules") == tree


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.:allow\n1.2.3.4:foo\n", "line 2: unable to parse this line: 1.2.3.4:foo"),
        (
            "joe@10.1.2.3:allow\n",
            "line 1 (joe@10.1.2.3:allow): IDENT rules (user@address) have no s6 equivalent",
        ),
        ("10.0.0.0/8:allow\n", "line 1 (10.0.0.0/8:allow): tcpserver never matches the address"),
    ],
)
def test_import_errors_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "in").write_text(text)
    done = tcprules("import", "-o", "rules", "in", cwd=tmp_path)
    assert done.returncode == 100
    assert done.stderr.startswith(f"s6-tcprules: fatal: in: {message}")
    assert entries(tmp_path) == ["in"]


def test_import_lists_a_value_that_is_not_printable_on_one_line() -> None:
    done = tcprules("import", stdin=b'10.:allow,A="x\ty",B="two words"\n:deny\n')
    assert (done.returncode, done.stderr) == (0, "")
    assert "ip4/10.0.0.0_8 allow \"A=x\\ty\" 'B=two words'  # line 1\n" in done.stdout


def test_import_unreadable_file(tmp_path: Path) -> None:
    done = tcprules("import", str(tmp_path / "missing"))
    assert (done.returncode, done.stdout) == (111, "")
    assert (
        done.stderr
        == f"s6-tcprules: fatal: unable to read {tmp_path}/missing: No such file or directory\n"
    )


# --- add and remove ----------------------------------------------------------------------


def test_add_and_remove(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    done = tcprules(
        "add", "-i", str(rules), "10.0.0.0/8", "allow",
        "--env", "SITE=office", "--env=EMPTY=", "--unset", "DEBUG",
        "--exec", "fdmove -c 2 1 echo hi",
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert tcprules("add", "-i", str(rules), "ip4/10.9.0.0_16", "deny").returncode == 0
    assert tcprules("add", "-i", str(rules), "reversedns/Example.COM.", "deny").returncode == 0
    assert tcprules("add", "-i", str(rules), "::1", "allow").returncode == 0
    assert tree_of(rules) == {
        "ip4/10.0.0.0_8/allow": "",
        "ip4/10.0.0.0_8/env/DEBUG": "",
        "ip4/10.0.0.0_8/env/EMPTY": "\n",
        "ip4/10.0.0.0_8/env/SITE": "office\n",
        "ip4/10.0.0.0_8/exec": "fdmove -c 2 1 echo hi",
        "ip4/10.9.0.0_16/deny": "",
        "ip6/::1_128/allow": "",
        "reversedns/Example.COM/deny": "",
    }
    answer = json.loads(tcprules("check", "--json", "-i", str(rules), "10.1.1.1").stdout)
    assert (answer["set"], answer["unset"], answer["exec"]) == (
        {"EMPTY": "", "SITE": "office"},
        ["DEBUG"],
        "fdmove -c 2 1 echo hi",
    )

    again = tcprules("add", "-i", str(rules), "10.0.0.0/8", "deny")
    assert (again.returncode, again.stderr) == (
        1,
        "s6-tcprules: fatal: ip4/10.0.0.0_8 already has a rule (use --replace)\n",
    )
    assert tree_of(rules)["ip4/10.0.0.0_8/env/SITE"] == "office\n"
    replaced = tcprules("add", "--replace", "-i", str(rules), "10.0.0.0/8", "deny")
    assert replaced.returncode == 0
    assert [k for k in tree_of(rules) if k.startswith("ip4/10.0.0.0_8/")] == ["ip4/10.0.0.0_8/deny"]

    assert tcprules("remove", "-i", str(rules), "ip4/10.0.0.0_8").returncode == 0
    gone = tcprules("remove", "-i", str(rules), "10.0.0.0/8")
    assert (gone.returncode, gone.stderr) == (1, "s6-tcprules: fatal: ip4/10.0.0.0_8 has no rule\n")
    assert entries(rules) == sorted([
        "ip4", "ip4/10.9.0.0_16", "ip4/10.9.0.0_16/deny", "ip6", "ip6/::1_128",
        "ip6/::1_128/allow", "reversedns", "reversedns/Example.COM", "reversedns/Example.COM/deny",
    ])  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["add", "-i", "rules", "10.1.2.3/8", "deny"], 100,
         "key '10.1.2.3/8' has host bits set: the server looks up ip4/10.0.0.0_8"),
        (["add", "-i", "rules", "ip4/10.1.2.3_8", "deny"], 100, "has host bits set"),
        (["add", "-i", "rules", "uid/0", "deny"], 100, "invalid key 'uid/0'"),
        (["add", "-i", "rules", "ip4/10.0.0.0_8", "allow", "--env", "NOVALUE"], 100,
         "--env NOVALUE: expected NAME=VALUE"),
        (["add", "-i", "rules", "ip4/10.0.0.0_8", "allow", "--env", "A=1", "--unset", "A"], 100,
         "A is given twice"),
        (["add", "-i", "rules", "ip4/10.0.0.0_8", "allow", "--env", "A=x "], 100,
         "an envdir drops trailing blanks"),
        (["add", "-i", "rules", "ip4/10.0.0.0_8", "allow", "--env", ".A=x"], 100,
         "not a variable an envdir can hold"),
        (["add", "-i", "rules", "ip4/10.0.0.0_8", "allow", "--exec", "x" * 4097], 100,
         "exec is 4097 bytes, more than 4096"),
        (["add", "-i", "missing/rules", "ip4/10.0.0.0_8", "allow"], 111,
         "unable to mkdir missing/rules: No such file or directory"),
        (["remove", "-i", "rules", "10.0.0.0.0"], 100, "invalid key"),
    ],
)  # fmt: skip
def test_add_and_remove_errors(tmp_path: Path, argv: list[str], status: int, message: str) -> None:
    (tmp_path / "rules").mkdir()
    done = tcprules(*argv, cwd=tmp_path)
    assert done.returncode == status
    assert done.stderr.startswith("s6-tcprules: fatal: ")
    assert message in done.stderr
    assert entries(tmp_path) == ["rules"]


def test_a_ruleset_from_nothing(tmp_path: Path) -> None:
    """A script's first ruleset: add into no directory, list, compile, list the cdb, check."""
    for rule in (
        ["10.0.0.0/8", "allow", "--env=SITE=office", "--unset=DEBUG"],
        ["10.9.0.0/16", "deny"],
        ["::1", "allow"],
        ["0.0.0.0/0", "deny"],
    ):
        done = tcprules("add", "-i", "rules", *rule, cwd=tmp_path)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), rule
    listed = tcprules("list", "-i", "rules", cwd=tmp_path)
    assert (listed.returncode, listed.stderr) == (0, "")
    assert listed.stdout.splitlines() == [
        "ip4/10.9.0.0_16 deny",
        "ip4/10.0.0.0_8 allow DEBUG SITE=office",
        "ip4/0.0.0.0_0 deny",
        "ip6/::1_128 allow",
    ]
    compiled = tcprules("compile", "rules", "rules.cdb", cwd=tmp_path)
    assert (compiled.returncode, compiled.stderr) == (0, "")
    assert tcprules("list", "-x", "rules.cdb", cwd=tmp_path).stdout == listed.stdout

    short = tcprules("check", "-x", "rules.cdb", "10.1.2.3", cwd=tmp_path)
    assert (short.returncode, short.stderr) == (0, "")
    assert short.stdout.splitlines() == [
        "client: 10.1.2.3, no name",
        "decision: allow",
        "key: ip4/10.0.0.0_8",
        "unset: DEBUG",
        "set: SITE=office",
    ]
    full = tcprules("check", "-v", "-x", "rules.cdb", "10.1.2.3", cwd=tmp_path)
    assert full.returncode == 0
    tried = [ipaddress.ip_network(f"10.1.2.3/{n}", strict=False) for n in range(32, 7, -1)]
    assert full.stdout == short.stdout + "".join(
        f"tried: ip4/{net.network_address}_{net.prefixlen}\n" for net in tried
    )
    denied = tcprules("check", "-x", "rules.cdb", "10.9.8.7", cwd=tmp_path)
    assert (denied.returncode, denied.stdout) == (
        1,
        "client: 10.9.8.7, no name\ndecision: deny\nkey: ip4/10.9.0.0_16\n",
    )


def test_add_creates_a_missing_rules_directory(tmp_path: Path) -> None:
    # Under umask 077 too: the server may read the rules as another user.
    umask_077 = ["sh", "-c", 'umask 077 && exec "$0" "$@"', S6_TCPRULES]
    done = run(*umask_077, "add", "-i", "rules", "10.0.0.0/8", "allow", cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    rules = tmp_path / "rules"
    modes = {
        str(path.relative_to(tmp_path)): stat.S_IMODE(path.stat().st_mode)
        for path in [rules, *rules.rglob("*")]
        if path.is_dir()
    }
    assert modes == {
        "rules": 0o755,
        "rules/ip4": 0o755,
        "rules/ip4/10.0.0.0_8": 0o755,
        "rules/ip6": 0o755,
        "rules/reversedns": 0o755,
    }
    assert tree_of(rules) == {"ip4/10.0.0.0_8/allow": ""}
    # An existing directory gets only the part a key needs, as before.
    (tmp_path / "other").mkdir()
    assert tcprules("add", "-i", "other", "::1", "deny", cwd=tmp_path).returncode == 0
    assert entries(tmp_path / "other") == ["ip6", "ip6/::1_128", "ip6/::1_128/deny"]


@pytest.mark.parametrize(
    ("in_the_way", "rulesdir", "message"),
    [
        ("rules", "rules", "unable to open rules: Not a directory"),
        ("rules/ip4", "rules", "unable to open rules/ip4: Not a directory"),
        ("rules", "rules/new", "unable to mkdir rules/new: Not a directory"),
    ],
)
def test_add_names_a_file_in_the_way(
    tmp_path: Path, in_the_way: str, rulesdir: str, message: str
) -> None:
    write_files(tmp_path, {in_the_way: "not a directory\n"})
    before = entries(tmp_path)
    done = tcprules("add", "-i", rulesdir, "10.0.0.0/8", "deny", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (111, "")
    assert done.stderr == f"s6-tcprules: fatal: {message}\n"
    assert entries(tmp_path) == before


def test_add_names_an_unreadable_directory(shared_dir: Path) -> None:
    rules = write_files(shared_dir / "rules", {"ip4/10.0.0.0_8/deny": ""})
    rules.chmod(0)
    try:
        done = run(*unprivileged(S6_TCPRULES, "add", "-i", "rules", "::1", "deny"), cwd=shared_dir)
        assert (done.returncode, done.stdout) == (111, "")
        assert done.stderr == "s6-tcprules: fatal: unable to mkdir rules/ip6: Permission denied\n"
    finally:
        rules.chmod(0o755)
    assert entries(rules) == ["ip4", "ip4/10.0.0.0_8", "ip4/10.0.0.0_8/deny"]


def test_deny_takes_no_environment(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    done = tcprules("add", "-i", "rules", "10.0.0.0/8", "deny", "--env", "A=1", cwd=tmp_path)
    assert done.returncode == 100
    assert done.stderr.startswith("s6-tcprules: usage:\n")


def test_replace_is_atomic_for_readers(tmp_path: Path) -> None:
    """A reader polling a rule while it is replaced always finds one, complete."""
    rules = tmp_path / "rules"
    rules.mkdir()

    def add(version: str, *options: str) -> None:
        done = tcprules(
            "add", *options, "-i", str(rules), "127.0.0.0/8", "allow",
            "--env", f"V={version}", "--env", f"W={version}", "--exec", f"echo {version}",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    add("a")
    seen: list[Rule | None] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(lookup_dir(str(rules), "ip4/127.0.0.0_8"))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in "bababab":
            add(version, "--replace")
    finally:
        stop.set()
        thread.join()
    assert len(seen) > 10
    # Never no rule, never a rule half written. (lookup_dir reads a rule file by
    # file, so a lookup across a swap may mix both versions' files.)
    for rule in seen:
        assert rule is not None
        assert rule.allow
        assert [name for name, _ in rule.env] == ["V", "W"]
        assert {value for _, value in rule.env} <= {"a", "b"}
        assert rule.exec in ("echo a", "echo b")
    assert lookup_dir(str(rules), "ip4/127.0.0.0_8") == Rule(
        allow=True, env=(("V", "b"), ("W", "b")), exec="echo b"
    )
    assert entries(rules / "ip4") == sorted(
        [
            "127.0.0.0_8",
            "127.0.0.0_8/allow",
            "127.0.0.0_8/env",
            "127.0.0.0_8/env/V",
            "127.0.0.0_8/env/W",
            "127.0.0.0_8/exec",
        ]
    )


def test_replace_never_fails_a_reader(tmp_path: Path) -> None:
    """Rules whose variables differ, swapped for up to 3 s under a polling reader."""
    rules = tmp_path / "rules"
    rules.mkdir()
    versions = [Rule(allow=True, env=(("A", "1"),)), Rule(allow=True, env=(("B", "2"),))]
    add_rule(str(rules), "ip4/127.0.0.0_8", versions[0])
    stop = threading.Event()

    def writer() -> None:
        turn = 1
        while not stop.is_set():
            add_rule(str(rules), "ip4/127.0.0.0_8", versions[turn], replace=True)
            turn ^= 1

    thread = threading.Thread(target=writer)
    thread.start()
    deadline = time.monotonic() + 3
    try:
        while time.monotonic() < deadline:
            assert lookup_dir(str(rules), "ip4/127.0.0.0_8") in versions
    finally:
        stop.set()
        thread.join()


def test_a_running_server_follows_add_and_remove(server: ServerFactory, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    srv = server("-H", "-i", str(rules), "127.0.0.1", "0", "/usr/bin/env")

    def served(source: str) -> dict[str, str] | None:
        try:
            with client.connect(srv.port, source=source) as s:
                return client.env_of(client.read_all(s)[0])
        except (OSError, ConnectionError):
            return None

    assert served("127.0.0.2") is None
    assert (
        tcprules("add", "-i", str(rules), "127.0.0.0/30", "allow", "--env", "WHO=lan").returncode
        == 0
    )
    env = served("127.0.0.2")
    assert env is not None and env["WHO"] == "lan"
    assert tcprules("add", "-i", str(rules), "127.0.0.2", "deny").returncode == 0
    assert served("127.0.0.2") is None
    assert tcprules("remove", "-i", str(rules), "127.0.0.0/30").returncode == 0
    assert served("127.0.0.1") is None


# --- the TLS stage: check with a certificate, list, add -------------------------------

SPIFFE = "spiffe://example.org/ns/prod/sa/web"
SPIFFE_KEY = "san/URI:spiffe:%2F%2Fexample.org%2Fns%2Fprod%2Fsa%2Fweb"


@pytest.fixture(scope="module")
def clients(pki: PKI) -> dict[str, Pair]:
    """Client certificates of the test CA: alice by fingerprint, bob by pin
    (and bob2, re-issued for his key), web by URI, dave by commonName, eve by none."""
    ca = pki.ca

    def issue(stem: str, cn: str, *sans: x509.GeneralName, key: object = None) -> Pair:
        return ca.issue(f"tcprules-{stem}", client=True, subject={"CN": cn}, sans=sans, key=key)

    bob = issue("bob", "bob")
    return {
        "alice": issue("alice", "alice"),
        "bob": bob,
        "bob2": issue("bob2", "bob", key=bob.private_key),
        "web": issue("web", "web", x509.UniformResourceIdentifier(SPIFFE)),
        "dave": issue("dave", "dave"),
        "eve": issue("eve", "eve", x509.DNSName("eve.example.org")),
    }


@pytest.fixture(params=["dir", "cdb"])
def cert_source(
    request: pytest.FixtureRequest, tmp_path: Path, clients: dict[str, Pair]
) -> list[str]:
    alice, bob = clients["alice"], clients["bob"]
    tree = write_files(
        tmp_path / "rules",
        {
            "ip4/0.0.0.0_0/allow": "",
            "ip4/0.0.0.0_0/env/USER": "ip\n",
            "ip4/0.0.0.0_0/env/A": "ip\n",
            f"certhash/{alice.cert_hash}/allow": "",
            f"certhash/{alice.cert_hash}/env/USER": "alice\n",
            f"spki/{bob.spki_hash}/allow": "",
            f"spki/{bob.spki_hash}/env/USER": "bob\n",
            f"{SPIFFE_KEY}/allow": "",
            f"{SPIFFE_KEY}/env/USER": "web\n",
            f"{SPIFFE_KEY}/env/A": "",
            "cn/dave/allow": "",
            "cn/dave/exec": "fdmove -c 2 1 echo dave\n",
            "cert/@/deny": "",
            "cert/none/deny": "",
        },
    )
    if request.param == "dir":
        return ["-i", str(tree)]
    assert run(CDB_FROM_FS, str(tmp_path / "rules.cdb"), str(tree)).returncode == 0
    return ["-x", str(tmp_path / "rules.cdb")]


def test_check_explains_the_certificate_stage(
    cert_source: list[str], clients: dict[str, Pair]
) -> None:
    alice, bob, bob2, web = (clients[n] for n in ("alice", "bob", "bob2", "web"))
    done = tcprules("check", *cert_source, "--cert", str(alice.cert), "192.0.2.7")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [
        "client: 192.0.2.7, no name",
        "sni: none",
        "alpn: none",
        f"certificate: {alice.cert_hash}",
        "decision: allow",
        "key: ip4/0.0.0.0_0",
        f"key: certhash/{alice.cert_hash}",
        "set: A=ip",
        "set: USER=alice",  # the certificate rule wins over the IP rule's
    ]
    der = tcprules("check", *cert_source, "--cert", str(alice.cert_der), "192.0.2.7")
    assert der.stdout == done.stdout
    # A pin holds for every certificate of the key; a URI is found by its escaped key.
    for pair, key, user in ((bob, f"spki/{bob.spki_hash}", "bob"),
                            (bob2, f"spki/{bob.spki_hash}", "bob"),
                            (web, SPIFFE_KEY, "web")):  # fmt: skip
        answer = json.loads(
            tcprules("check", "--json", *cert_source, "--cert", str(pair.cert), "10.0.0.1").stdout
        )
        assert (answer["decision"], answer["key"]) == ("allow", "ip4/0.0.0.0_0")
        assert answer["set"]["USER"] == user
        assert answer["tls"] == {
            "sni": None,
            "alpn": None,
            "certificate": pair.cert_hash,
            "keys": ["sni/none", "alpn/none", key][2:],
            "denied_by": None,
            "tried": answer["tls"]["tried"],
        }
    # The web rule unsets A; -v lists the certificate keys tried up to the one found.
    verbose = tcprules("check", "-v", *cert_source, "--cert", str(web.cert), "10.0.0.1")
    lines = verbose.stdout.splitlines()
    assert "unset: A" in lines and "set: USER=web" in lines
    assert lines[-4:] == [
        "tried: alpn/none",
        f"tried: certhash/{web.cert_hash}",
        f"tried: spki/{web.spki_hash}",
        f"tried: {SPIFFE_KEY}",
    ]
    # A certificate rule's exec.
    dave = tcprules("check", *cert_source, "--cert", str(clients["dave"].cert), "10.0.0.1")
    assert 'exec: execlineb -c "fdmove -c 2 1 echo dave\\n"' in dave.stdout.splitlines()


def test_check_explains_a_certificate_denial(
    cert_source: list[str], clients: dict[str, Pair]
) -> None:
    eve = clients["eve"]
    done = tcprules("check", *cert_source, "--cert", str(eve.cert), "192.0.2.7")
    assert (done.returncode, done.stderr) == (1, "")
    assert done.stdout.splitlines() == [
        "client: 192.0.2.7, no name",
        "sni: none",
        "alpn: none",
        f"certificate: {eve.cert_hash}",
        "decision: deny",
        "key: ip4/0.0.0.0_0",
        "key: cert/@ (deny)",
    ]
    verbose = tcprules("check", "-v", *cert_source, "--cert", str(eve.cert), "192.0.2.7")
    assert verbose.stdout.splitlines()[-6:] == [
        "tried: alpn/none",
        f"tried: certhash/{eve.cert_hash}",
        f"tried: spki/{eve.spki_hash}",
        "tried: san/DNS:eve.example.org",
        "tried: cn/eve",
        "tried: cert/@",
    ]
    none = tcprules("check", "--json", *cert_source, "--no-cert", "192.0.2.7")
    assert none.returncode == 1
    answer = json.loads(none.stdout)
    assert (answer["decision"], answer["set"]) == ("deny", {})
    assert answer["tls"]["denied_by"] == "cert/none"
    assert answer["tls"]["certificate"] is None
    # Without --cert or --no-cert, no certificate is asked for (no -Y, -y):
    # the IP rule alone decides, and the TLS stage is not shown.
    plain = tcprules("check", *cert_source, "192.0.2.7")
    assert (plain.returncode, plain.stdout.splitlines()[:3]) == (
        0,
        ["client: 192.0.2.7, no name", "decision: allow", "key: ip4/0.0.0.0_0"],
    )
    bad = tcprules("check", *cert_source, "--cert", str(eve.key), "192.0.2.7")
    assert (bad.returncode, bad.stderr) == (
        111,
        f"s6-tcprules: fatal: unable to read certificate {eve.key}: not a PEM or DER certificate\n",
    )


def test_list_orders_the_tls_families_as_the_server_tries_them(tmp_path: Path) -> None:
    digest = "0123456789abcdef" * 4
    keys = [
        "ip4/10.0.0.0_8",
        "ip6/::_0",
        "reversedns/@",
        "sni/a.example.org",
        "sni/example.org",
        "sni/@",
        "sni/none",
        "alpn/h2",
        "alpn/@",
        "alpn/none",
        f"certhash/SHA256:{digest}",
        f"spki/SHA256:{digest}",
        "san/DNS:x.example.org",
        SPIFFE_KEY,
        "san/email:a@example.org",
        "cn/alice",
        "cert/@",
        "cert/none",
        "uid/0",
    ]
    order = [11, 3, 17, 0, 9, 14, 1, 16, 5, 12, 7, 18, 2, 15, 6, 10, 4, 13, 8]
    tree = write_files(tmp_path / "rules", {f"{keys[i]}/deny": "" for i in order})
    listed = tcprules("list", "-i", str(tree))
    assert listed.stdout.splitlines() == [f"{key} deny" for key in keys]
    assert run(CDB_FROM_FS, str(tmp_path / "rules.cdb"), str(tree)).returncode == 0
    assert tcprules("list", "-x", str(tmp_path / "rules.cdb")).stdout == listed.stdout


def test_add_and_remove_the_keys_of_the_tls_stage(tmp_path: Path, clients: dict[str, Pair]) -> None:
    web, alice = clients["web"], clients["alice"]
    digest = alice.cert_hash.partition(":")[2]
    for rule in (
        [f"san/URI:{SPIFFE}", "allow", "--env=USER=web"],  # into no directory yet
        [f"certhash/SHA256:{digest.upper()}", "allow", "--env=USER=alice"],
        [f"spki/sha256:{alice.spki_hash[7:]}", "allow"],
        ["sni/Mail.Example.ORG.", "allow", "--exec=echo mail"],
        ["sni/none", "allow"],
        ["alpn/http/1.1", "allow"],
        ["san/dns:Device1.Example.ORG", "allow"],
        ["san/email:Carol@Example.org", "allow"],
        ["cn/../ip4/0.0.0.0_0", "deny"],
        ["cert/@", "deny"],
        ["cert/none", "deny"],
    ):
        done = tcprules("add", "-i", "rules", *rule, cwd=tmp_path)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), rule
    rules = tmp_path / "rules"
    assert tree_of(rules) == {
        f"{SPIFFE_KEY}/allow": "",
        f"{SPIFFE_KEY}/env/USER": "web\n",
        f"certhash/{alice.cert_hash}/allow": "",
        f"certhash/{alice.cert_hash}/env/USER": "alice\n",
        f"spki/{alice.spki_hash}/allow": "",
        "sni/mail.example.org/allow": "",
        "sni/mail.example.org/exec": "echo mail",
        "sni/none/allow": "",
        "alpn/http%2F1.1/allow": "",
        "san/DNS:device1.example.org/allow": "",
        "san/email:Carol@Example.org/allow": "",
        "cn/%2E.%2Fip4%2F0.0.0.0_0/deny": "",
        "cert/@/deny": "",
        "cert/none/deny": "",
    }
    # The first add made the whole ruleset: its IP parts and the key's own.
    assert sorted(p.name for p in rules.iterdir()) == sorted(
        ["ip4", "ip6", "reversedns", "san", "certhash", "spki", "sni", "alpn", "cn", "cert"]
    )
    # Written escaped, the same key: it has a rule.
    again = tcprules("add", "-i", "rules", SPIFFE_KEY, "deny", cwd=tmp_path)
    assert (again.returncode, again.stderr) == (
        1,
        f"s6-tcprules: fatal: {SPIFFE_KEY} already has a rule (use --replace)\n",
    )
    assert tcprules("add", "-i", "rules", "0.0.0.0/0", "allow", cwd=tmp_path).returncode == 0
    checked = tcprules(
        "check", "--json", "-i", "rules", "--cert", str(web.cert), "10.0.0.1", cwd=tmp_path
    )
    answer = json.loads(checked.stdout)
    assert (answer["decision"], answer["set"], answer["tls"]["keys"]) == (
        "allow",
        {"USER": "web"},
        ["sni/none", SPIFFE_KEY],
    )
    # remove takes the same forms.
    assert tcprules("remove", "-i", "rules", f"san/URI:{SPIFFE}", cwd=tmp_path).returncode == 0
    assert tcprules("remove", "-i", "rules", "cn/../ip4/0.0.0.0_0", cwd=tmp_path).returncode == 0
    gone = tcprules("remove", "-i", "rules", SPIFFE_KEY, cwd=tmp_path)
    assert (gone.returncode, gone.stderr) == (1, f"s6-tcprules: fatal: {SPIFFE_KEY} has no rule\n")
    assert not (rules / SPIFFE_KEY).exists() and not (rules / "cn/%2E.%2Fip4%2F0.0.0.0_0").exists()


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("certhash/SHA256:abc", "expected certhash/SHA256: and the 64 hex digits"),
        ("certhash/MD5:" + "0" * 32, "expected certhash/SHA256:"),
        ("spki/" + "0" * 64, "expected spki/SHA256:"),
        ("san/IP:192.0.2.1", "expected san/DNS:NAME, san/URI:URI or san/email:ADDRESS"),
        ("cert/anyone", "expected cert/@ or cert/none"),
        ("sni/", "the value is empty"),
        ("cn/" + "x" * 256, "over 255 bytes once escaped"),
    ],
)
def test_add_refuses_a_tls_key_the_server_never_looks_up(
    tmp_path: Path, key: str, message: str
) -> None:
    (tmp_path / "rules").mkdir()
    done = tcprules("add", "-i", "rules", key, "deny", cwd=tmp_path)
    assert done.returncode == 100
    assert done.stderr.startswith(f"s6-tcprules: fatal: invalid key {key!r}: ")
    assert message in done.stderr
    assert entries(tmp_path) == ["rules"]


def test_help_names_the_keys_of_the_tls_stage() -> None:
    done = tcprules("--help")
    text = " ".join(done.stdout.split())
    assert "certhash/SHA256:HEX, spki/SHA256:HEX, san/DNS:NAME, san/URI:URI," in text
    assert "san/URI:spiffe://example.org/x is san/URI:spiffe:%2F%2Fexample.org%2Fx" in text


def test_a_running_server_follows_certificate_rules_added_and_removed(
    server: ServerFactory, pki: PKI, tmp_path: Path, clients: dict[str, Pair]
) -> None:
    web, eve = clients["web"], clients["eve"]
    rules = tmp_path / "rules"
    for rule in (["0.0.0.0/0", "allow"], ["cert/@", "deny"]):
        assert tcprules("add", "-i", str(rules), *rule).returncode == 0
    env = {**pki.env(), "CAFILE": str(pki.ca.pem)}
    srv = server("-H", "-y", "-i", str(rules), "127.0.0.1", "0", "/usr/bin/env", env=env)

    def user(pair: Pair) -> str | None:
        ctx = client.context(cert=(pair.key, pair.cert))
        with client.connect(srv.port, ctx=ctx) as s:
            data, _ = client.read_all(s)
        return client.env_of(data).get("USER") if data else None

    assert user(web) is None
    added = tcprules("add", "-i", str(rules), f"san/URI:{SPIFFE}", "allow", "--env=USER=web")
    assert added.returncode == 0
    assert (user(web), user(eve)) == ("web", None)
    assert tcprules("remove", "-i", str(rules), f"san/URI:{SPIFFE}").returncode == 0
    assert user(web) is None
