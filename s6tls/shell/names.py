"""The names of a connection: reverse DNS, /etc/hosts and IDENT, as s6-tcpserver-access finds them.

For each connection upstream asks the PTR of the remote and the local
address (TCPREMOTEHOST, TCPLOCALHOST), may check the remote name forward
(``-p``) and may ask the client's IDENT server (``-r``, TCPREMOTEINFO).
Here every lookup of a connection runs in its own greenlet over gevent
sockets, under one deadline (``-t``), so a slow or silent server delays
only the connection that asked it. The DNS queries themselves are
``s6tls.shell.dnsclient``'s.

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import gevent
from gevent import socket

from s6tls.ident import IDENT_PORT, IDENT_REPLY_MAX, IdentReplyError, parse_ident_reply
from s6tls.resolvconf import Address, parse_hosts
from s6tls.shell.dnsclient import DnsClient, LookupFailure, family, reason
from s6tls.shell.files import Files, WatchedFile

HOSTS_FILE = "/etc/hosts"

# Exit codes of s6-tcpserver-access for a dropped connection.
EXIT_NOT_FOUND = 1
EXIT_IDENT_ERROR = 2
EXIT_TIMEOUT = 99
EXIT_FAILURE = 111


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


class Resolver:
    """Looks up the names of connections: DNS as s6-dns asks it, /etc/hosts, IDENT."""

    def __init__(
        self, dns: DnsClient, *, hosts_first: bool = False, hosts_file: str = HOSTS_FILE
    ) -> None:
        self.dns = dns
        self.hosts_first = hosts_first
        self._hosts: WatchedFile[dict[Address, str]] = WatchedFile(hosts_file, parse_hosts, {})

    @property
    def files(self) -> Files:
        """How the files are read (through the root helper, with TLS_UID)."""
        return self.dns.files

    @files.setter
    def files(self, files: Files) -> None:
        self.dns.files = files

    def paths(self) -> set[str]:
        """The files the lookups read."""
        return self.dns.paths() | ({self._hosts.path} if self.hosts_first else set())

    @classmethod
    def from_environment(cls, environ: Mapping[str, str], hosts_first: bool) -> Resolver:
        """The resolver of s6-dns: DNSCACHEIP if it names servers, else /etc/resolv.conf."""
        return cls(DnsClient.from_environment(environ), hosts_first=hosts_first)

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
                    tasks["local name"] = partial(self.dns.name_of, local_ip)
        found = _gather(tasks, timeout, strict)
        return Names(
            remote_host=found.get("remote name", remote_host),
            local_host=found.get("local name", local_host),
            remote_info=found.get("IDENT"),
        )

    def _remote_name(self, ip: str, paranoid: bool, strict: bool) -> str | None:
        """The remote name; with `paranoid`, only if it resolves back to `ip`."""
        name = self.dns.name_of(ip)
        if not paranoid:
            return name
        if name is None:
            # Upstream drops a nameless client only when -p and -w are both given.
            if strict:
                raise NameLookupFailed(f"no name for {ip} to check", EXIT_NOT_FOUND)
            return None
        address = ipaddress.ip_address(ip)
        if address not in self.dns.addresses_of(name, address.version):
            raise NameLookupFailed(f"{name} does not resolve back to {ip}", EXIT_NOT_FOUND)
        return name

    def _hosts_table(self, strict: bool) -> dict[Address, str]:
        try:
            return self._hosts.get(self.files)
        except OSError as e:
            if strict:
                raise NameLookupFailed(f"unable to read {self._hosts.path}: {e.strerror}") from None
            return {}


def ident_lookup(remote_ip: str, remote_port: int, local_ip: str, local_port: int) -> str | None:
    """Ask the client's IDENT server (RFC 1413) who owns the connection; the user id.

    The query leaves from `local_ip`, so that the client's host can tell which
    of its connections is meant.
    """
    try:
        with socket.socket(family(remote_ip), socket.SOCK_STREAM) as sock:
            sock.bind((local_ip, 0))
            sock.connect((remote_ip, IDENT_PORT))
            sock.sendall(f"{remote_port} , {local_port}\r\n".encode("ascii"))
            line = _read_line(sock, IDENT_REPLY_MAX)
    except (OSError, EOFError) as e:
        exitcode = EXIT_TIMEOUT if isinstance(e, TimeoutError) else EXIT_FAILURE
        raise LookupFailure(f"unable to ask IDENT at {remote_ip}: {reason(e)}", exitcode) from None
    try:
        return parse_ident_reply(line, remote_port, local_port)
    except IdentReplyError as e:
        raise LookupFailure(
            str(e), EXIT_IDENT_ERROR if e.answered_error else EXIT_FAILURE
        ) from None


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
    except LookupFailure as e:
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
