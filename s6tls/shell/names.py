"""The names of a connection: reverse DNS, /etc/hosts and IDENT, as s6-tcpserver-access finds them.

For each connection upstream asks the PTR of the remote and the local
address (TCPREMOTEHOST, TCPLOCALHOST), may check the remote name forward
(``-p``) and may ask the client's IDENT server (``-r``, TCPREMOTEINFO).
Here every lookup of a connection runs in its own greenlet over gevent
sockets, under one deadline (``-t``), so a slow or silent server delays
only the connection that asked it. Messages are built and parsed by
dnspython; the choice of servers and the retry schedule are s6-dns's.

Where upstream's code and its documentation disagree, we follow the
documentation (SPEC.md §7):

- ``-w`` drops the connection on any DNS or IDENT failure or timeout (an
  address without a name is no failure); the code of s6-tcpserver-access
  2.8.0.1 ignores failed PTR lookups even with ``-w``.
- ``-p`` drops the connection when the remote name does not resolve back to
  the remote address (no address, or none of them matches); the code only
  forgets the name then. As upstream, ``-p -w`` also drops a client whose
  address has no name, and names from /etc/hosts (``-h``) are not checked.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Generic, TypeVar

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
import gevent
from gevent import socket

from s6tls.ident import IDENT_PORT, IDENT_REPLY_MAX, IdentReplyError, parse_ident_reply
from s6tls.resolvconf import (
    DNS_PORT,
    Address,
    parse_hosts,
    parse_resolv_conf,
    parse_server_list,
)
from s6tls.shell.files import FileIdentity, Files, LocalFiles

RESOLV_CONF = "/etc/resolv.conf"
HOSTS_FILE = "/etc/hosts"

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

# Exit codes of s6-tcpserver-access for a dropped connection.
EXIT_NOT_FOUND = 1
EXIT_IDENT_ERROR = 2
EXIT_TIMEOUT = 99
EXIT_FAILURE = 111

T = TypeVar("T")


@dataclass(frozen=True)
class Names:
    """What the lookups found for one connection; None where nothing was found."""

    remote_host: str | None
    local_host: str | None
    remote_info: str | None


class NameLookupFailed(Exception):
    """Drop the connection: a lookup failed under ``-w``, or ``-p`` refused the remote name.

    ``exitcode`` is the one upstream's s6-tcpserver-access exits with.
    """

    def __init__(self, message: str, exitcode: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exitcode = exitcode


class _Failure(Exception):
    """A lookup that could not be done: fatal under ``-w``, else the name stays unknown."""

    def __init__(self, message: str, exitcode: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exitcode = exitcode


class _WatchedFile(Generic[T]):
    """A file parsed on first use, and again when it changes (upstream reads it per connection).

    Read through a Files: with privilege separation, the root helper reads it.
    """

    def __init__(self, path: str, parse: Callable[[bytes], T], missing: T) -> None:
        self.path = path
        self._parse = parse
        self._missing = missing
        self._stamp: FileIdentity | None = None
        self._value = missing

    def get(self, files: Files) -> T:
        """The parsed content, or the value for a missing file; OSError if unreadable."""
        try:
            stamp = files.identity(self.path)
        except FileNotFoundError:
            return self._missing
        if stamp != self._stamp:
            self._value = self._parse(files.read(self.path))
            self._stamp = stamp
        return self._value


class Resolver:
    """Looks up the names of connections, asking the servers s6-dns would ask."""

    def __init__(
        self,
        servers: Sequence[str] = (),
        *,
        hosts_first: bool = False,
        resolv_conf: str = RESOLV_CONF,
        hosts_file: str = HOSTS_FILE,
    ) -> None:
        """Ask `servers` in order; with none, those of `resolv_conf` (re-read when it changes)."""
        self.servers = tuple(servers)
        self.hosts_first = hosts_first
        self._resolv_conf: _WatchedFile[tuple[str, ...]] = _WatchedFile(
            resolv_conf, parse_resolv_conf, ()
        )
        self._hosts: _WatchedFile[dict[Address, str]] = _WatchedFile(hosts_file, parse_hosts, {})
        self.files: Files = LocalFiles()

    def paths(self) -> set[str]:
        """The files the lookups read."""
        return {
            *([] if self.servers else [self._resolv_conf.path]),
            *([self._hosts.path] if self.hosts_first else []),
        }

    @classmethod
    def from_environment(cls, environ: Mapping[str, str], hosts_first: bool) -> Resolver:
        """The resolver of s6-dns: DNSCACHEIP if it names servers, else /etc/resolv.conf."""
        return cls(parse_server_list(environ.get("DNSCACHEIP", "")), hosts_first=hosts_first)

    def lookup(
        self,
        remote_ip: str,
        remote_port: int,
        local_ip: str,
        local_port: int,
        *,
        dns: bool,
        localname: str | None,
        paranoid: bool,
        ident: bool,
        strict: bool,
        timeout: float | None,
    ) -> Names:
        """Find the names of one connection, the way s6-tcpserver-access does.

        `dns` False (``-H``) sends no query at all. `timeout` is one deadline in
        seconds for all the lookups (None or 0: none); past it the unfinished
        ones count as not found, or raise under `strict`. Raises
        NameLookupFailed when the connection must be dropped.
        """
        remote_host: str | None = None
        local_host = localname
        tasks: dict[str, Callable[[], str | None]] = {}
        if ident:
            tasks["IDENT"] = partial(ident_lookup, remote_ip, remote_port, local_ip, local_port)
        if dns:
            hosts = self._hosts_table(strict) if self.hosts_first else {}
            # A name from the hosts file is not checked by -p (upstream documents this).
            remote_host = hosts.get(ipaddress.ip_address(remote_ip))
            if remote_host is None:
                tasks["remote name"] = partial(self._remote_name, remote_ip, paranoid, strict)
            if local_host is None:
                local_host = hosts.get(ipaddress.ip_address(local_ip))
                if local_host is None:
                    tasks["local name"] = partial(self.name_of, local_ip)
        found = _gather(tasks, timeout, strict)
        return Names(
            remote_host=found.get("remote name", remote_host),
            local_host=found.get("local name", local_host),
            remote_info=found.get("IDENT"),
        )

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

    def _remote_name(self, ip: str, paranoid: bool, strict: bool) -> str | None:
        """The remote name; with `paranoid`, only if it resolves back to `ip`."""
        name = self.name_of(ip)
        if not paranoid:
            return name
        if name is None:
            # Upstream drops a nameless client only when -p and -w are both given.
            if strict:
                raise NameLookupFailed(f"no name for {ip} to check", EXIT_NOT_FOUND)
            return None
        address = ipaddress.ip_address(ip)
        if address not in self.addresses_of(name, address.version):
            raise NameLookupFailed(f"{name} does not resolve back to {ip}", EXIT_NOT_FOUND)
        return name

    def _hosts_table(self, strict: bool) -> dict[Address, str]:
        try:
            return self._hosts.get(self.files)
        except OSError as e:
            if strict:
                raise NameLookupFailed(f"unable to read {self._hosts.path}: {e.strerror}") from None
            return {}

    def _servers(self) -> tuple[str, ...]:
        if self.servers:
            return self.servers
        try:
            servers = self._resolv_conf.get(self.files)
        except OSError as e:
            raise _Failure(f"unable to read {self._resolv_conf.path}: {e.strerror}") from None
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
        raise _Failure(f"unable to resolve {qname} {rdtype.name}: {problem}")

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
                problem = f"{server}: {_reason(e)}"
                continue
            if response is None:
                problem = f"{server} sent an answer to another query"
                continue
            rcode = response.rcode()
            if rcode in FINAL_RCODES and not response.flags & dns.flags.TC:
                return response
            problem = f"{server} answered {dns.rcode.to_text(rcode)} over TCP"
        raise _Failure(f"unable to resolve {qname} {rdtype.name}: {problem}")


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET  # type: ignore[no-any-return]


def _exchange_udp(server: str, query: dns.message.Message, wait: float) -> dns.message.Message:
    """Send `query` to `server` over UDP and wait up to `wait` seconds for its answer."""
    end = time.monotonic() + wait
    with socket.socket(_family(server), socket.SOCK_DGRAM) as sock:
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
    with socket.socket(_family(server), socket.SOCK_STREAM) as sock:
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


def ident_lookup(remote_ip: str, remote_port: int, local_ip: str, local_port: int) -> str | None:
    """Ask the client's IDENT server (RFC 1413) who owns the connection; the user id.

    The query leaves from `local_ip`, so that the client's host can tell which
    of its connections is meant.
    """
    try:
        with socket.socket(_family(remote_ip), socket.SOCK_STREAM) as sock:
            sock.bind((local_ip, 0))
            sock.connect((remote_ip, IDENT_PORT))
            sock.sendall(f"{remote_port} , {local_port}\r\n".encode("ascii"))
            line = _read_line(sock, IDENT_REPLY_MAX)
    except (OSError, EOFError) as e:
        exitcode = EXIT_TIMEOUT if isinstance(e, TimeoutError) else EXIT_FAILURE
        raise _Failure(f"unable to ask IDENT at {remote_ip}: {_reason(e)}", exitcode) from None
    try:
        return parse_ident_reply(line, remote_port, local_port)
    except IdentReplyError as e:
        raise _Failure(str(e), EXIT_IDENT_ERROR if e.answered_error else EXIT_FAILURE) from None


def _reason(e: Exception) -> str:
    return (e.strerror if isinstance(e, OSError) else None) or str(e)


def _read_line(sock: socket.socket, limit: int) -> bytes:
    data = b""
    while b"\n" not in data:
        if len(data) >= limit:
            raise EOFError("reply line too long")
        chunk = sock.recv(limit - len(data))
        if not chunk:
            raise EOFError("connection closed before a full reply line")
        data += chunk
    return data.split(b"\n", 1)[0]


def _attempt(task: Callable[[], str | None], strict: bool) -> str | NameLookupFailed | None:
    """Run one lookup; its verdict is returned, not raised, so that gevent prints no traceback."""
    try:
        return task()
    except _Failure as e:
        return NameLookupFailed(str(e), e.exitcode) if strict else None
    except NameLookupFailed as e:
        return e


def _gather(
    tasks: Mapping[str, Callable[[], str | None]], timeout: float | None, strict: bool
) -> dict[str, str | None]:
    """Run the lookups side by side until all are done or the deadline passes."""
    found: dict[str, str | None] = dict.fromkeys(tasks)
    if not tasks:
        return found
    running = {gevent.spawn(_attempt, task, strict): key for key, task in tasks.items()}
    try:
        for greenlet in gevent.iwait(list(running), timeout=timeout or None):
            value = greenlet.get()
            if isinstance(value, NameLookupFailed):
                raise value
            found[running[greenlet]] = value
        late = [key for greenlet, key in running.items() if not greenlet.ready()]
        if late and strict:
            raise NameLookupFailed(
                f"timed out after {timeout} s looking up: {', '.join(late)}", EXIT_TIMEOUT
            )
    finally:
        gevent.killall(list(running))
    return found
