"""djb's tcprules (as ``s6tls.rules.tcprules_text`` reads them) translated exactly into s6 rules.

s6 looks rules up otherwise than tcpserver: it tries every address prefix
(down to ``ip4/0.0.0.0_0``) before any name, its ``reversedns/example.com``
also matches ``example.com`` itself while tcprules' ``=.example.com`` does
not, and it denies a client no rule matches.

The translation is exact or refused: every line is converted (an address
``1.2.3.4`` becomes ``ip4/1.2.3.4_32``, a prefix ``1.2.3.`` ``ip4/1.2.3.0_24``,
a range the fewest CIDR prefixes, ``=name`` and ``=.name`` ``reversedns/name``,
``=`` ``reversedns/@``, the empty address, or its absence (tcpserver's
allowing default), ``ip4/0.0.0.0_0`` and ``ip6/::_0``, unless it denies and
name rules exist, which those would hide), then the decisions of both
rulesets are compared for one client of every kind the rules can tell
apart. Lines tcpserver can never match, lines that never apply because an
earlier line holds their addresses with other instructions (tcprules keeps
the first, s6 would prefer the more specific), IDENT rules
(``user@address``) and any change of decision are errors naming the lines;
nothing is converted then.

The comparison (the clients chosen, both lookups, the message for a
difference) stays beside the conversion it proves, though the module is
longer than most: it is what makes the conversion exact, and it reads the
conversion's own record of the line each s6 rule comes from.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from s6tls.rules.codec import Rule, encode
from s6tls.rules.errors import RuleTooBigError
from s6tls.rules.keys import ip_keys, name_keys
from s6tls.rules.tcprules_text import (
    DEFAULT_ALLOW,
    DENY,
    Outcome,
    TcpRule,
    TcpRulesError,
    address_span,
    is_address_key,
    matchable,
    parse_tcprules,
    range_prefixes,
    tcprules_table,
    tcpserver_lookup,
)

# At most this many conflicts are reported, so one bad default does not
# bury the message under a line per address rule.
MAX_PROBLEMS = 20

# Any IPv6 client: ucspi-tcp's rules cannot name one, so every IPv6 address
# is decided alike.
_IP6_CLIENT = "2001:db8::1"


@dataclass(frozen=True)
class Conversion:
    """The s6 rules equivalent to a tcprules text, and the line each key comes from.

    ``origin`` maps a key to its line number, or to None for the allow rules
    standing for tcpserver's default (a text without an empty-address line).
    """

    rules: Mapping[str, Rule]
    origin: Mapping[str, int | None]
    warnings: tuple[str, ...] = ()


def convert_tcprules(rules: Sequence[TcpRule], *, names: bool = True) -> Conversion:
    """Return the s6 rules making the same decisions as ``rules``; TcpRulesError if none can.

    With ``names`` false the result is for a server run with ``-H`` (and
    tcpserver with ``-H``): lines matching names are left out and only
    clients without a name are compared.
    """
    problems: list[str] = []
    used = [rule for rule in rules if names or not _is_name_address(rule.address)]
    for rule in used:
        problems += _unusable(rule)
    repeated, warnings = _repeated_keys(used)
    problems += repeated
    if problems:
        raise TcpRulesError(problems[:MAX_PROBLEMS])
    table = tcprules_table(used)
    s6: dict[str, tuple[Rule, TcpRule | None]] = {}
    for rule in used:
        for key in _s6_keys(rule, table):
            problems += _put(s6, key, rule)
    default = table.get("")
    if default is None:
        warnings.append(
            "no line for the empty address: tcpserver allows a client no line matches,"
            " so ip4/0.0.0.0_0 and ip6/::_0 allow them"
        )
    left_out = [str(rule.line) for rule in rules if not names and _is_name_address(rule.address)]
    if left_out:
        warnings.append(
            f"left out the lines matching names ({', '.join(left_out)}):"
            " a server run with -H never looks names up"
        )
    has_names = any(key.startswith("reversedns/") for key in s6)
    if default is None or default.allow or not has_names:
        # A denying default is left out when name rules exist: s6 denies an
        # unmatched client anyway, and ip4/0.0.0.0_0 would hide every name.
        for key in ("ip4/0.0.0.0_0", "ip6/::_0"):
            problems += _put(s6, key, default)
    if not problems:
        problems += _compare(table, s6, names)
    if problems:
        raise TcpRulesError(problems[:MAX_PROBLEMS])
    ordered = sorted(s6)
    return Conversion(
        rules={key: s6[key][0] for key in ordered},
        origin={key: _line_of(s6[key][1]) for key in ordered},
        warnings=tuple(warnings),
    )


def import_tcprules(text: str, *, names: bool = True) -> dict[str, Rule]:
    """Return the s6 rules (key to rule) equivalent to a tcprules text; TcpRulesError if none."""
    return dict(convert_tcprules(parse_tcprules(text), names=names).rules)


def _is_name_address(address: str) -> bool:
    return address.startswith("=") and "@" not in address


def _unusable(rule: TcpRule) -> list[str]:
    """Why a line cannot be translated: an address tcpserver never matches, or bad env."""
    where = rule.describe()
    if "@" in rule.address:
        return [f"{where}: IDENT rules (user@address) have no s6 equivalent"]
    if not rule.keys:
        return [f"{where}: the range is empty: tcpserver never uses this line"]
    for key in rule.keys:
        if not matchable(key):
            return [
                f"{where}: tcpserver never matches the address {key!r}"
                " (use a dotted-quad address, a prefix ending in a dot, a range,"
                " =name, =.suffix, = or nothing)"
            ]
    if not rule.allow:
        return []
    problems = []
    for name, value in rule.env:
        if not name or name.startswith(".") or "/" in name or "\0" in name:
            problems.append(f"{where}: variable {name!r} cannot be an s6 envdir file")
        elif "\0" in value:
            problems.append(f"{where}: the value of {name} holds a NUL byte")
        elif value != value.rstrip(" \t\r"):
            problems.append(
                f"{where}: the value of {name} ends with a blank, which an s6 envdir drops"
            )
    if not problems:
        try:
            encode(_s6_rule(rule))
        except RuleTooBigError as e:
            problems.append(f"{where}: {e}")
    return problems


def _repeated_keys(rules: Sequence[TcpRule]) -> tuple[list[str], list[str]]:
    """Problems and warnings for lines repeating addresses of earlier lines.

    tcprules keeps the first line for an address, and so does the
    conversion. A line that thereby never applies, with instructions of its
    own, is refused: its author meant it to apply, as it would in s6 where
    the more specific rule wins. A line that loses only some addresses is
    converted without them, with a warning unless the earlier line is the
    narrower one (how tcprules makes an exception to a range).
    """
    owner: dict[str, TcpRule] = {}
    problems = []
    warnings = []
    for rule in rules:
        lost = [key for key in rule.keys if key in owner]
        for key in rule.keys:
            owner.setdefault(key, rule)
        differing = [key for key in lost if owner[key].outcome() != rule.outcome()]
        if not differing:
            continue
        first = owner[differing[0]]
        if len(lost) == len(rule.keys):
            problems.append(
                f"{rule.describe()} never applies: {first.describe()} comes first for the"
                " same address, and tcprules keeps the first line, while in s6 the more"
                f" specific one would win; remove line {rule.line} or move it above"
                f" line {first.line}"
            )
        elif len(first.keys) >= len(rule.keys):
            # (An earlier, narrower line is how tcprules makes an exception.)
            shown = differing[0] or "the empty address"
            more = f" and {len(differing) - 1} more" if len(differing) > 1 else ""
            warnings.append(
                f"{rule.describe()} does not apply to {shown}{more}:"
                f" {first.describe()} comes first, and tcprules keeps the first line"
            )
    return problems, warnings


def _s6_rule(rule: TcpRule | None) -> Rule:
    if rule is None:
        return Rule(allow=True)
    if not rule.allow:
        return Rule(allow=False)
    return Rule(allow=True, env=tuple(sorted(dict(rule.env).items())))


def _line_of(rule: TcpRule | None) -> int | None:
    return None if rule is None else rule.line


def _s6_keys(rule: TcpRule, table: Mapping[str, TcpRule]) -> list[str]:
    """The s6 keys for the keys this line owns (those no earlier line holds)."""
    owned = [key for key in rule.keys if table.get(key) is rule]
    if not owned or owned == [""]:
        return []  # the empty address: added once all lines are placed
    address = rule.address
    if address.startswith("="):
        name = address[2:] if address.startswith("=.") else address[1:]
        return [f"reversedns/{name or '@'}"]
    spans = sorted(address_span(key) for key in owned)
    keys = []
    for first, last in _merge(spans):
        for network, length in range_prefixes(first, last):
            keys.append(f"ip4/{ipaddress.IPv4Address(network)}_{length}")
    return keys


def _merge(spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for first, last in spans:
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def _put(s6: dict[str, tuple[Rule, TcpRule | None]], key: str, rule: TcpRule | None) -> list[str]:
    new = _s6_rule(rule)
    old = s6.get(key)
    if old is None:
        s6[key] = (new, rule)
        return []
    if old[0] == new:
        return []
    first = _describe(old[1])
    second = _describe(rule)
    return [f"{first} and {second} would both become {key}, with different instructions"]


def _describe(rule: TcpRule | None) -> str:
    return "tcpserver's default (allow)" if rule is None else rule.describe()


def _s6_lookup(
    s6: Mapping[str, tuple[Rule, TcpRule | None]], ip: str, host: str | None
) -> tuple[str, Rule, TcpRule | None] | None:
    keys = ip_keys(ip) + (name_keys(host) if host else [])
    for key in keys:
        found = s6.get(key)
        if found is not None:
            return key, found[0], found[1]
    return None


def _rule_outcome(rule: Rule | None) -> Outcome:
    if rule is None or not rule.allow:
        return DENY
    return (True, frozenset((name, value) for name, value in rule.env if value is not None))


def _compare(
    table: Mapping[str, TcpRule], s6: Mapping[str, tuple[Rule, TcpRule | None]], names: bool
) -> list[str]:
    """Compare tcpserver's and s6's decisions for one client of every distinguishable kind."""
    hosts = _host_representatives(table, s6) if names else [None]
    problems = []
    seen: set[tuple[int | None, int | None]] = set()
    for ip in _ip_representatives(table, s6):
        for host in hosts:
            theirs = tcpserver_lookup(table, ip, host)
            ours = _s6_lookup(s6, ip, host)
            their_rule = theirs[1] if theirs else None
            their_outcome = their_rule.outcome() if their_rule else DEFAULT_ALLOW
            if their_outcome == _rule_outcome(ours[1] if ours else None):
                continue
            pair = (_line_of(their_rule), _line_of(ours[2]) if ours else -1)
            if pair not in seen:
                seen.add(pair)
                problems.append(_mismatch(ip, host, their_rule, ours))
    return problems


def _mismatch(
    ip: str,
    host: str | None,
    theirs: TcpRule | None,
    ours: tuple[str, Rule, TcpRule | None] | None,
) -> str:
    client = f"a client at {ip}" + (f" named {host}" if host else " without a name")
    if ours is None:
        our_side, reason = "no rule (deny)", "s6 denies a client no rule matches"
    else:
        key, _, origin = ours
        our_side = f"{_describe(origin)} as {key}"
        reason = "the two rulesets decide differently"
        written = origin.address if origin else ""
        named = key.removeprefix("reversedns/")
        if written.startswith("=.") and host == named:
            reason = (
                f"tcprules' ={written[1:]} matches only names ending in .{named},"
                f" s6's {key} also matches {named} itself"
            )
        elif written.startswith("=") and host != named and key.startswith("reversedns/"):
            reason = (
                f"tcprules' {written} matches only {named} itself,"
                f" s6's {key} also matches the names ending in .{named}"
            )
        elif key.startswith("ip") and theirs is not None and theirs.address.startswith("="):
            reason = "s6 tries every address rule, down to ip4/0.0.0.0_0, before any name rule"
    return f"{client} gets {_describe(theirs)} from tcpserver but {our_side} from s6: {reason}"


def _ip_representatives(
    table: Mapping[str, TcpRule], s6: Mapping[str, tuple[Rule, TcpRule | None]]
) -> list[str]:
    """One address per way the address rules of both rulesets can treat a client.

    For each network of either ruleset, an address inside it and outside every
    smaller one (when there is such an address); then one IPv6 address.
    Addresses treated alike by both rulesets are kept once.
    """
    networks = {(0, 0)}
    for key in table:
        if is_address_key(key):
            first, last = address_span(key)
            networks.add((first, 33 - (last - first + 1).bit_length()))
    for key in s6:
        if key.startswith("ip4/"):
            network = ipaddress.IPv4Network(key[4:].replace("_", "/"))
            networks.add((int(network.network_address), network.prefixlen))
    ordered = sorted(networks)
    found = []
    signatures: set[tuple[int | None, tuple[int | None, Rule] | None]] = set()
    for at, (start, length) in enumerate(ordered):
        end = start + (1 << (32 - length)) - 1
        # A network's first address makes a confusing example: try after it.
        candidate = _free_address(ordered, at, start + 1, end)
        if candidate is None:
            candidate = _free_address(ordered, at, start, end)
        if candidate is None:
            continue
        ip = str(ipaddress.IPv4Address(candidate))
        # Without a name, tcpserver's keys are the address, its prefixes and
        # the empty address: the first found decides for every host but an
        # exact-address line, which decides anyway.
        theirs = tcpserver_lookup(table, ip)
        ours = _s6_lookup(s6, ip, None)
        signature = (
            theirs[1].line if theirs else None,
            (_line_of(ours[2]), ours[1]) if ours else None,
        )
        if signature not in signatures:
            signatures.add(signature)
            found.append(ip)
    return [*found, _IP6_CLIENT]


def _free_address(ordered: Sequence[tuple[int, int]], at: int, start: int, end: int) -> int | None:
    """The first address from start to end outside the networks after ``ordered[at]``."""
    candidate = start
    # Sorted by start then length, the networks inside ordered[at] follow it.
    for inner in range(at + 1, len(ordered)):
        inner_start, inner_length = ordered[inner]
        if inner_start > end or inner_start > candidate:
            break
        candidate = max(candidate, inner_start + (1 << (32 - inner_length)))
    return candidate if candidate <= end else None


def _host_representatives(
    table: Mapping[str, TcpRule], s6: Mapping[str, tuple[Rule, TcpRule | None]]
) -> list[str | None]:
    """No name, every name the rules mention, a name below each, and an unrelated one."""
    mentioned = sorted(
        {key[2:] if key.startswith("=.") else key[1:] for key in table if key.startswith("=")}
        - {""}
    )
    labels = {label for name in mentioned for label in name.split(".")}
    fresh = "unlisted"
    while fresh in labels:
        fresh += "x"
    hosts: list[str | None] = [None, fresh]
    for name in mentioned:
        hosts += [name, f"{fresh}.{name}"]
    return hosts
