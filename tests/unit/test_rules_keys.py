"""Tests for the rule keys tried for a client (s6tls.rules.keys)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s6tls.rules import ip_keys, most_specific_first, name_keys

PROPERTY = settings(max_examples=200, deadline=None, database=None)

ip4s = st.ip_addresses(v=4).map(str)
ip6s = st.ip_addresses(v=6).map(str)


def test_ip4_documented_example() -> None:
    # s6's accessrules documentation lists these for 192.168.1.7, except that
    # it shows 192.168.0.0 for _28 and _27: the code keeps the third octet.
    keys = ip_keys("192.168.1.7")
    assert keys[:10] == [
        "ip4/192.168.1.7_32",
        "ip4/192.168.1.6_31",
        "ip4/192.168.1.4_30",
        "ip4/192.168.1.0_29",
        "ip4/192.168.1.0_28",
        "ip4/192.168.1.0_27",
        "ip4/192.168.1.0_26",
        "ip4/192.168.1.0_25",
        "ip4/192.168.1.0_24",
        "ip4/192.168.0.0_23",
    ]
    assert keys[-4:] == ["ip4/192.0.0.0_3", "ip4/192.0.0.0_2", "ip4/128.0.0.0_1", "ip4/0.0.0.0_0"]


def test_ip6_documented_example() -> None:
    # As in s6's documentation for 2a00:1450:4002:803::1006, except its tail
    # (2800::_10, 2000::_8...): 0x2a00 keeps its value down to _7.
    keys = ip_keys("2a00:1450:4002:803::1006")
    assert keys[:4] == [
        "ip6/2a00:1450:4002:803::1006_128",
        "ip6/2a00:1450:4002:803::1006_127",
        "ip6/2a00:1450:4002:803::1004_126",
        "ip6/2a00:1450:4002:803::1000_125",
    ]
    assert keys[16:18] == ["ip6/2a00:1450:4002:803::_112", "ip6/2a00:1450:4002:803::_111"]
    assert keys[-12:] == [
        "ip6/2a00::_11",
        "ip6/2a00::_10",
        "ip6/2a00::_9",
        "ip6/2a00::_8",
        "ip6/2a00::_7",
        "ip6/2800::_6",
        "ip6/2800::_5",
        "ip6/2000::_4",
        "ip6/2000::_3",
        "ip6/::_2",
        "ip6/::_1",
        "ip6/::_0",
    ]


@PROPERTY
@given(ip4s)
def test_ip4_keys_are_every_network_address(ip: str) -> None:
    keys = ip_keys(ip)
    assert len(keys) == 33
    for prefix, key in zip(range(32, -1, -1), keys, strict=True):
        network = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
        assert key == f"ip4/{network.network_address}_{prefix}"


@PROPERTY
@given(ip6s)
def test_ip6_keys_are_every_network_address_in_canonical_form(ip: str) -> None:
    keys = ip_keys(ip)
    assert len(keys) == 129
    for prefix, key in zip(range(128, -1, -1), keys, strict=True):
        network = ipaddress.IPv6Network(f"{ip}/{prefix}", strict=False).network_address
        text = key[len("ip6/") : key.rindex("_")]
        assert key.endswith(f"_{prefix}")
        assert ipaddress.IPv6Address(text) == network
        assert text == text.lower()
        if network.ipv4_mapped is None:
            # Python prints mapped addresses dotted from 3.13; skalibs never does.
            assert text == network.compressed


@PROPERTY
@given(ip6s)
def test_ip6_input_spelling_does_not_matter(ip: str) -> None:
    address = ipaddress.IPv6Address(ip)
    assert ip_keys(address.exploded.upper()) == ip_keys(ip)


@pytest.mark.parametrize(
    ("ip", "first"),
    [
        ("::1", "ip6/::1_128"),
        ("::", "ip6/::_128"),
        ("1:0:1:1:1:1:1:1", "ip6/1:0:1:1:1:1:1:1_128"),  # one zero group: no "::"
        ("1:0:0:1:0:0:1:1", "ip6/1::1:0:0:1:1_128"),  # first of equal runs
        ("1:0:0:1:0:0:0:1", "ip6/1:0:0:1::1_128"),  # longest run
        ("FE80:0000::0001", "ip6/fe80::1_128"),
        ("fe80::1%eth0", "ip6/fe80::1_128"),  # scope dropped
        ("1:2:3:4:5:6:7:8", "ip6/1:2:3:4:5:6:7:8_128"),
    ],
)
def test_ip6_canonical_form(ip: str, first: str) -> None:
    assert ip_keys(ip)[0] == first


def test_ip4_mapped_address_stays_ip6_in_hex() -> None:
    # Upstream never unmaps ::ffff:a.b.c.d and skalibs formats it in hex.
    keys = ip_keys("::ffff:10.0.0.1")
    assert keys[0] == "ip6/::ffff:a00:1_128"
    assert keys[32] == "ip6/::ffff:0:0_96"
    assert keys[-1] == "ip6/::_0"


def test_ip6_prefix_clears_low_bits_first() -> None:
    # s6 2.11.3.2 cleared bits inside each byte in the wrong order; the
    # documented order (and s6's later fix) clears the lowest bit first.
    assert ip_keys("::ff")[1:4] == ["ip6/::fe_127", "ip6/::fc_126", "ip6/::f8_125"]


@pytest.mark.parametrize("bad", ["", "1.2.3", "1.2.3.256", "01.2.3.4", "::g", "localhost"])
def test_invalid_address_is_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        ip_keys(bad)


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("foo.bar.com", ["foo.bar.com", "bar.com", "com", "@"]),
        ("foo.bar.com.", ["foo.bar.com", "bar.com", "com", "@"]),
        ("localhost.", ["localhost", "@"]),
        ("localhost", ["localhost", "@"]),
        (".", ["@"]),
        ("a..b", ["a..b", ".b", "b", "@"]),
        (".com", [".com", "com", "@"]),
        ("com..", ["com.", "@"]),
        ("Mixed.Case", ["Mixed.Case", "Case", "@"]),
    ],
)
def test_name_keys(name: str, keys: list[str]) -> None:
    assert name_keys(name) == [f"reversedns/{k}" for k in keys]


def test_empty_name_is_value_error() -> None:
    with pytest.raises(ValueError):
        name_keys("")


labels = st.text(st.characters(categories=["Ll", "Nd"]) | st.sampled_from("-_"), min_size=1)


@PROPERTY
@given(st.lists(labels, min_size=1, max_size=8), st.booleans())
def test_name_keys_are_suffixes_then_at(parts: list[str], final_dot: bool) -> None:
    name = ".".join(parts) + ("." if final_dot else "")
    keys = name_keys(name)
    assert keys == [f"reversedns/{'.'.join(parts[i:])}" for i in range(len(parts))] + [
        "reversedns/@"
    ]


zero_heavy_ip6 = st.lists(
    st.sampled_from([0, 0, 0, 1, 0xFFFF]) | st.integers(0, 0xFFFF), min_size=8, max_size=8
).map(lambda groups: str(ipaddress.IPv6Address(int("".join(f"{g:04x}" for g in groups), 16))))


@PROPERTY
@given(zero_heavy_ip6)
def test_zero_runs_compress_like_rfc5952(ip: str) -> None:
    address = ipaddress.IPv6Address(ip)
    text = ip_keys(ip)[0][len("ip6/") : -len("_128")]
    assert ipaddress.IPv6Address(text) == address
    if address.ipv4_mapped is None:
        assert text == address.compressed


def test_most_specific_first_lists_in_lookup_order() -> None:
    keys = [
        "uid/0", "reversedns/@", "ip4/10.1.2.3_8", "reversedns/example.com", "ip6/::_0",
        "ip4/0.0.0.0_0", "ip4/10.10.0.0_16", "ip6/2001:DB8::_32", "gid/0", "ip4/10.9.0.0_16",
        "reversedns/www.example.com", "ip4/10.0.0.0_8", "ip6/::1_128", "ip4/10.1.2.3_32",
    ]  # fmt: skip
    assert sorted(keys, key=most_specific_first) == [
        "ip4/10.1.2.3_32", "ip4/10.9.0.0_16", "ip4/10.10.0.0_16", "ip4/10.0.0.0_8",
        "ip4/0.0.0.0_0", "ip4/10.1.2.3_8",  # never looked up: host bits set
        "ip6/::1_128", "ip6/::_0", "ip6/2001:DB8::_32",  # never looked up: upper case
        "reversedns/www.example.com", "reversedns/example.com", "reversedns/@",
        "gid/0", "uid/0",
    ]  # fmt: skip


# The key of any network (as the server writes it) or of any name.
any_key = st.builds(
    lambda address, length: ip_keys(str(address))[-1 - min(length, address.max_prefixlen)],
    st.ip_addresses(),
    st.integers(0, 128),
) | st.lists(labels, min_size=1, max_size=3).map(lambda parts: "reversedns/" + ".".join(parts))


@PROPERTY
@given(
    st.ip_addresses().map(str), st.lists(labels, min_size=1, max_size=4).map(".".join), st.data()
)
def test_the_first_listed_key_a_client_matches_decides(
    ip: str, name: str, data: st.DataObject
) -> None:
    tried = ip_keys(ip) + name_keys(name)
    ruleset = data.draw(st.sets(st.sampled_from(tried), max_size=6))
    ruleset |= data.draw(st.sets(any_key, max_size=6))
    listed = sorted(ruleset, key=most_specific_first)
    first_listed = next((key for key in listed if key in tried), None)
    assert first_listed == next((key for key in tried if key in ruleset), None)
