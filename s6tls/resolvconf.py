"""Where a connection's names are looked up: DNSCACHEIP, resolv.conf, /etc/hosts.

Pure parsers (no sockets): the server reads the files, these say what they mean,
the way skarnet's s6-dns reads them.
"""

from __future__ import annotations

import ipaddress
import re

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

DNS_PORT = 53
# s6-dns asks at most this many servers.
MAX_SERVERS = 16


def parse_server_list(text: str) -> tuple[str, ...]:
    """The resolver addresses in a DNSCACHEIP value (separated by spaces, commas or semicolons)."""
    servers = []
    for word in re.split(r"[\s,;]+", text):
        if word and _is_ip(word):
            servers.append(word)
    return tuple(servers[:MAX_SERVERS])


def parse_resolv_conf(data: bytes) -> tuple[str, ...]:
    """The ``nameserver`` addresses of a resolv.conf, in order."""
    servers = []
    for line in data.decode("ascii", "replace").splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver" and _is_ip(words[1]):
            servers.append(words[1])
    return tuple(servers[:MAX_SERVERS])


def parse_hosts(data: bytes) -> dict[Address, str]:
    """Map each address of a hosts file to the name s6-dns gives it.

    That is the first name of the first line for the address, lower-cased,
    with a trailing dot (s6-dns treats it as fully qualified).
    """
    names: dict[Address, str] = {}
    for raw in data.decode("utf-8", "surrogateescape").splitlines():
        words = raw.split("#", 1)[0].split()
        # s6-dns skips scoped (link-local) addresses.
        if len(words) < 2 or "%" in words[0]:
            continue
        try:
            address = ipaddress.ip_address(words[0])
        except ValueError:
            continue
        name = words[1].lower()
        names.setdefault(address, name if name.endswith(".") else name + ".")
    return names


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
