"""The rule keys tried for a client, most specific first, as s6-tcpserver-access tries them."""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Callable

_IP4_BITS = 32
_IP6_BITS = 128

# The families of keys s6-tlsserver looks up, in the order it tries them
# (uid/ and gid/ are s6-ipcserver's).
FAMILIES = ("ip4", "ip6", "reversedns")
"""The families of the access stage, which upstream's s6-tcpserver-access has too."""

TLS_FAMILIES = ("sni", "alpn", "certhash", "spki", "san", "cn", "cert")
"""The families of the TLS stage (s6tls only; see s6tls.rules.tlskeys), in the order tried."""

ALL_FAMILIES = FAMILIES + TLS_FAMILIES
"""Every family the server looks up, in the order it tries them."""

# The words that mean "any" and "nothing sent", in the order the server tries them.
_LAST_WORDS = {
    "reversedns": ("@",),
    "sni": ("@", "none"),
    "alpn": ("@", "none"),
    "cert": ("@", "none"),
}


def ip_keys(ip: str) -> list[str]:
    """Return the keys for every prefix of ``ip``, from the full address down to ``_0``.

    Raises ValueError if ``ip`` is not an IPv4 or IPv6 address.
    """
    return list(_ip_keys(ip))


# Clients come back: building 33 (or 129) keys is most of a rules check.
@functools.lru_cache(maxsize=4096)
def _ip_keys(ip: str) -> tuple[str, ...]:
    # An IPv6 scope ("%eth0") is dropped, as skalibs' scanner stops before it.
    # An IPv4-mapped IPv6 address stays IPv6 (ip6/::ffff:a00:1_128...), as
    # upstream never unmaps; its listening IPv6 sockets are IPV6_V6ONLY.
    address = ipaddress.ip_address(ip)
    if address.version == 4:
        return _prefix_keys("ip4", int(address), _IP4_BITS, _format_ip4)
    return _prefix_keys("ip6", int(address), _IP6_BITS, _format_ip6)


def _prefix_keys(family: str, value: int, bits: int, fmt: Callable[[int], str]) -> tuple[str, ...]:
    keys = []
    previous, text = -1, ""
    for prefix in range(bits, -1, -1):
        network = value & ~((1 << (bits - prefix)) - 1)
        # Clearing a bit that is already 0 leaves the address as it was.
        if network != previous:
            previous, text = network, fmt(network)
        keys.append(f"{family}/{text}_{prefix}")
    return tuple(keys)


def name_keys(name: str) -> list[str]:
    """Return ``reversedns/NAME``, then each suffix after a dot, then ``reversedns/@``.

    A final dot is ignored. Raises ValueError for an empty name, which upstream
    rejects (EINVAL) too.
    """
    if not name:
        raise ValueError("empty name")
    if name.endswith("."):
        name = name[:-1]
    # Upstream's loop: emit name[i:], then jump past the next dot; so "a..b"
    # gives "a..b", ".b", "b", and a lone "." gives only "@".
    keys = []
    start = 0
    while start < len(name):
        keys.append(f"reversedns/{name[start:]}")
        dot = name.find(".", start)
        if dot < 0:
            break
        start = dot + 1
    keys.append("reversedns/@")
    return keys


def most_specific_first(key: str) -> tuple[int, str, int, int, str]:
    """Sort key that lists rules in the order a lookup meets them.

    Families come as the server tries them (ALL_FAMILIES, then any other),
    and in each the most specific key first: the longest prefix, the name
    with the most labels, ``reversedns/@`` and ``sni/@`` after the names,
    ``alpn/@`` after the protocols, ``none`` last. So the first key of a
    listing that matches a client is the one that decides for it. A key the
    server never looks up (``ip4/10.1.2.3_8``) comes at the end of its family.
    Within ``san`` and ``cn``, the values are in text order: the order of one
    certificate's names is its own.
    """
    family, _, rest = key.partition("/")
    rank = ALL_FAMILIES.index(family) if family in ALL_FAMILIES else len(ALL_FAMILIES)
    if family in ("ip4", "ip6"):
        return rank, family, *_prefix_order(key), rest
    words = _LAST_WORDS.get(family, ())
    if rest in words:
        return rank, family, 1, words.index(rest), rest
    if family in ("reversedns", "sni"):
        # A leading dot is escaped in sni keys (%2E, see tlskeys.escape); it
        # still starts a label.
        labels = rest.count(".") + 1 + (family == "sni" and rest.startswith("%2E"))
        return rank, family, -labels, 0, rest
    if family == "cert":
        # cert/ has no key but its words.
        return rank, family, 2, 0, rest
    return rank, family, 0, 0, rest


def _prefix_order(key: str) -> tuple[int, int]:
    """(minus the prefix length, the address) of a key the server looks up; (1, 0) for any other."""
    address, _, length = key.partition("/")[2].rpartition("_")
    try:
        keys = ip_keys(address)
    except ValueError:
        return 1, 0
    if not length.isdecimal() or int(length) >= len(keys) or keys[-1 - int(length)] != key:
        return 1, 0
    return -int(length), int(ipaddress.ip_address(address))


def _format_ip4(value: int) -> str:
    return ".".join(map(str, value.to_bytes(4, "big")))


_GROUPS = struct.Struct(">8H").unpack
_HEX_GROUPS = "{:x}:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}:{:x}".format

# ":0:0:...:0:" with n zero groups, longest first.
_ZERO_RUNS = [":" + "0:" * n for n in range(8, 1, -1)]


def _format_ip6(value: int) -> str:
    """Format like skalibs' ip6_fmt: lower-case hex groups, the first longest run of
    two or more zero groups as "::", and no dotted-quad tail even for mapped addresses."""
    text = _HEX_GROUPS(*_GROUPS(value.to_bytes(16, "big")))
    padded = f":{text}:"
    if ":0:0:" in padded:
        # Searching the longest runs first, the first hit is the first longest run.
        for run in _ZERO_RUNS:
            at = padded.find(run)
            if at >= 0:
                return f"{padded[1:at]}::{padded[at + len(run) : -1]}"
    return text
