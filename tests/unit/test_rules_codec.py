"""Tests for the rule value codec (s6tls.rules.codec)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s6tls.rules import (
    NotARuleError,
    Rule,
    RulesError,
    RuleTooBigError,
    decode,
    decode_all,
    encode,
)

PROPERTY = settings(max_examples=500, deadline=None, database=None)

# What skarnet's s6-accessrules-cdb-from-fs wrote for the E08 tree.
E08_ALLOW = b"A\x00\x1dFOO=bar\x00TWOLINES=first\x00EMPTY\x00\x00\x00"
E08_EXEC = b"A\x00\x00\x00\x0dtest/envdump\n"
E08_RDNS = b"A\x00\tVIA=rdns\x00\x00\x00"


def value(env: bytes, command: bytes = b"") -> bytes:
    return b"A" + struct.pack(">H", len(env)) + env + struct.pack(">H", len(command)) + command


def test_upstream_values_decode() -> None:
    assert decode(E08_ALLOW) == Rule(
        allow=True, env=(("FOO", "bar"), ("TWOLINES", "first"), ("EMPTY", None))
    )
    assert decode(E08_EXEC) == Rule(allow=True, exec="test/envdump\n")
    assert decode(E08_RDNS) == Rule(allow=True, env=(("VIA", "rdns"),))
    assert decode(b"D") == Rule(allow=False)


def test_encode_matches_upstream_bytes() -> None:
    for raw in (E08_ALLOW, E08_EXEC, E08_RDNS, b"D"):
        assert encode(decode(raw)) == raw


def test_deny_ignores_env_and_exec() -> None:
    assert encode(Rule(allow=False, env=(("A", "b"),), exec="x")) == b"D"


def test_allow_without_anything() -> None:
    assert encode(Rule(allow=True)) == b"A\x00\x00\x00\x00"
    assert decode(b"A\x00\x00\x00\x00") == Rule(allow=True)


def test_limits() -> None:
    # "NAME=" + value + NUL: 4096 bytes exactly fits.
    fits = Rule(allow=True, env=(("N", "x" * 4093),))
    assert len(encode(fits)) == 5 + 4096
    with pytest.raises(RuleTooBigError) as info:
        encode(Rule(allow=True, env=(("N", "x" * 4094),)))
    assert (info.value.part, info.value.size) == ("env", 4097)
    assert isinstance(info.value, RulesError)
    assert decode(encode(Rule(allow=True, exec="e" * 4096))).exec == "e" * 4096
    with pytest.raises(RuleTooBigError) as info:
        encode(Rule(allow=True, exec="e" * 4097))
    assert info.value.part == "exec"
    largest = Rule(allow=True, env=(("N", "x" * 4093),), exec="e" * 4096)
    assert decode(encode(largest)) == largest


@pytest.mark.parametrize(
    ("name", "val"),
    [("", "x"), ("A=B", "x"), ("A\0", "x"), ("A", "x\0y"), ("", None)],
)
def test_unencodable_variables(name: str, val: str | None) -> None:
    with pytest.raises(RulesError):
        encode(Rule(allow=True, env=((name, val),)))


def test_lenient_where_upstream_is() -> None:
    # s6_accessrules_backend_cdb: anything after D is ignored; a type byte
    # other than A or D means "no rule here".
    assert decode(b"Dwhatever") == Rule(allow=False)
    for raw in (b"X", b"a\x00\x00\x00\x00", b"\x00"):
        with pytest.raises(NotARuleError):
            decode(raw)
    assert issubclass(NotARuleError, RulesError)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"A",
        b"A\x00\x00\x00",
        value(b"A=1\x00")[:-1],  # exec length cut
        b"A\x00\x05AB\x00\x00\x00",  # env length beyond the value
        value(b"") + b"junk",  # trailing bytes
        b"A\x00\x00\x00\x05abc",  # exec shorter than announced
        b"A\x10\x01" + b"x" * 4097 + b"\x00\x00",  # env length over 4096
        b"A\x00\x00\x10\x01" + b"e" * 4097,  # exec length over 4096
        b"D" * 8198,  # longer than any rule
        value(b"A=1"),  # unterminated env block
        value(b"\x00"),  # empty name
        value(b"=v\x00"),  # empty name
    ],
)
def test_malformed_values(raw: bytes) -> None:
    with pytest.raises(RulesError) as info:
        decode(raw)
    assert not isinstance(info.value, NotARuleError)


def test_decode_all_leaves_out_what_is_no_rule() -> None:
    records = {"ip4/a": E08_ALLOW, "uid/0": b"X", "ip4/b": b"D"}
    assert decode_all(records) == {"ip4/a": decode(E08_ALLOW), "ip4/b": Rule(allow=False)}
    with pytest.raises(RulesError, match=r"^key ip4/c: invalid rule value: truncated$"):
        decode_all({**records, "ip4/c": b"A\x00"})


names = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="=\0"), min_size=1, max_size=20
)
values = st.none() | st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\0"))
rules = st.builds(
    Rule,
    allow=st.just(True),
    env=st.lists(st.tuples(names, values), max_size=10).map(tuple),
    exec=st.text(st.characters(blacklist_categories=["Cs"]), max_size=200),
)


@PROPERTY
@given(rules)
def test_round_trip(rule: Rule) -> None:
    try:
        raw = encode(rule)
    except RuleTooBigError:
        return
    assert decode(raw) == rule
    assert encode(decode(raw)) == raw


@PROPERTY
@given(st.binary(max_size=64) | st.builds(value, st.binary(max_size=40), st.binary(max_size=40)))
def test_decode_never_raises_anything_but_rules_error(raw: bytes) -> None:
    try:
        rule = decode(raw)
    except RulesError:
        return
    assert encode(rule) == raw or raw.startswith(b"D")


def test_non_utf8_bytes_survive() -> None:
    raw = value(b"V=\xff\xfe\x00", b"\xc3(")
    rule = decode(raw)
    assert rule.env == (("V", "\udcff\udcfe"),)
    assert encode(rule) == raw
