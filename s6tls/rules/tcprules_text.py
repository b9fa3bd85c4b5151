"""djb's ``tcprules`` text (ucspi-tcp): its grammar, and how ``tcpserver`` looks its rules up.

A tcprules line is ``ADDRESS:allow`` or ``ADDRESS:deny``, optionally followed
by ``,NAME="value"`` assignments (any repeated character may replace the
quotes); ``#`` starts a comment line and a line without a colon is ignored,
as ``tcprules`` does. ``1.2.3.37-53`` and ``10.2-3.`` are ranges. ucspi-tcp's
``tcpserver`` looks up, in this fixed order: the client's address, ``=NAME``,
the address prefixes ending in a dot (longest first), ``=.SUFFIX`` (longest
first), ``=`` (any named client), then the empty address; among lines
with the same address the first one wins, and with no match the client is
allowed.

The ranges, a line's keys and tcpserver's lookup are modelled here as
ucspi-tcp's tcprules.c and rules.c have them; the translation into s6 rules
is ``s6tls.rules.tcprules_convert``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from s6tls.rules.errors import RulesError

# A client address as tcpserver writes it: dotted decimal, no leading zeros.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_EXACT = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_PREFIX = re.compile(rf"(?:{_OCTET}\.){{1,3}}")
_LABEL = re.compile(r"[^./\s\0]+")
_DIGITS = re.compile(r"[0-9]*")


class TcpRulesError(RulesError):
    """A tcprules text that cannot be read, or whose decisions s6 rules cannot keep.

    ``problems`` holds one message per problem, each naming its lines. The
    parser here raises it, and so does ``tcprules_convert`` for what it refuses.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class TcpRule:
    """One rule line of a tcprules file, with the keys ``tcprules`` makes of it."""

    line: int
    text: str
    address: str
    allow: bool
    env: tuple[tuple[str, str], ...] = ()
    keys: tuple[str, ...] = ()

    def outcome(self) -> Outcome:
        """What tcpserver does with a client this line decides."""
        return (True, frozenset(dict(self.env).items())) if self.allow else DENY

    def describe(self) -> str:
        """The line number and text, for messages."""
        return f"line {self.line} ({self.text})"


# (allowed, environment set): what a decision comes to, so that tcpserver's
# and s6's compare. A client no line matches, tcpserver allows, setting nothing.
Outcome = tuple[bool, frozenset[tuple[str, str]]]
DENY: Outcome = (False, frozenset())
DEFAULT_ALLOW: Outcome = (True, frozenset())


def parse_tcprules(text: str) -> list[TcpRule]:
    """Return the rule lines of a tcprules text; TcpRulesError for a line tcprules rejects.

    Like ``tcprules``, reading stops at the first unparsable line; comments,
    blank lines and lines without a colon are skipped.
    """
    rules = []
    for number, raw in enumerate(_lines(text), start=1):
        if not raw or raw.startswith("#"):
            continue
        line = raw.rstrip(" \t")
        colon = line.find(":")
        if colon < 0:
            continue
        address = line[:colon]
        parsed = _parse_instructions(line[colon + 1 :])
        if parsed is None:
            raise TcpRulesError([f"line {number}: unable to parse this line: {line}"])
        allow, env = parsed
        keys = _expand(address)
        if keys is None:
            raise TcpRulesError([f"line {number}: unable to parse this line: {line}"])
        rules.append(TcpRule(number, line, address, allow, env, keys))
    return rules


def tcprules_table(rules: Iterable[TcpRule]) -> dict[str, TcpRule]:
    """Return the lookup table ``tcprules`` builds: each key to the first line holding it."""
    table: dict[str, TcpRule] = {}
    for rule in rules:
        for key in rule.keys:
            table.setdefault(key, rule)
    return table


def tcpserver_lookup(
    table: Mapping[str, TcpRule], ip: str, host: str | None = None
) -> tuple[str, TcpRule] | None:
    """Return the key and line tcpserver follows for a client, or None (allowed by default).

    The order is ucspi-tcp's rules.c, without the IDENT (``info@``) keys.
    """
    for key in _tcpserver_keys(ip, host):
        found = table.get(key)
        if found is not None:
            return key, found
    return None


def range_prefixes(first: int, last: int, bits: int = 32) -> list[tuple[int, int]]:
    """Return the fewest (network, prefix length) pairs covering first..last exactly.

    Addresses are integers of ``bits`` bits; ``first`` must not exceed ``last``.
    """
    if not 0 <= first <= last < 1 << bits:
        raise ValueError(f"not a range of {bits}-bit addresses: {first}..{last}")
    prefixes = []
    while first <= last:
        # The largest block aligned on `first` that stays within the range.
        size = first & -first if first else 1 << bits
        while size > last - first + 1:
            size >>= 1
        prefixes.append((first, bits - size.bit_length() + 1))
        first += size
    return prefixes


def matchable(key: str) -> bool:
    """Whether tcpserver can ever match a key (tcprules stores any address it reads)."""
    if key in ("", "="):
        return True
    if key.startswith("="):
        name = key[2:] if key.startswith("=.") else key[1:]
        labels = name.split(".")
        return all(_LABEL.fullmatch(label) for label in labels)
    return is_address_key(key)


def is_address_key(key: str) -> bool:
    """Whether a key is a client address or an address prefix ending in a dot."""
    return bool(_EXACT.fullmatch(key) or _PREFIX.fullmatch(key))


def address_span(key: str) -> tuple[int, int]:
    """The first and last address a numeric key (address or prefix) matches."""
    parts = [int(p) for p in key.rstrip(".").split(".")]
    free = 8 * (4 - len(parts))
    base = 0
    for part in parts:
        base = base << 8 | part
    base <<= free
    return base, base + (1 << free) - 1


def _lines(text: str) -> Iterator[str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return iter(lines)


def _parse_instructions(text: str) -> tuple[bool, tuple[tuple[str, str], ...]] | None:
    """Parse ``allow``/``deny`` and the assignments after it, as tcprules.c does."""
    if text.startswith("deny"):
        allow, rest = False, text[4:]
    elif text.startswith("allow"):
        allow, rest = True, text[5:]
    else:
        return None
    env = []
    while rest:
        if rest[0] != ",":
            return None
        equals = rest.find("=")
        if equals < 0 or equals + 1 >= len(rest):
            return None
        name = rest[1:equals]
        quote = rest[equals + 1]
        end = rest.find(quote, equals + 2)
        if end < 0:
            return None
        env.append((name, rest[equals + 2 : end]))
        rest = rest[end + 1 :]
    return allow, tuple(env)


def _expand(address: str) -> tuple[str, ...] | None:
    """Return the keys tcprules stores for an address (a range gives one per number).

    None when tcprules rejects the range's numbers.
    """
    dash = address.find("-")
    if dash < 0 or "=" in address or "@" in address:
        return (address,)
    left = address.rfind(".", 0, dash) + 1
    right = address.find(".", dash + 1)
    if right < 0:
        right = len(address)
    bottom, top = address[left:dash], address[dash + 1 : right]
    # tcprules reads an empty number as 0.
    if not (_DIGITS.fullmatch(bottom) and _DIGITS.fullmatch(top)):
        return None
    low, high = int(bottom or "0"), min(int(top or "0"), 255)
    head, tail = address[:left], address[right:]
    return tuple(f"{head}{n}{tail}" for n in range(low, high + 1))


def _tcpserver_keys(ip: str, host: str | None) -> Iterator[str]:
    yield ip
    if host is not None:
        yield f"={host}"
    for end in range(len(ip), 0, -1):
        if ip[end - 1] == ".":
            yield ip[:end]
    if host is not None:
        for at, char in enumerate(host):
            if char == ".":
                yield f"={host[at:]}"
        yield "="
    yield ""
