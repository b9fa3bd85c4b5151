"""Reverse DNS, /etc/hosts and IDENT lookups against real servers on loopback.

dnsmasq serves the s6tls.test names, oidentd answers IDENT, and silent
sockets stand for servers that never answer (REFERENCE-BEHAVIOUR.md §12,
transcripts E09, E09X, E20).
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.reversename
import gevent
import pytest

from s6tls.ident import parse_ident_reply
from s6tls.resolvconf import parse_hosts, parse_resolv_conf, parse_server_list
from s6tls.shell.dnsclient import DnsClient
from s6tls.shell.names import NameLookupFailed, Names, Resolver
from tests.system.dnsfixture import (
    DNSMASQ,
    OIDENTD,
    SilentIdent,
    SilentResolver,
    dnsmasq,
    free_loopback_address,
    oidentd,
)

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(os.geteuid() != 0, reason="binds ports 53 and 113: needs root"),
]

CLIENT = "198.51.100.7"  # PTR client.s6tls.test, which resolves back to it
SERVER = "198.51.100.1"  # PTR server.s6tls.test
LIAR = "198.51.100.8"  # PTR liar.s6tls.test, whose address is 198.51.100.99
NOADDR = "198.51.100.9"  # PTR noaddr.s6tls.test, which has no address
NONAME = "198.51.100.66"  # no PTR: NXDOMAIN
REFUSED = "203.0.113.5"  # outside dnsmasq's zones: REFUSED
CLIENT6 = "2001:db8::7"
SERVER6 = "2001:db8::1"
LIAR6 = "2001:db8::8"
BIG = "198.51.100.50"  # so many PTR records that the UDP answer is truncated
BIG_NAMES = [f"host-{i}-with-a-long-label-to-fill-up-the-answer.s6tls.test." for i in range(12)]

RECORDS = [
    "--local=/s6tls.test/",
    "--local=/100.51.198.in-addr.arpa/",
    "--local=/8.b.d.0.1.0.0.2.ip6.arpa/",
    f"--host-record=client.s6tls.test,{CLIENT},{CLIENT6}",
    f"--host-record=server.s6tls.test,{SERVER},{SERVER6}",
    "--host-record=liar.s6tls.test,198.51.100.99",
    f"--ptr-record={dns.reversename.from_address(LIAR)},liar.s6tls.test",
    f"--ptr-record={dns.reversename.from_address(LIAR6)},liar.s6tls.test",
    f"--ptr-record={dns.reversename.from_address(NOADDR)},noaddr.s6tls.test",
    *(f"--ptr-record={dns.reversename.from_address(BIG)},{name}" for name in BIG_NAMES),
]


class Servers:
    """The loopback servers of this module, by role."""

    def __init__(self, tmp: Path) -> None:
        taken: set[str] = set()
        self.good = free_loopback_address(53, taken)
        self.silent = SilentResolver(free_loopback_address(53, taken))
        self.unreachable = free_loopback_address(53, taken)
        self.ident = free_loopback_address(113, taken)
        self.silent_ident = SilentIdent(free_loopback_address(113, taken))
        self.no_ident = free_loopback_address(113, taken)
        self.dnsmasq_log = tmp / "dnsmasq.log"
        self.oidentd_log = tmp / "oidentd.log"
        self.dnsmasq_pid = 0

    def resolver(self, *servers: str, hosts_first: bool = False) -> Resolver:
        return Resolver.from_environment({"DNSCACHEIP": " ".join(servers)}, hosts_first)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    for program in (DNSMASQ, OIDENTD):
        if not shutil.which(program):
            pytest.skip(f"{program} is not installed")
    s = Servers(tmp_path_factory.mktemp("names"))
    try:
        with dnsmasq(s.good, RECORDS, s.dnsmasq_log) as process:
            s.dnsmasq_pid = process.pid
            with oidentd(s.ident, s.oidentd_log):
                yield s
    finally:
        s.silent.close()
        s.silent_ident.close()


@pytest.fixture
def silent(servers: Servers) -> Iterator[SilentResolver]:
    servers.silent.queries()
    yield servers.silent
    servers.silent.queries()


def names(
    resolver: Resolver,
    remote: str = CLIENT,
    local: str = SERVER,
    *,
    dns: bool = True,
    localname: str | None = None,
    paranoid: bool = False,
    strict: bool = False,
    timeout: float | None = None,
) -> Names:
    """Look up the names of a connection from `remote`:40000 to `local`:443, without IDENT."""
    return resolver.lookup(
        remote,
        40000,
        local,
        443,
        dns=dns,
        localname=localname,
        paranoid=paranoid,
        ident=False,
        strict=strict,
        timeout=timeout,
    )


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.start = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.monotonic() - self.start


# --- reverse DNS ---------------------------------------------------------------


def test_ptr_names_keep_the_trailing_dot(servers: Servers) -> None:
    found = names(servers.resolver(servers.good))
    assert found == Names("client.s6tls.test.", "server.s6tls.test.", None)


def test_no_ptr_is_no_name_not_an_error(servers: Servers) -> None:
    found = names(servers.resolver(servers.good), NONAME, strict=True)
    assert found == Names(None, "server.s6tls.test.", None)


def test_ipv6_addresses_are_looked_up_in_ip6_arpa(servers: Servers) -> None:
    found = names(servers.resolver(servers.good), CLIENT6, SERVER6)
    assert found == Names("client.s6tls.test.", "server.s6tls.test.", None)


def test_truncated_answer_is_asked_again_over_tcp(servers: Servers) -> None:
    query = dns.message.make_query(dns.reversename.from_address(BIG), "PTR")
    assert dns.query.udp(query, servers.good, timeout=2).flags & dns.flags.TC
    over_tcp = dns.query.tcp(query, servers.good, timeout=2).answer[0][0].target.to_text()
    logged = len(servers.dnsmasq_log.read_text().splitlines())

    assert names(servers.resolver(servers.good), BIG).remote_host == over_tcp
    answered_by = {
        line.split("]")[0].split("[")[1]
        for line in servers.dnsmasq_log.read_text().splitlines()[logged:]
        if f"query[PTR] {dns.reversename.from_address(BIG).to_text(omit_final_dot=True)}" in line
    }
    assert len(answered_by - {str(servers.dnsmasq_pid)}) == 1, "no TCP query"


def test_one_ptr_query_per_address(servers: Servers, silent: SilentResolver) -> None:
    names(servers.resolver(silent.address), timeout=0.3)
    assert sorted(silent.queries()) == sorted(
        [(dns.reversename.from_address(ip).to_text(), "PTR") for ip in (CLIENT, SERVER)]
    )


def test_localname_is_kept_as_given_and_not_looked_up(
    servers: Servers, silent: SilentResolver
) -> None:
    found = names(servers.resolver(servers.good), localname="myname.example")
    assert found == Names("client.s6tls.test.", "myname.example", None)
    names(servers.resolver(silent.address), localname="myname.example", timeout=0.3)
    assert silent.queries() == [(dns.reversename.from_address(CLIENT).to_text(), "PTR")]


def test_no_dns_sends_no_query(servers: Servers, silent: SilentResolver) -> None:
    with Stopwatch() as watch:
        # dns=False wins even over paranoid: -H -p is the caller's to resolve.
        plain = names(servers.resolver(silent.address), dns=False, paranoid=True, strict=True)
        named = names(servers.resolver(silent.address), dns=False, localname="x.example")
    assert plain == Names(None, None, None)
    assert named == Names(None, "x.example", None)
    assert watch.elapsed < 0.5
    assert silent.queries() == []


# --- /etc/hosts first (-h) ------------------------------------------------------


def _etc_hosts_name(ip: str) -> str | None:
    try:
        return parse_hosts(Path("/etc/hosts").read_bytes()).get(ipaddress.ip_address(ip))
    except OSError:
        return None


def test_hosts_first_answers_from_etc_hosts_without_dns(
    servers: Servers, silent: SilentResolver
) -> None:
    if _etc_hosts_name("127.0.0.1") != "localhost.":
        pytest.skip("/etc/hosts does not name 127.0.0.1 localhost first")
    resolver = servers.resolver(silent.address, hosts_first=True)
    with Stopwatch() as watch:
        found = names(resolver, "127.0.0.1", "127.0.0.1", strict=True, timeout=2)
    assert found == Names("localhost.", "localhost.", None)
    assert watch.elapsed < 0.5
    assert silent.queries() == []


def test_hosts_first_falls_back_to_dns(servers: Servers, tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(f"# comment\n{SERVER}   Front.Example  front # alias\n")
    resolver = Resolver(DnsClient((servers.good,)), hosts_first=True, hosts_file=str(hosts))
    assert names(resolver) == Names("client.s6tls.test.", "front.example.", None)
    # The file is read again when it changes.
    hosts.write_text(f"{CLIENT} c.example.\n{SERVER} s\n")
    assert names(resolver) == Names("c.example.", "s.", None)


def test_without_hosts_first_the_hosts_file_is_ignored(servers: Servers, tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(f"{CLIENT} c.example\n")
    resolver = Resolver(DnsClient((servers.good,)), hosts_first=False, hosts_file=str(hosts))
    assert names(resolver).remote_host == "client.s6tls.test."


def test_parse_hosts_keeps_the_first_name_of_the_first_line() -> None:
    table = parse_hosts(
        b"127.0.0.1 localhost\n127.0.0.1 runsc\n"
        b"::1 ip6-localhost ip6-loopback\n"
        b"fe80::1%lo linklocal\n"
        b"# 10.0.0.1 commented\n"
        b"not-an-ip name\n"
        b"10.0.0.2\n"
        b"10.0.0.3 Upper.Case.\n"
    )
    assert table == {
        ipaddress.ip_address("127.0.0.1"): "localhost.",
        ipaddress.ip_address("::1"): "ip6-localhost.",
        ipaddress.ip_address("10.0.0.3"): "upper.case.",
    }


# --- paranoid (-p) ----------------------------------------------------------------


@pytest.mark.parametrize("strict", [False, True])
def test_paranoid_keeps_a_name_that_resolves_back(servers: Servers, strict: bool) -> None:
    resolver = servers.resolver(servers.good)
    assert names(resolver, paranoid=True, strict=strict).remote_host == "client.s6tls.test."
    assert names(resolver, CLIENT6, SERVER6, paranoid=True).remote_host == "client.s6tls.test."
    log = servers.dnsmasq_log.read_text()
    assert "query[A] client.s6tls.test" in log
    assert "query[AAAA] client.s6tls.test" in log


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("remote", [LIAR, NOADDR, LIAR6])
def test_paranoid_drops_a_name_that_does_not_resolve_back(
    servers: Servers, remote: str, strict: bool
) -> None:
    local = SERVER6 if ":" in remote else SERVER
    with pytest.raises(NameLookupFailed, match="does not resolve back") as failed:
        names(servers.resolver(servers.good), remote, local, paranoid=True, strict=strict)
    assert failed.value.exitcode == 1
    assert "\n" not in str(failed.value)


def test_paranoid_without_a_name(servers: Servers) -> None:
    resolver = servers.resolver(servers.good)
    assert names(resolver, NONAME, paranoid=True).remote_host is None
    with pytest.raises(NameLookupFailed) as failed:
        names(resolver, NONAME, paranoid=True, strict=True)
    assert failed.value.exitcode == 1


def test_paranoid_does_not_check_names_from_hosts(servers: Servers, tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(f"{LIAR} trusted.example\n")
    resolver = Resolver(DnsClient((servers.good,)), hosts_first=True, hosts_file=str(hosts))
    found = names(resolver, LIAR, paranoid=True, strict=True)
    assert found.remote_host == "trusted.example."


# --- failing resolvers --------------------------------------------------------


def test_silent_resolver_with_timeout_tolerant(servers: Servers, silent: SilentResolver) -> None:
    with Stopwatch() as watch:
        found = names(servers.resolver(silent.address), timeout=0.5)
    assert found == Names(None, None, None)
    assert 0.45 < watch.elapsed < 1.2


def test_silent_resolver_with_timeout_strict(servers: Servers, silent: SilentResolver) -> None:
    with Stopwatch() as watch, pytest.raises(NameLookupFailed, match="timed out") as failed:
        names(servers.resolver(silent.address), strict=True, timeout=0.5)
    assert failed.value.exitcode == 99
    assert 0.45 < watch.elapsed < 1.2


def test_silent_resolver_keeps_the_localname(servers: Servers, silent: SilentResolver) -> None:
    found = names(servers.resolver(silent.address), localname="me.example", timeout=0.3)
    assert found == Names(None, "me.example", None)


def test_unreachable_resolver_gives_up_at_once(servers: Servers) -> None:
    resolver = servers.resolver(servers.unreachable)
    with Stopwatch() as watch:
        found = names(resolver)
    assert found == Names(None, None, None)
    assert watch.elapsed < 0.9
    with Stopwatch() as watch, pytest.raises(NameLookupFailed, match="unable to resolve"):
        names(resolver, strict=True)
    assert watch.elapsed < 0.9


def test_refusing_resolver_is_a_failure(servers: Servers) -> None:
    resolver = servers.resolver(servers.good)
    with Stopwatch() as watch:
        assert names(resolver, REFUSED, REFUSED) == Names(None, None, None)
    assert watch.elapsed < 0.9
    with pytest.raises(NameLookupFailed, match="REFUSED") as failed:
        names(resolver, CLIENT, REFUSED, strict=True)
    assert failed.value.exitcode == 111


def test_next_server_after_an_unreachable_one(servers: Servers) -> None:
    with Stopwatch() as watch:
        found = names(servers.resolver(servers.unreachable, servers.good))
    assert found.remote_host == "client.s6tls.test."
    assert watch.elapsed < 0.9


def test_next_server_after_a_silent_one_waits_one_second(
    servers: Servers, silent: SilentResolver
) -> None:
    # s6-dns waits 1 s for the first server before asking the next one.
    with Stopwatch() as watch:
        found = names(servers.resolver(silent.address, servers.good))
    assert found.remote_host == "client.s6tls.test."
    assert 0.9 < watch.elapsed < 2.0


def test_resolv_conf_when_dnscacheip_names_no_server(servers: Servers, tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(f"search example.org\nnameserver {servers.good}\n")
    resolver = Resolver(DnsClient((), resolv_conf=str(conf)))
    assert names(resolver).remote_host == "client.s6tls.test."
    conf.write_text(f"nameserver {servers.unreachable}\n")
    assert names(resolver).remote_host is None


def test_server_lists() -> None:
    assert parse_server_list(" 127.0.0.1, ::1;10.0.0.1\tbogus 10.0.0.2 ") == (
        "127.0.0.1",
        "::1",
        "10.0.0.1",
        "10.0.0.2",
    )
    assert parse_server_list("") == ()
    assert parse_resolv_conf(b"# x\nnameserver 10.0.0.1\nnameserver\tfd00::53\nsearch a\n") == (
        "10.0.0.1",
        "fd00::53",
    )
    resolver = Resolver.from_environment({"DNSCACHEIP": "127.0.0.9,127.0.0.10"}, True)
    assert resolver.dns.servers == ("127.0.0.9", "127.0.0.10")
    assert resolver.hosts_first


# --- IDENT (-r) -------------------------------------------------------------------


class Connection:
    """A real TCP connection from `client_ip` to a server on 127.0.0.1."""

    def __init__(self, client_ip: str) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.client = socket.socket()
        self.client.bind((client_ip, 0))
        self.client.connect(self.listener.getsockname())
        self.server, _ = self.listener.accept()
        self.remote_ip, self.remote_port = self.server.getpeername()
        self.local_ip, self.local_port = self.server.getsockname()

    def ident(
        self,
        resolver: Resolver,
        *,
        dns: bool = False,
        strict: bool = False,
        timeout: float | None = None,
        port_offset: int = 0,
    ) -> Names:
        return resolver.lookup(
            self.remote_ip,
            self.remote_port + port_offset,
            self.local_ip,
            self.local_port,
            dns=dns,
            localname=None,
            paranoid=False,
            ident=True,
            strict=strict,
            timeout=timeout,
        )

    def close(self) -> None:
        for sock in (self.server, self.client, self.listener):
            sock.close()


@pytest.fixture
def connection(request: pytest.FixtureRequest, servers: Servers) -> Iterator[Connection]:
    """A connection from the address of an IDENT server that answers, is silent, or is absent."""
    client_ip = {
        "oidentd": servers.ident,
        "silent": servers.silent_ident.address,
        "absent": servers.no_ident,
    }[request.param]
    conn = Connection(client_ip)
    yield conn
    conn.close()


@pytest.mark.parametrize("connection", ["oidentd"], indirect=True)
def test_ident_names_the_owner_of_the_connection(servers: Servers, connection: Connection) -> None:
    found = connection.ident(servers.resolver(servers.unreachable), strict=True)
    assert found == Names(None, None, pwd.getpwuid(os.geteuid()).pw_name)


@pytest.mark.parametrize("connection", ["oidentd"], indirect=True)
def test_ident_error_answer(servers: Servers, connection: Connection) -> None:
    # Ask about a port pair that is no connection: oidentd answers ERROR : NO-USER.
    resolver = servers.resolver(servers.unreachable)
    assert connection.ident(resolver, port_offset=1) == Names(None, None, None)
    with pytest.raises(NameLookupFailed, match="ERROR : NO-USER") as failed:
        connection.ident(resolver, strict=True, port_offset=1)
    assert failed.value.exitcode == 2


@pytest.mark.parametrize("connection", ["silent"], indirect=True)
def test_ident_silent_server_and_one_deadline(
    servers: Servers, connection: Connection, silent: SilentResolver
) -> None:
    # IDENT and both PTR lookups all hang: one deadline ends them together.
    resolver = servers.resolver(silent.address)
    with Stopwatch() as watch:
        found = connection.ident(resolver, dns=True, timeout=0.5)
    assert found == Names(None, None, None)
    assert 0.45 < watch.elapsed < 0.9
    with pytest.raises(NameLookupFailed, match="IDENT") as failed:
        connection.ident(resolver, strict=True, timeout=0.3)
    assert failed.value.exitcode == 99


@pytest.mark.parametrize("connection", ["absent"], indirect=True)
def test_ident_refused(servers: Servers, connection: Connection) -> None:
    resolver = servers.resolver(servers.unreachable)
    with Stopwatch() as watch:
        assert connection.ident(resolver) == Names(None, None, None)
    assert watch.elapsed < 0.9
    with pytest.raises(NameLookupFailed, match="unable to ask IDENT") as failed:
        connection.ident(resolver, strict=True)
    assert failed.value.exitcode == 111


@pytest.mark.parametrize(
    ("line", "user"),
    [
        (b"6193, 23 : USERID : UNIX : stjohns\r", "stjohns"),
        (b"6193,23:USERID:UNIX:root", "root"),
        (b" 6193 ,\t23 : USERID : OTHER,US-ASCII :  space, colon: kept", " space, colon: kept"),
        (b"6193, 23 : USERID : UNIX : cut\0here", "cut"),
    ],
)
def test_parse_ident_reply(line: bytes, user: str) -> None:
    assert parse_ident_reply(line, 6193, 23) == user


@pytest.mark.parametrize(
    "line",
    [
        b"6193, 23 : ERROR : NO-USER",
        b"6193, 23 : ERROR : X-\rodd\x1b",
        b"6193, 24 : USERID : UNIX : x",
        b"garbage\r\x00",
        b"",
    ],
)
def test_parse_ident_reply_refuses(line: bytes) -> None:
    with pytest.raises(Exception, match="IDENT") as refused:
        parse_ident_reply(line, 6193, 23)
    assert str(refused.value).isprintable()


# --- cooperation --------------------------------------------------------------


def test_a_stuck_lookup_delays_no_other(servers: Servers, silent: SilentResolver) -> None:
    stuck = gevent.spawn(names, servers.resolver(silent.address), timeout=10)
    gevent.sleep(0.05)
    good = servers.resolver(servers.good)
    with Stopwatch() as watch:
        others = [gevent.spawn(names, good, paranoid=True) for _ in range(20)]
        gevent.joinall(others, timeout=5, raise_error=True)
    try:
        assert [g.value for g in others] == [
            Names("client.s6tls.test.", "server.s6tls.test.", None)
        ] * 20
        assert watch.elapsed < 0.9
        assert not stuck.ready()
    finally:
        stuck.kill()
