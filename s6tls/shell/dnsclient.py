"""DNS queries as s6-dns asks them: the servers of DNSCACHEIP or
/etc/resolv.conf, in order, over UDP with its retry schedule, over TCP after a
truncated answer, each over gevent sockets so that a slow server delays only
the connection that asked. Messages are built and parsed by dnspython.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from collections.abc import Mapping, Sequence

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rdtypes.ANY.PTR
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.reversename
from gevent import socket

from s6tls.resolvconf import DNS_PORT, Address, parse_resolv_conf, parse_server_list
from s6tls.shell.files import Files, LocalFiles, WatchedFile

RESOLV_CONF = "/etc/resolv.conf"

# s6-dns asks ::1 when neither DNSCACHEIP nor resolv.conf names a server.
DEFAULT_SERVER = "::1"
# s6-dns asks the servers in turn over UDP, four rounds, waiting this long for
# each answer; a truncated answer switches to TCP, 10 s per server.
UDP_WAITS = (1.0, 3.0, 11.0, 45.0)
TCP_WAIT = 10.0
# A plain query (no EDNS) gets at most 512 bytes over UDP.
UDP_MAX = 512

# An answer that ends the search; an answer after which s6-dns asks that server no more.
FINAL_RCODES = (dns.rcode.NOERROR, dns.rcode.NXDOMAIN)
BANNING_RCODES = (dns.rcode.FORMERR, dns.rcode.NOTIMP, dns.rcode.REFUSED)


class LookupFailure(Exception):
    """A lookup that could not be done (no answer, an unreadable file): it
    drops the connection under ``-w``; without, the name stays unknown.

    ``exitcode`` is the one upstream's s6-tcpserver-access exits with.
    """

    def __init__(self, message: str, exitcode: int = 111) -> None:
        super().__init__(message)
        self.exitcode = exitcode


class DnsClient:
    """Asks the servers s6-dns would ask, in its order."""

    def __init__(self, servers: Sequence[str] = (), resolv_conf: str = RESOLV_CONF) -> None:
        """Ask `servers` in order; with none, those of `resolv_conf` (re-read when it changes)."""
        self.servers = tuple(servers)
        self._resolv_conf: WatchedFile[tuple[str, ...]] = WatchedFile(
            resolv_conf, parse_resolv_conf, ()
        )
        self.files: Files = LocalFiles()

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> DnsClient:
        """The servers of s6-dns: DNSCACHEIP if it names some, else /etc/resolv.conf."""
        return cls(parse_server_list(environ.get("DNSCACHEIP", "")))

    def paths(self) -> set[str]:
        """The files the queries read."""
        return set() if self.servers else {self._resolv_conf.path}

    def name_of(self, ip: str) -> str | None:
        """The PTR name of `ip` with its trailing dot; None if it has none."""
        response = self._ask(dns.reversename.from_address(ip), dns.rdatatype.PTR)
        for rrset in response.answer:
            for rdata in rrset:
                if isinstance(rdata, dns.rdtypes.ANY.PTR.PTR):
                    return rdata.target.to_text()
        return None

    def addresses_of(self, name: str, version: int) -> set[Address]:
        """The IPv4 (A) or IPv6 (AAAA) addresses of `name`; empty if it has none."""
        kind = dns.rdtypes.IN.A.A if version == 4 else dns.rdtypes.IN.AAAA.AAAA
        rdtype = dns.rdatatype.A if version == 4 else dns.rdatatype.AAAA
        response = self._ask(dns.name.from_text(name), rdtype)
        return {
            ipaddress.ip_address(rdata.address)
            for rrset in response.answer
            for rdata in rrset
            if isinstance(rdata, kind)
        }

    def _servers(self) -> tuple[str, ...]:
        if self.servers:
            return self.servers
        try:
            servers = self._resolv_conf.get(self.files)
        except OSError as e:
            raise LookupFailure(f"unable to read {self._resolv_conf.path}: {e.strerror}") from None
        return servers or (DEFAULT_SERVER,)

    def _ask(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
        """The first NOERROR or NXDOMAIN answer from the servers, asked in s6-dns's order."""
        servers = self._servers()
        banned: set[str] = set()
        problem = "no server to ask"
        for wait in UDP_WAITS:
            for server in servers:
                if server in banned:
                    continue
                try:
                    response = _exchange_udp(server, dns.message.make_query(qname, rdtype), wait)
                except OSError as e:
                    problem = f"{server}: {e.strerror or e}"
                    continue
                if response.flags & dns.flags.TC:
                    return self._ask_tcp(qname, rdtype, servers, banned)
                rcode = response.rcode()
                if rcode in FINAL_RCODES:
                    return response
                if rcode in BANNING_RCODES:
                    banned.add(server)
                problem = f"{server} answered {dns.rcode.to_text(rcode)}"
        raise LookupFailure(f"unable to resolve {qname} {rdtype.name}: {problem}")

    def _ask_tcp(
        self,
        qname: dns.name.Name,
        rdtype: dns.rdatatype.RdataType,
        servers: Sequence[str],
        banned: set[str],
    ) -> dns.message.Message:
        """Ask again over TCP, each server once, after a truncated UDP answer."""
        problem = "no server to ask"
        for server in servers:
            if server in banned:
                continue
            try:
                response = _exchange_tcp(server, dns.message.make_query(qname, rdtype))
            except (OSError, EOFError, dns.exception.DNSException) as e:
                problem = f"{server}: {reason(e)}"
                continue
            if response is None:
                problem = f"{server} sent an answer to another query"
                continue
            rcode = response.rcode()
            if rcode in FINAL_RCODES and not response.flags & dns.flags.TC:
                return response
            problem = f"{server} answered {dns.rcode.to_text(rcode)} over TCP"
        raise LookupFailure(f"unable to resolve {qname} {rdtype.name}: {problem}")


def family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET  # type: ignore[no-any-return]


def _exchange_udp(server: str, query: dns.message.Message, wait: float) -> dns.message.Message:
    """Send `query` to `server` over UDP and wait up to `wait` seconds for its answer."""
    end = time.monotonic() + wait
    with socket.socket(family(server), socket.SOCK_DGRAM) as sock:
        # A connected socket learns at once of an ICMP "port unreachable".
        sock.connect((server, DNS_PORT))
        sock.send(query.to_wire())
        while (left := end - time.monotonic()) > 0:
            sock.settimeout(left)
            packet = sock.recv(UDP_MAX + 1)
            if len(packet) > UDP_MAX:
                continue
            try:
                response = dns.message.from_wire(packet)
            except dns.exception.DNSException:
                continue
            # Anything but the answer to this query is ignored, as s6-dns does.
            if query.is_response(response):
                return response
    raise TimeoutError("timed out")


def _exchange_tcp(server: str, query: dns.message.Message) -> dns.message.Message | None:
    """Send `query` to `server` over TCP (two-byte length prefix); its answer, None if not one."""
    wire = query.to_wire()
    with socket.socket(family(server), socket.SOCK_STREAM) as sock:
        sock.settimeout(TCP_WAIT)
        sock.connect((server, DNS_PORT))
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        (size,) = struct.unpack("!H", _recv_exactly(sock, 2))
        response = dns.message.from_wire(_recv_exactly(sock, size))
    return response if query.is_response(response) else None


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("connection closed early")
        data += chunk
    return data


def reason(e: Exception) -> str:
    return (e.strerror if isinstance(e, OSError) else None) or str(e)
