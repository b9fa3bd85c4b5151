"""Names and IDENT through the real s6-tlsserver: TCPREMOTEHOST, TCPLOCALHOST, TCPREMOTEINFO,
reversedns rules, -p, -w/-W, -t, -h, -l, -H.

Every server here asks only the resolvers of this module, on their own
loopback addresses (DNSCACHEIP): dnsmasq with fixed names for 127.0.0.x,
and a silent one (SPEC.md §2, §4, §7; REFERENCE-BEHAVIOUR.md §12, E08c,
E09, E09X, E20, E23).
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dns.reversename
import pytest

from s6tls.resolvconf import parse_hosts
from tests.support import client
from tests.support.server import BIN, Running, run_command, wait_for
from tests.support.trees import write_files
from tests.system.dnsfixture import (
    DNSMASQ,
    OIDENTD,
    SilentIdent,
    SilentResolver,
    dnsmasq,
    free_loopback_address,
    oidentd,
)

if TYPE_CHECKING:
    from tests.conftest import PKI, ServerFactory

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.both_engines,
    pytest.mark.skipif(os.geteuid() != 0, reason="binds ports 53 and 113: needs root"),
]

ENV_PROG = ("/usr/bin/env",)
OUR_CDB_FROM_FS = str(BIN / "s6-accessrules-cdb-from-fs")

LOCALHOST = "127.0.0.1"  # PTR localhost., A localhost. 127.0.0.1
NAMED = "127.0.0.2"  # PTR a.b.example.test., which resolves back
NONAME = "127.0.0.3"  # no PTR: NXDOMAIN
LIAR = "127.0.0.4"  # PTR liar.s6tls.test., whose address is 127.0.0.99
HANGING = "127.0.0.5"  # its PTR zone is forwarded to the silent resolver


def _ptr(ip: str) -> str:
    return dns.reversename.from_address(ip).to_text(omit_final_dot=True)


def records(silent: str) -> list[str]:
    """dnsmasq options: the names above, and one zone handed to `silent`."""
    return [
        "--local=/127.in-addr.arpa/",
        "--local=/example.test/",
        "--local=/s6tls.test/",
        f"--host-record=localhost,{LOCALHOST}",
        f"--host-record=a.b.example.test,{NAMED}",
        "--host-record=liar.s6tls.test,127.0.0.99",
        f"--ptr-record={_ptr(LIAR)},liar.s6tls.test",
        f"--server=/{_ptr(HANGING)}/{silent}",
    ]


class Resolvers:
    """This module's name servers, by role."""

    def __init__(self, tmp: Path) -> None:
        taken: set[str] = set()
        self.good = free_loopback_address(53, taken)
        self.silent = SilentResolver(free_loopback_address(53, taken))
        self.ident = free_loopback_address(113, taken)
        self.silent_ident = SilentIdent(free_loopback_address(113, taken))
        self.dnsmasq_log = tmp / "dnsmasq.log"
        self.oidentd_log = tmp / "oidentd.log"

    def queries(self) -> list[str]:
        """dnsmasq's log lines for the queries it received so far."""
        return [line for line in self.dnsmasq_log.read_text().splitlines() if "query[" in line]

    def wait_query(self, text: str, since: int) -> bool:
        """Wait until a query log line after the first `since` ones holds `text`."""
        return wait_for(lambda: any(text in line for line in self.queries()[since:]), 2)


@pytest.fixture(scope="module")
def resolvers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Resolvers]:
    for program in (DNSMASQ, OIDENTD):
        if not shutil.which(program):
            pytest.skip(f"{program} is not installed")
    r = Resolvers(tmp_path_factory.mktemp("names-server"))
    try:
        with (
            dnsmasq(r.good, records(r.silent.address), r.dnsmasq_log),
            oidentd(r.ident, r.oidentd_log),
        ):
            yield r
    finally:
        r.silent.close()
        r.silent_ident.close()


@pytest.fixture
def silent(resolvers: Resolvers) -> Iterator[SilentResolver]:
    """The silent resolver, with no query left over from an earlier test."""
    resolvers.silent.queries()
    yield resolvers.silent


def environ(pki: PKI, resolver: str) -> dict[str, str]:
    """The server's environment: the EC pair, DNSCACHEIP, and names it must not pass on."""
    return {
        **pki.env(),
        "DNSCACHEIP": resolver,
        "TCPREMOTEHOST": "inherited",
        "TCPLOCALHOST": "inherited",
        "TCPREMOTEINFO": "inherited",
    }


NAME_VARIABLES = ("TCPREMOTEHOST", "TCPLOCALHOST", "TCPREMOTEINFO")


@dataclass
class Outcome:
    """What one client saw: its port, prog's environment if served, and how long it took."""

    port: int
    env: dict[str, str] | None
    seconds: float

    @property
    def denied(self) -> bool:
        return self.env is None

    def names(self) -> dict[str, str]:
        assert self.env is not None, "the connection was dropped"
        return {k: v for k, v in self.env.items() if k in NAME_VARIABLES}


def attempt(port: int, source: str, host: str = "127.0.0.1") -> Outcome:
    """Connect from `source`, handshake and read prog's output; a cut handshake is a drop."""
    start = time.monotonic()
    raw = socket.create_connection((host, port), timeout=15, source_address=(source, 0))
    own_port = raw.getsockname()[1]
    try:
        tls = client.context().wrap_socket(raw, suppress_ragged_eofs=False)
    except (ssl.SSLError, ConnectionError):
        raw.close()
        return Outcome(own_port, None, time.monotonic() - start)
    with tls:
        data, _ = client.read_all(tls)
    return Outcome(own_port, client.env_of(data), time.monotonic() - start)


# --- TCPREMOTEHOST, TCPLOCALHOST -------------------------------------------------------


def test_names_of_both_ends(server: ServerFactory, pki: PKI, resolvers: Resolvers) -> None:
    before = len(resolvers.queries())
    # Listening on 127.0.0.2 tells the local name from the remote one.
    srv = server("127.0.0.2", "0", *ENV_PROG, env=environ(pki, resolvers.good))
    assert attempt(srv.port, LOCALHOST, NAMED).names() == {
        "TCPREMOTEHOST": "localhost.",
        "TCPLOCALHOST": "a.b.example.test.",
    }
    # No name: unset, never the inherited value.
    assert attempt(srv.port, NONAME, NAMED).names() == {"TCPLOCALHOST": "a.b.example.test."}
    # Without -p, a name that does not resolve back is kept.
    assert attempt(srv.port, LIAR, NAMED).names()["TCPREMOTEHOST"] == "liar.s6tls.test."
    # Without -p, no forward query either.
    assert not any("query[A]" in line for line in resolvers.queries()[before:])


def test_localname_is_not_looked_up(server: ServerFactory, pki: PKI, resolvers: Resolvers) -> None:
    before = len(resolvers.queries())
    srv = server(
        "-l", "myname.example", "127.0.0.1", "0", *ENV_PROG, env=environ(pki, resolvers.good)
    )
    assert attempt(srv.port, NAMED).names() == {
        "TCPREMOTEHOST": "a.b.example.test.",
        "TCPLOCALHOST": "myname.example",
    }
    assert resolvers.wait_query(f"query[PTR] {_ptr(NAMED)} ", before)
    asked = resolvers.queries()[before:]
    assert not any(_ptr(LOCALHOST) in line for line in asked), asked


@pytest.mark.parametrize(
    ("options", "expected"),
    [(["-H"], {}), (["-H", "-l", "x.example"], {"TCPLOCALHOST": "x.example"})],
)
def test_no_names_and_no_query_with_H(
    server: ServerFactory,
    pki: PKI,
    resolvers: Resolvers,
    options: list[str],
    expected: dict[str, str],
) -> None:
    before = len(resolvers.queries())
    srv = server(*options, "127.0.0.1", "0", *ENV_PROG, env=environ(pki, resolvers.good))
    # SPEC §7: unlike upstream's -H, inherited names never reach prog.
    assert attempt(srv.port, LOCALHOST).names() == expected
    assert attempt(srv.port, NAMED).names() == expected
    assert resolvers.queries()[before:] == []


def _etc_hosts_names_localhost() -> bool:
    try:
        table = parse_hosts(Path("/etc/hosts").read_bytes())
    except OSError:
        return False
    return table.get(ipaddress.ip_address(LOCALHOST)) == "localhost."


@pytest.mark.skipif(not _etc_hosts_names_localhost(), reason="/etc/hosts lacks 127.0.0.1 localhost")
def test_hosts_file_first_with_h(server: ServerFactory, pki: PKI, resolvers: Resolvers) -> None:
    before = len(resolvers.queries())
    srv = server("-h", "127.0.0.1", "0", *ENV_PROG, env=environ(pki, resolvers.good))
    assert attempt(srv.port, LOCALHOST).names() == {
        "TCPREMOTEHOST": "localhost.",
        "TCPLOCALHOST": "localhost.",
    }
    # Not in /etc/hosts: asked in the DNS.
    assert attempt(srv.port, NAMED).names()["TCPREMOTEHOST"] == "a.b.example.test."
    assert resolvers.wait_query(f"query[PTR] {_ptr(NAMED)} ", before)
    asked = resolvers.queries()[before:]
    assert not any(_ptr(LOCALHOST) in line for line in asked), asked


# --- reversedns rules ---------------------------------------------------------------


def test_reversedns_rules_by_suffix(
    server: ServerFactory, pki: PKI, resolvers: Resolvers, tmp_path: Path
) -> None:
    tree = write_files(tmp_path / "rules", {"ip4/127.0.0.1_32/allow": ""})
    srv = server(
        "-v", "-i", str(tree), "127.0.0.1", "0", *ENV_PROG, env=environ(pki, resolvers.good)
    )
    assert attempt(srv.port, NAMED).denied

    # Each rule is more specific than the last, and decides instead of it.
    steps = [
        ("@", "allow"),
        ("test", "deny"),
        ("example.test", "allow"),
        ("b.example.test", "deny"),
        ("a.b.example.test", "allow"),
    ]
    for level, verdict in steps:
        files = {f"reversedns/{level}/{verdict}": ""}
        if verdict == "allow":
            files[f"reversedns/{level}/env/LEVEL"] = f"{level}\n"
        write_files(tree, files)
        outcome = attempt(srv.port, NAMED)
        if verdict == "allow":
            assert outcome.env is not None, f"reversedns/{level} did not allow"
            assert outcome.env["LEVEL"] == level
            assert outcome.env["TCPREMOTEHOST"] == "a.b.example.test."
        else:
            assert outcome.denied, f"reversedns/{level} did not deny"
        if level == "@":
            # A client without a name is not matched by reversedns/@.
            assert attempt(srv.port, NONAME).denied

    # Any address rule, even /0, comes before every name rule.
    write_files(tree, {"ip4/0.0.0.0_0/deny": ""})
    assert attempt(srv.port, NAMED).denied


def test_reversedns_rules_never_match_with_H(
    server: ServerFactory, pki: PKI, resolvers: Resolvers, tmp_path: Path
) -> None:
    tree = write_files(
        tmp_path / "rules", {"reversedns/example.test/allow": "", "reversedns/@/allow": ""}
    )
    cdb = tmp_path / "rules.cdb"
    done = run_command([OUR_CDB_FROM_FS, str(cdb), str(tree)])
    assert done.returncode == 0, done.stderr
    env = environ(pki, resolvers.good)
    with_names = server("-x", str(cdb), "127.0.0.1", "0", *ENV_PROG, env=env)
    without = server("-H", "-x", str(cdb), "127.0.0.1", "0", *ENV_PROG, env=env)
    assert not attempt(with_names.port, NAMED).denied
    assert attempt(without.port, NAMED).denied
    assert attempt(without.port, LOCALHOST).denied


# --- paranoid, deadlines -------------------------------------------------------------


def test_paranoid_drops_a_name_that_does_not_resolve_back(
    server: ServerFactory, pki: PKI, resolvers: Resolvers
) -> None:
    before = len(resolvers.queries())
    srv = server("-v", "-p", "127.0.0.1", "0", *ENV_PROG, env=environ(pki, resolvers.good))
    liar = attempt(srv.port, LIAR)
    assert liar.denied
    assert srv.wait_log(f"127.0.0.4_{liar.port}")
    assert not [line for line in srv.lines() if "accept 127.0.0.4_" in line]
    assert resolvers.wait_query("query[A] liar.s6tls.test ", before)
    assert attempt(srv.port, LOCALHOST).names()["TCPREMOTEHOST"] == "localhost."
    assert attempt(srv.port, NAMED).names()["TCPREMOTEHOST"] == "a.b.example.test."


@pytest.mark.parametrize(
    ("options", "dropped"),
    [([], False), (["-w"], True), (["-w", "-W"], False)],
    ids=["default", "w", "w-then-W"],
)
def test_silent_resolver_and_deadline(
    server: ServerFactory,
    pki: PKI,
    silent: SilentResolver,
    options: list[str],
    dropped: bool,
) -> None:
    srv = server(
        *options, "-t", "500", "-l", "me.example", "127.0.0.1", "0", *ENV_PROG,
        env=environ(pki, silent.address),
    )  # fmt: skip
    outcome = attempt(srv.port, NAMED)
    assert 0.4 < outcome.seconds < 5
    assert silent.queries() == [(_ptr(NAMED) + ".", "PTR")]
    if dropped:
        assert outcome.denied
        assert srv.wait_log(f"127.0.0.2_{outcome.port}")
    else:
        # Served without the name it could not find; -l needs no lookup.
        assert outcome.names() == {"TCPLOCALHOST": "me.example"}


def test_a_name_that_does_not_exist_is_no_failure(
    server: ServerFactory, pki: PKI, resolvers: Resolvers
) -> None:
    srv = server("-w", "127.0.0.1", "0", *ENV_PROG, env=environ(pki, resolvers.good))
    assert attempt(srv.port, NONAME).names() == {"TCPLOCALHOST": "localhost."}


# --- IDENT -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "ident"),
    [(["-H", "-r"], True), (["-r"], True), (["-H"], False), (["-H", "-r", "-R"], False)],
    ids=["r", "r-with-dns", "default-R", "r-then-R"],
)
def test_ident_answer_in_tcpremoteinfo(
    server: ServerFactory, pki: PKI, resolvers: Resolvers, options: list[str], ident: bool
) -> None:
    srv = server(*options, "127.0.0.1", "0", *ENV_PROG, env=environ(pki, resolvers.good))
    # oidentd answers for connections from its own address.
    found = attempt(srv.port, resolvers.ident).names()
    if ident:
        assert found.get("TCPREMOTEINFO") == pwd.getpwuid(os.geteuid()).pw_name
    else:
        assert "TCPREMOTEINFO" not in found


@pytest.mark.parametrize(("options", "dropped"), [([], False), (["-w"], True)], ids=["W", "w"])
def test_silent_ident_and_deadline(
    server: ServerFactory, pki: PKI, resolvers: Resolvers, options: list[str], dropped: bool
) -> None:
    srv = server(
        *options, "-H", "-r", "-t", "500", "127.0.0.1", "0", *ENV_PROG,
        env=environ(pki, resolvers.good),
    )  # fmt: skip
    outcome = attempt(srv.port, resolvers.silent_ident.address)
    assert 0.4 < outcome.seconds < 5
    if dropped:
        assert outcome.denied
    else:
        assert outcome.names() == {}


def test_one_deadline_for_all_lookups(
    server: ServerFactory, pki: PKI, resolvers: Resolvers, silent: SilentResolver
) -> None:
    # IDENT and both PTR queries all hang; one after the other would take 3 s.
    srv = server("-r", "-t", "1000", "127.0.0.1", "0", *ENV_PROG, env=environ(pki, silent.address))
    outcome = attempt(srv.port, resolvers.silent_ident.address)
    assert outcome.names() == {}
    assert 0.9 < outcome.seconds < 2.5
    ident = resolvers.silent_ident.address
    assert set(silent.queries()) == {(_ptr(ip) + ".", "PTR") for ip in (ident, LOCALHOST)}


# --- cooperation -----------------------------------------------------------------------


def test_a_hanging_lookup_delays_only_its_own_client(
    server: ServerFactory, pki: PKI, resolvers: Resolvers, silent: SilentResolver
) -> None:
    srv: Running = server(
        "-t", "3000", "127.0.0.1", "0", *ENV_PROG, env=environ(pki, resolvers.good)
    )
    hung: list[Outcome] = []
    waiting = threading.Thread(target=lambda: hung.append(attempt(srv.port, HANGING)))
    waiting.start()
    try:
        # dnsmasq has passed the hanging client's query on to the silent resolver.
        assert wait_for(lambda: silent.queries() != [], timeout=2)
        others = [attempt(srv.port, LOCALHOST) for _ in range(20)]
        still_waiting = waiting.is_alive()
    finally:
        waiting.join(timeout=15)
    assert still_waiting, "the hanging client was served before the others were done"
    for other in others:
        assert other.names() == {"TCPREMOTEHOST": "localhost.", "TCPLOCALHOST": "localhost."}
        assert other.seconds < 1.0
    [slow] = hung
    # -W (the default): served past the deadline, without the name it waited for.
    assert slow.names() == {"TCPLOCALHOST": "localhost."}
    assert 2.5 < slow.seconds < 10
