"""Tests for djb's tcprules text and its translation into s6 rules.

The text and tcpserver's lookup are rules/tcprules_text.py, the translation
rules/tcprules_convert.py.

tcpserver's own decisions are checked against ucspi-tcp's tcprulescheck in
tests/system/test_tcprules.py; here the model is taken as the reference.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s6tls.rules import Rule, decide
from s6tls.rules.tcprules_convert import convert_tcprules, import_tcprules
from s6tls.rules.tcprules_text import (
    TcpRule,
    TcpRulesError,
    parse_tcprules,
    range_prefixes,
    tcprules_table,
    tcpserver_lookup,
)

PROPERTY = settings(max_examples=200, deadline=None, database=None)


class Rules:
    """A ruleset in memory, looked up like DirRules and CdbRules."""

    def __init__(self, rules: dict[str, Rule]) -> None:
        self.rules = rules

    def get(self, key: str) -> Rule | None:
        return self.rules.get(key)

    def find(self, keys: Iterable[str]) -> tuple[str, Rule] | None:
        for key in keys:
            if key in self.rules:
                return key, self.rules[key]
        return None


def problems(text: str, **kwargs: bool) -> list[str]:
    with pytest.raises(TcpRulesError) as caught:
        convert_tcprules(parse_tcprules(text), **kwargs)
    return list(caught.value.problems)


# --- reading the text, as tcprules reads it ------------------------------------------


def test_lines_comments_and_instructions() -> None:
    text = (
        "# a comment\n"
        "\n"
        "a line without a colon is ignored\n"
        '1.2.3.:allow,A="x",B=//,C=/a b/,D=1z1 \t\n'
        "=host.example:deny,IGNORED=:x:\n"
        ":allow"  # no final newline
    )
    rules = parse_tcprules(text)
    assert [(r.line, r.address, r.allow) for r in rules] == [
        (4, "1.2.3.", True),
        (5, "=host.example", False),
        (6, "", True),
    ]
    assert rules[0].env == (("A", "x"), ("B", ""), ("C", "a b"), ("D", "z"))
    assert rules[0].text == '1.2.3.:allow,A="x",B=//,C=/a b/,D=1z1'
    assert rules[1].env == (("IGNORED", "x"),)


@pytest.mark.parametrize(
    "line",
    [
        "1.2.3.4:foo",
        "1.2.3.4:allowx",
        "1.2.3.4:denyfoo",
        "1.2.3.4:allow,",
        "1.2.3.4:allow,X",
        '1.2.3.4:allow,X="unterminated',
        "1.2.3.4:allow x",
        "::1:allow",
        "1.2.3.a-4:deny",
        "1.2.3.4:deny\r",
    ],
)
def test_lines_tcprules_rejects(line: str) -> None:
    with pytest.raises(TcpRulesError, match=r"^line 2: unable to parse this line: "):
        parse_tcprules(f"# first\n{line}\n1.2.3.5:deny\n")


def test_ranges_expand_like_tcprules() -> None:
    first, second, third, fourth = parse_tcprules(
        "1.2.3.37-53:allow\n10.2-3.:deny\n1.2.3.04-06:deny\n1.2.3.250-300:deny\n"
    )
    assert first.keys == tuple(f"1.2.3.{n}" for n in range(37, 54))
    assert second.keys == ("10.2.", "10.3.")
    assert third.keys == ("1.2.3.4", "1.2.3.5", "1.2.3.6")  # numbers are rewritten
    assert fourth.keys == tuple(f"1.2.3.{n}" for n in range(250, 256))  # capped at 255


def test_first_line_wins_for_a_repeated_address() -> None:
    table = tcprules_table(parse_tcprules("1.2.3.4:deny\n1.2.3.1-9:allow\n"))
    assert table["1.2.3.4"].line == 1
    assert table["1.2.3.5"].line == 2


def test_tcpserver_lookup_order() -> None:
    table = tcprules_table(
        parse_tcprules(
            "1.2.3.4:allow,W=/ip/\n"
            "=h.example.com:allow,W=/host/\n"
            "1.2.:allow,W=/prefix/\n"
            "=.example.com:allow,W=/suffix/\n"
            "=:allow,W=/named/\n"
            ":allow,W=/default/\n"
        )
    )

    def which(ip: str, host: str | None) -> str:
        found = tcpserver_lookup(table, ip, host)
        assert found is not None
        return dict(found[1].env)["W"]

    assert which("1.2.3.4", "h.example.com") == "ip"
    assert which("1.2.9.9", "h.example.com") == "host"
    assert which("1.2.9.9", "x.example.com") == "prefix"
    assert which("9.9.9.9", "x.example.com") == "suffix"
    assert which("9.9.9.9", "example.com") == "named"  # =.example.com needs a dot before
    assert which("9.9.9.9", None) == "default"
    assert tcpserver_lookup({}, "9.9.9.9", None) is None  # tcpserver then allows


# --- translation ---------------------------------------------------------------------


def test_prefixes_ranges_exact_and_default() -> None:
    rules = import_tcprules(
        '1.2.3.:allow,A="x"\n'
        "1.2.3.4-20:deny\n"
        "10.2-3.:allow\n"
        "192.0.2.7:allow,B=//,A=/first/,A=/last/\n"
        ":deny\n"
    )
    assert rules == {
        "ip4/0.0.0.0_0": Rule(allow=False),
        "ip4/1.2.3.0_24": Rule(allow=True, env=(("A", "x"),)),
        "ip4/1.2.3.4_30": Rule(allow=False),
        "ip4/1.2.3.8_29": Rule(allow=False),
        "ip4/1.2.3.16_30": Rule(allow=False),
        "ip4/1.2.3.20_32": Rule(allow=False),
        "ip4/10.2.0.0_15": Rule(allow=True),
        # Sorted as an envdir lists them; of a repeated variable, the last is kept.
        "ip4/192.0.2.7_32": Rule(allow=True, env=(("A", "last"), ("B", ""))),
        "ip6/::_0": Rule(allow=False),
    }


def test_no_default_line_means_allow() -> None:
    conversion = convert_tcprules(parse_tcprules("10.:deny\n"))
    assert conversion.rules["ip4/0.0.0.0_0"] == conversion.rules["ip6/::_0"] == Rule(allow=True)
    assert conversion.origin["ip4/0.0.0.0_0"] is None
    assert conversion.origin["ip4/10.0.0.0_8"] == 1
    assert any("tcpserver allows" in warning for warning in conversion.warnings)


def test_deny_instructions_drop_their_variables() -> None:
    assert import_tcprules('10.:deny,X="1"\n:allow\n')["ip4/10.0.0.0_8"] == Rule(allow=False)


def test_names_that_keep_their_meaning() -> None:
    rules = import_tcprules(
        "192.0.2.7:deny\n"
        "192.0.2.10-20:allow\n"
        '=mx.partner.example:allow,SITE="mx"\n'
        '=.mx.partner.example:allow,SITE="mx"\n'
        '=.partner.example:allow,SITE="partner"\n'
        '=partner.example:allow,SITE="partner"\n'
        "=:deny\n"
        ":deny\n"
    )
    # A denying default is left out: ip4/0.0.0.0_0 would hide every name rule.
    assert sorted(rules) == [
        "ip4/192.0.2.10_31",
        "ip4/192.0.2.12_30",
        "ip4/192.0.2.16_30",
        "ip4/192.0.2.20_32",
        "ip4/192.0.2.7_32",
        "reversedns/@",
        "reversedns/mx.partner.example",
        "reversedns/partner.example",
    ]
    assert rules["reversedns/partner.example"] == Rule(allow=True, env=(("SITE", "partner"),))
    assert rules["reversedns/@"] == Rule(allow=False)


def test_subdomains_only_cannot_be_said_in_s6() -> None:
    (problem,) = problems('10.:allow\n=.partner.example:allow,P="1"\n:deny\n')
    assert "named partner.example" in problem
    assert "line 3 (:deny) from tcpserver" in problem
    assert 'line 2 (=.partner.example:allow,P="1") as reversedns/partner.example' in problem
    assert "also matches partner.example itself" in problem


def test_one_name_only_cannot_be_said_in_s6() -> None:
    (problem,) = problems(
        '=mx.partner.example:allow,S="mx"\n'
        '=.partner.example:allow,S="p"\n'
        '=partner.example:allow,S="p"\n'
        ":deny\n"
    )
    assert "named unlisted.mx.partner.example gets line 2 (=.partner.example" in problem
    assert "but line 1 (=mx.partner.example" in problem
    assert "=mx.partner.example matches only mx.partner.example itself" in problem


def test_a_name_before_address_prefixes_cannot_be_said_in_s6() -> None:
    found = problems('=mail.example.com:allow,RELAYCLIENT=""\n127.:allow\n:allow\n')
    assert found
    assert all("line 1 (=mail.example.com" in p for p in found)
    assert all("before any name rule" in p for p in found)
    assert any("line 2 (127.:allow) as ip4/127.0.0.0_8" in p for p in found)
    assert any("line 3 (:allow) as ip4/0.0.0.0_0" in p for p in found)


def test_names_left_out_for_a_server_without_dns() -> None:
    conversion = convert_tcprules(
        parse_tcprules('=mail.example.com:allow,RELAYCLIENT=""\n127.:allow\n:allow\n'),
        names=False,
    )
    assert sorted(conversion.rules) == ["ip4/0.0.0.0_0", "ip4/127.0.0.0_8", "ip6/::_0"]
    assert any("(1)" in warning for warning in conversion.warnings)


def test_a_later_line_that_never_applies_is_refused() -> None:
    (problem,) = problems("10.0.0.1-50:allow\n10.0.0.13:deny\n:deny\n")
    assert problem.startswith("line 2 (10.0.0.13:deny) never applies: line 1 (10.0.0.1-50:allow)")
    assert "move it above line 1" in problem
    # Listed first, the exception is how tcprules words it, and converts exactly.
    rules = import_tcprules("10.0.0.13:deny\n10.0.0.1-50:allow\n:deny\n")
    assert rules["ip4/10.0.0.13_32"] == Rule(allow=False)
    assert rules["ip4/10.0.0.12_32"] == Rule(allow=True)
    assert rules["ip4/10.0.0.14_31"] == Rule(allow=True)
    # The same instructions twice are no conflict.
    assert import_tcprules("10.0.0.1-50:allow\n10.0.0.13:allow\n:deny\n")


def test_overlapping_ranges_keep_the_first_and_warn() -> None:
    conversion = convert_tcprules(parse_tcprules("10.0.0.1-10:allow\n10.0.0.5-14:deny\n"))
    assert conversion.rules["ip4/10.0.0.8_31"] == Rule(allow=True)
    assert conversion.rules["ip4/10.0.0.12_31"] == Rule(allow=False)
    assert any(
        w.startswith("line 2 (10.0.0.5-14:deny) does not apply to 10.0.0.5 and 5 more")
        for w in conversion.warnings
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("joe@1.2.3.4:allow", "IDENT rules"),
        ("1.2.3.0/24:allow", "never matches the address '1.2.3.0/24'"),
        ("1.2.3:allow", "never matches"),
        ("01.2.3.4:allow", "never matches"),
        (" 1.2.3.4:allow", "never matches"),
        ("=host.example.com.:allow", "never matches"),
        ("=.:allow", "never matches"),
        ("1.2.3.300-400:allow", "the range is empty"),
        ("1.2.3.4:allow,A/B=/x/", "cannot be an s6 envdir file"),
        ("1.2.3.4:allow,.A=/x/", "cannot be an s6 envdir file"),
        ('1.2.3.4:allow,A="x "', "ends with a blank"),
        ("1.2.3.4:allow,A=/" + "x" * 5000 + "/", "env is 5003 bytes"),
    ],
)
def test_lines_s6_cannot_keep(line: str, message: str) -> None:
    (problem,) = problems(f"# rules\n{line}\n:deny\n")
    assert problem.startswith(f"line 2 ({line}): ")
    assert message in problem


def test_two_lines_for_one_s6_key() -> None:
    (problem,) = problems("=example.com:allow\n=.example.com:deny\n:deny\n")
    assert problem == (
        "line 1 (=example.com:allow) and line 2 (=.example.com:deny)"
        " would both become reversedns/example.com, with different instructions"
    )


# --- properties ----------------------------------------------------------------------


def outcome(rule: Rule | TcpRule | None, *, deny: bool) -> tuple[bool, dict[str, str | None]]:
    """Allowed or not, and the variables set; ``deny`` says what no rule means."""
    if rule is None:
        return (not deny, {})
    return (rule.allow, dict(rule.env) if rule.allow else {})


@PROPERTY
@given(st.data(), st.sampled_from([32, 128]))
def test_range_prefixes_match_ipaddress(data: st.DataObject, bits: int) -> None:
    top = (1 << bits) - 1
    first = data.draw(st.integers(0, top))
    last = data.draw(
        st.integers(first, min(top, first + data.draw(st.sampled_from([0, 9, 1 << 20, top]))))
    )
    make = ipaddress.IPv4Address if bits == 32 else ipaddress.IPv6Address
    expected = [
        (int(n.network_address), n.prefixlen)
        for n in ipaddress.summarize_address_range(make(first), make(last))
    ]
    assert range_prefixes(first, last, bits) == expected


# Small address space, so that lines overlap often.
_octets = st.sampled_from(["10", "11"]), st.sampled_from(["0", "1"]), st.sampled_from(["0", "7"])
_instructions = st.sampled_from(["allow", "deny", 'allow,X="a"', 'allow,X="b"', "allow,Y=//"])


@st.composite
def _address(draw: st.DrawFn) -> str:
    a, b, c = (draw(octet) for octet in _octets)
    kind = draw(st.sampled_from(["exact", "range", "/24", "/16", "/8", "prefix-range", "default"]))
    if kind == "exact":
        return f"{a}.{b}.{c}.{draw(st.integers(0, 9))}"
    if kind == "range":
        low = draw(st.integers(0, 9))
        return f"{a}.{b}.{c}.{low}-{draw(st.integers(low, 12))}"
    if kind == "/24":
        return f"{a}.{b}.{c}."
    if kind == "/16":
        return f"{a}.{b}."
    if kind == "/8":
        return f"{a}."
    if kind == "prefix-range":
        return f"{a}.{b}.{c}-{draw(st.sampled_from(['7', '9']))}."
    return ""


_clients = st.builds(
    "{}.{}.{}.{}".format,
    st.sampled_from([10, 11, 12]),
    st.sampled_from([0, 1, 2]),
    st.sampled_from([0, 7, 8, 9]),
    st.integers(0, 20),
)


@PROPERTY
@given(
    st.lists(st.tuples(_address(), _instructions), min_size=1, max_size=8),
    st.lists(_clients, min_size=20, max_size=20),
)
def test_a_translation_decides_as_tcpserver(
    lines: list[tuple[str, str]], clients: list[str]
) -> None:
    text = "".join(f"{address}:{instructions}\n" for address, instructions in lines)
    rules = parse_tcprules(text)
    try:
        converted = convert_tcprules(rules)
    except TcpRulesError:
        return
    table = tcprules_table(rules)
    for ip in [*clients, "2001:db8::5"]:
        theirs = tcpserver_lookup(table, ip)
        ours = decide(Rules(dict(converted.rules)), ip, None)
        assert outcome(ours[1] if ours else None, deny=True) == outcome(
            theirs[1] if theirs else None, deny=False
        ), (text, ip)


_names = st.sampled_from(["=a.example", "=.a.example", "=example", "=.example", "="])
_hosts = [None, "a.example", "b.a.example", "example", "c.example", "other"]


@PROPERTY
@given(
    # Two instructions only: with more, few rulesets mixing names can be translated.
    st.lists(
        st.tuples(st.one_of(_address(), _names), st.sampled_from(["allow", "deny"])),
        min_size=1,
        max_size=5,
    ),
    st.lists(_clients, min_size=6, max_size=6),
)
def test_a_translation_with_names_decides_as_tcpserver(
    lines: list[tuple[str, str]], clients: list[str]
) -> None:
    text = "".join(f"{address}:{instructions}\n" for address, instructions in lines)
    rules = parse_tcprules(text)
    try:
        converted = convert_tcprules(rules)
    except TcpRulesError:
        return
    table = tcprules_table(rules)
    for ip in [*clients, "2001:db8::5"]:
        for host in _hosts:
            theirs = tcpserver_lookup(table, ip, host)
            ours = decide(Rules(dict(converted.rules)), ip, host)
            assert outcome(ours[1] if ours else None, deny=True) == outcome(
                theirs[1] if theirs else None, deny=False
            ), (text, ip, host)


@PROPERTY
@given(st.lists(st.tuples(_address(), _instructions), min_size=1, max_size=8))
def test_address_lines_that_do_not_overlap_always_translate(lines: list[tuple[str, str]]) -> None:
    rules = parse_tcprules("".join(f"{a}:{i}\n" for a, i in lines))
    seen: set[str] = set()
    for rule in rules:
        if seen & set(rule.keys):
            return
        seen |= set(rule.keys)
    convert_tcprules(rules)
