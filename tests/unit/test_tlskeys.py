"""Tests for the keys of the TLS stage (s6tls.rules.tlskeys) and their place in listings."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from s6tls.rules import DirRules, Rule, most_specific_first, tlskeys, write_tree
from s6tls.rules.cdbfile import CdbRules, compile_dir, write_cdb
from s6tls.rules.edit import canonical_key
from s6tls.rules.fs import is_safe_key
from s6tls.rules.keys import ALL_FAMILIES, FAMILIES, TLS_FAMILIES
from s6tls.rules.tlskeys import NAME_MAX, alpn_keys, cert_keys, escape, is_escaped, sni_keys
from s6tls.sslvars import TlsInfo
from tests.support.der import (
    CN_OID,
    EC_KEY,
    SPKI,
    hand_cert,
    name,
    sans,
    tlv,
)

PROPERTY = settings(max_examples=300, deadline=None, database=None)

CN = NameOID.COMMON_NAME
NOW = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)


def unescape(component: str) -> bytes:
    """The bytes a component stands for: %XX is a byte, the rest is UTF-8."""
    out = bytearray()
    for piece in re.split(r"(%[0-9A-F]{2})", component):
        if piece.startswith("%") and len(piece) == 3:
            out.append(int(piece[1:], 16))
        else:
            assert "%" not in piece, component
            out += piece.encode()
    return bytes(out)


def peer_hash(der: bytes) -> str:
    """SSL_PEER_CERT_HASH, as prog sees it."""
    return TlsInfo("TLSv1.3", "x", peer_der=der).variables()["SSL_PEER_CERT_HASH"]


def spki_hash() -> str:
    """The pin of the test key: the same digest, of its SubjectPublicKeyInfo."""
    return peer_hash(SPKI)


# --- escaping ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "component"),
    [
        ("example.org", "example.org"),
        ("spiffe://example.org/ns/x", "spiffe:%2F%2Fexample.org%2Fns%2Fx"),
        ("100%", "100%25"),
        ("%2F", "%252F"),
        (".hidden", "%2Ehidden"),
        (".", "%2E"),
        ("..", "%2E."),
        ("a.", "a."),
        ("../ip4/0.0.0.0_0", "%2E.%2Fip4%2F0.0.0.0_0"),
        ("a b", "a b"),
        ("tab\there", "tab%09here"),
        ("nul\0", "nul%00"),
        ("del\x7f", "del%7F"),
        ("line\nbreak", "line%0Abreak"),
        ("café", "café"),
        ("日本", "日本"),
        ("nb\u00a0sp", "nb%C2%A0sp"),  # not printable (Zs)
        ("zw\u200bsp", "zw%E2%80%8Bsp"),  # format character
        ("bidi\u202e", "bidi%E2%80%AE"),
        ("un\U000e0001", "un%F3%A0%80%81"),
        (b"caf\xe9", "caf%E9"),  # Latin-1 bytes: not UTF-8
        (b"\xc3", "%C3"),  # cut UTF-8 sequence
        (b"\xed\xa0\x80", "%ED%A0%80"),  # an encoded surrogate is not UTF-8
        (b"\xc0\xaf", "%C0%AF"),  # overlong "/"
        ("\udcff", "%FF"),  # surrogateescape
        ("\ud800", "%ED%A0%80"),  # surrogatepass
        ("@", "%40"),
        ("none", "%6Eone"),
        ("None", "None"),
        ("@@", "@@"),
        ("user@example.org", "user@example.org"),
        ("", ""),
    ],
)
def test_escape(value: str | bytes, component: str) -> None:
    assert escape(value) == component


def test_escape_str_is_its_utf8() -> None:
    assert escape("café/x") == escape("café/x".encode())


@PROPERTY
@given(st.binary(max_size=64) | st.text(max_size=32).map(str.encode))
def test_escape_reads_back(value: bytes) -> None:
    component = escape(value)
    assert unescape(component) == value
    if value:
        assert component not in ("", ".", "..", "@", "none")
        assert "/" not in component and "\0" not in component
        assert component.isprintable()
        assert not component.startswith(".")


@PROPERTY
@given(st.binary(max_size=16), st.binary(max_size=16))
def test_escape_is_injective(a: bytes, b: bytes) -> None:
    if a != b:
        assert escape(a) != escape(b)


# --- SNI ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        (None, ["none"]),
        ("example.org", ["example.org", "org", "@"]),
        ("a.b.Example.ORG.", ["a.b.example.org", "b.example.org", "example.org", "org", "@"]),
        ("localhost", ["localhost", "@"]),
        (b"WWW.example.org", ["www.example.org", "example.org", "org", "@"]),
        ("ÉCOLE.fr", ["École.fr", "fr", "@"]),  # ASCII letters only
        ("a..b", ["a..b", "%2Eb", "b", "@"]),
        (".", ["@"]),
        ("", ["@"]),
        ("none", ["%6Eone", "@"]),
        ("x.NONE", ["x.none", "%6Eone", "@"]),
        ("@", ["%40", "@"]),
        ("a/b.c", ["a%2Fb.c", "c", "@"]),
        ("x\0.y", ["x%00.y", "y", "@"]),
        ("*.example.org", ["*.example.org", "example.org", "org", "@"]),
    ],
)
def test_sni_keys(name: str | bytes | None, keys: list[str]) -> None:
    assert sni_keys(name) == [f"sni/{key}" for key in keys]


def test_sni_name_that_is_too_long_keeps_its_parents() -> None:
    label = "a" * 63
    name = ".".join([label] * 3) + "." + "b" * 59 + ".org"  # 255 bytes
    assert len(name) == 255
    assert sni_keys(name)[0] == f"sni/{name}"
    longer = "c." + name
    assert sni_keys(longer)[:2] == [f"sni/{name}", f"sni/{name[64:]}"]
    assert sni_keys("%" * 100)[0] == "sni/@"  # 300 bytes escaped


# --- ALPN --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "keys"),
    [
        (None, ["none"]),
        ("h2", ["h2", "@"]),
        (b"http/1.1", ["http%2F1.1", "@"]),
        ("100%", ["100%25", "@"]),
        (b"\x00\xff", ["%00%FF", "@"]),
        (".", ["%2E", "@"]),
        ("none", ["%6Eone", "@"]),
        ("@", ["%40", "@"]),
        (b"", ["@"]),
        ("H2", ["H2", "@"]),  # protocol ids are bytes: no case folding
    ],
)
def test_alpn_keys(protocol: str | bytes | None, keys: list[str]) -> None:
    assert alpn_keys(protocol) == [f"alpn/{key}" for key in keys]


@pytest.mark.parametrize(
    ("value", "fits"),
    [
        (b"a" * 255, True),
        (b"a" * 256, False),
        (b"\0" * 85, True),  # %00 x 85 = 255 bytes
        (b"\0" * 86, False),
        ("é" * 127, True),  # 254 bytes
        ("é" * 128, False),  # 256 bytes
    ],
)
def test_component_over_name_max_is_left_out(value: str | bytes, fits: bool) -> None:
    keys = alpn_keys(value)
    assert keys[-1] == "alpn/@"
    assert len(keys) == (2 if fits else 1)
    if fits:
        assert len(keys[0].encode()) == len("alpn/") + len(escape(value).encode()) <= 5 + NAME_MAX


# --- client certificate ------------------------------------------------------


def real_cert(sans_: list[x509.GeneralName], subject: x509.Name) -> bytes:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(CN, "CA")]))
        .public_key(EC_KEY.public_key())
        .serial_number(42)
        .not_valid_before(NOW)
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans_), critical=False)
        .sign(EC_KEY, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


def test_cert_keys_in_order() -> None:
    der = real_cert(
        [
            x509.UniformResourceIdentifier("spiffe://example.org/ns/prod/sa/web"),
            x509.DNSName("Client.Example.org"),
            x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
            x509.RFC822Name("Ops@Example.org"),
            x509.DNSName("client.example.org"),  # the same once lower-cased
        ],
        x509.Name(
            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "O"), x509.NameAttribute(CN, "web")]
        ),
    )
    assert cert_keys(der, asked=True) == [
        f"certhash/{peer_hash(der)}",
        f"spki/{spki_hash()}",
        "san/URI:spiffe:%2F%2Fexample.org%2Fns%2Fprod%2Fsa%2Fweb",
        "san/DNS:client.example.org",
        "san/email:Ops@Example.org",
        "cn/web",
        "cert/@",
    ]


def test_cert_keys_not_asked_or_absent() -> None:
    der = hand_cert()
    assert cert_keys(der, asked=False) == []
    assert cert_keys(None, asked=False) == []
    assert cert_keys(None, asked=True) == ["cert/none"]


def test_malformed_certificate_gives_its_hash_and_cert_at() -> None:
    der = hand_cert(cert_tail=b"\x05\x00")
    assert cert_keys(der, asked=True) == [f"certhash/{peer_hash(der)}", "cert/@"]
    assert cert_keys(b"", asked=True) == [f"certhash/{peer_hash(b'')}", "cert/@"]


def test_hostile_certificate_values_stay_in_their_family() -> None:
    der = hand_cert(
        subject=name((CN_OID, 0x0C, b"../../etc"), (CN_OID, 0x0C, b"."), (CN_OID, 0x0C, b"")),
        extensions=[
            sans(
                tlv(0x86, b"../ip4/0.0.0.0_0"),
                tlv(0x82, b"/"),
                tlv(0x81, b"a\xff\0b"),
                tlv(0x82, b""),
                tlv(0x86, b"x" * 300),
            )
        ],
    )
    keys = cert_keys(der, asked=True)
    assert keys[2:] == [
        "san/URI:%2E.%2Fip4%2F0.0.0.0_0",
        "san/DNS:%2F",
        "san/email:a%FF%00b",
        "cn/%2E.%2F..%2Fetc",
        "cn/%2E",
        "cert/@",
    ]


def test_reissued_certificate_keeps_its_spki_key() -> None:
    one = hand_cert(subject=name((CN_OID, 0x0C, b"one")))
    two = hand_cert(subject=name((CN_OID, 0x0C, b"two")))
    assert cert_keys(one, asked=True)[0] != cert_keys(two, asked=True)[0]
    assert cert_keys(one, asked=True)[1] == cert_keys(two, asked=True)[1] == f"spki/{spki_hash()}"


# --- the namespace -----------------------------------------------------------

values = st.binary(max_size=300) | st.text(max_size=100).map(str.encode)
DNS_LIKE = st.text(st.sampled_from("aZ0-.%/@\0é"), max_size=30)


def check_namespace(keys: list[str], expected: str | None = None) -> None:
    for key in keys:
        family, slash, component = key.partition("/")
        assert slash and family in TLS_FAMILIES
        assert family == (expected or family)
        assert key.count("/") == 1
        assert component not in ("", ".", "..")
        assert "\0" not in key
        assert len(component.encode()) <= NAME_MAX
        assert is_safe_key(key)
        assert os.path.normpath(f"/rules/{key}") == f"/rules/{key}"


@PROPERTY
@given(values | DNS_LIKE.map(str.encode))
def test_sni_and_alpn_keys_stay_in_their_family(value: bytes) -> None:
    sni = sni_keys(value)
    alpn = alpn_keys(value)
    check_namespace(sni, "sni")
    check_namespace(alpn, "alpn")
    assert sni[-1] == "sni/@" and alpn[-1] == "alpn/@"


@PROPERTY
@given(st.lists(st.tuples(st.sampled_from([0x81, 0x82, 0x86]), values), max_size=4), values)
def test_cert_keys_stay_in_their_family(names: list[tuple[int, bytes]], cn: bytes) -> None:
    der = hand_cert(
        subject=name((CN_OID, 0x0C, cn)),
        extensions=[sans(*(tlv(tag, value) for tag, value in names))],
    )
    keys = cert_keys(der, asked=True)
    check_namespace(keys)
    assert keys[0].startswith("certhash/SHA256:") and keys[1].startswith("spki/SHA256:")
    assert keys[-1] == "cert/@"
    for key in keys[2:-1]:
        family, _, component = key.partition("/")
        kind, _, rest = component.partition(":")
        if family == "san":
            tag = {"email": 0x81, "DNS": 0x82, "URI": 0x86}[kind]
            read = [(t, value.lower() if t == 0x82 else value) for t, value in names]
            assert (tag, unescape(rest)) in read
        else:
            assert family == "cn" and unescape(component) == cn


# --- reading a component back, and the keys s6-tcprules add writes ------------


@pytest.mark.parametrize(
    ("component", "value"),
    [
        ("example.org", b"example.org"),
        ("spiffe:%2F%2Fexample.org%2Fx", b"spiffe://example.org/x"),
        ("100%25", b"100%"),
        ("%2E.", b".."),
        ("caf%E9", b"caf\xe9"),
        ("café", "café".encode()),
        ("%6Eone", b"none"),
        ("%2f", b"/"),  # lower-case hex reads too (escape never writes it)
        ("", b""),
    ],
)
def test_unescape(component: str, value: bytes) -> None:
    assert tlskeys.unescape(component) == value


@pytest.mark.parametrize("component", ["%", "100%", "%4", "%zz", "a%-1b", "%%41"])
def test_unescape_refuses_a_percent_without_two_hex_digits(component: str) -> None:
    with pytest.raises(ValueError, match="not followed by two hex digits"):
        tlskeys.unescape(component)


@PROPERTY
@given(st.binary(max_size=64) | st.text(max_size=32).map(str.encode))
def test_unescape_reads_what_escape_writes(value: bytes) -> None:
    component = escape(value)
    assert tlskeys.unescape(component) == value == unescape(component)
    assert is_escaped(component)


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("spiffe:%2F%2Fexample.org", True),
        ("spiffe://example.org", False),  # a / is never escaped form
        ("a%2fb", False),  # escape writes upper-case hex
        ("100%", False),
        ("%6Eone", True),
        ("none", False),  # "none" itself is a word, its value is %6Eone
        ("%2E.", True),
        ("..", False),
        ("tab\there", False),
        ("café", True),
    ],
)
def test_is_escaped(value: str, escaped: bool) -> None:
    assert is_escaped(value) is escaped


HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("sni/Mail.Example.ORG.", "sni/mail.example.org"),
        ("sni/@", "sni/@"),
        ("sni/none", "sni/none"),
        ("sni/%6Eone", "sni/%6Eone"),  # the name "none"
        ("sni/%2Eb", "sni/%2Eb"),
        ("alpn/h2", "alpn/h2"),
        ("alpn/http/1.1", "alpn/http%2F1.1"),
        ("alpn/http%2F1.1", "alpn/http%2F1.1"),
        ("alpn/H2", "alpn/H2"),  # protocols keep their case
        ("alpn/@", "alpn/@"),
        ("alpn/none", "alpn/none"),
        (f"certhash/SHA256:{HEX.upper()}", f"certhash/SHA256:{HEX}"),
        (f"certhash/sha256:{HEX}", f"certhash/SHA256:{HEX}"),
        (f"spki/SHA256:{HEX}", f"spki/SHA256:{HEX}"),
        (
            "san/URI:spiffe://example.org/ns/prod/sa/web",
            "san/URI:spiffe:%2F%2Fexample.org%2Fns%2Fprod%2Fsa%2Fweb",
        ),
        (
            "san/URI:spiffe:%2F%2Fexample.org%2Fns%2Fprod%2Fsa%2Fweb",
            "san/URI:spiffe:%2F%2Fexample.org%2Fns%2Fprod%2Fsa%2Fweb",
        ),
        ("san/URI:https://x/a%2fb", "san/URI:https:%2F%2Fx%2Fa%252fb"),
        ("san/DNS:Device1.Example.ORG", "san/DNS:device1.example.org"),
        ("san/dns:x.example", "san/DNS:x.example"),
        ("san/email:Carol@Example.org", "san/email:Carol@Example.org"),
        ("san/EMAIL:a@b", "san/email:a@b"),
        ("cn/John Doe", "cn/John Doe"),
        ("cn/none", "cn/%6Eone"),
        ("cn/@", "cn/%40"),
        ("cn/../ip4/0.0.0.0_0", "cn/%2E.%2Fip4%2F0.0.0.0_0"),
        ("cn/%2E.%2Fip4%2F0.0.0.0_0", "cn/%2E.%2Fip4%2F0.0.0.0_0"),
        ("cn/100%", "cn/100%25"),
        ("cn/tab\there", "cn/tab%09here"),
        ("cn/caf\udce9", "cn/caf%E9"),  # a command-line byte that is not UTF-8
        ("cert/@", "cert/@"),
        ("cert/none", "cert/none"),
    ],
)
def test_canonical_key_of_the_tls_stage(text: str, key: str) -> None:
    assert canonical_key(text) == key
    assert canonical_key(key) == key


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("certhash/SHA256:abc", "64 hex digits"),
        (f"certhash/SHA256:{HEX[:-1]}g", "64 hex digits"),
        (f"certhash/{HEX}", "64 hex digits"),
        (f"spki/SHA1:{HEX}", "64 hex digits"),
        ("san/IP:192.0.2.1", "san/DNS:NAME, san/URI:URI or san/email:ADDRESS"),
        ("san/example.org", "san/DNS:NAME"),
        ("cert/any", "cert/@ or cert/none"),
        ("cert/", "cert/@ or cert/none"),
        ("sni/", "the value is empty"),
        ("sni/.", "the value is empty"),
        ("cn/", "the value is empty"),
        ("san/URI:", "the value is empty"),
        ("sni/" + "a" * 256, "over 255 bytes once escaped"),
        ("cn/" + "%41" * 255, "over 255 bytes once escaped"),  # 255 bytes as written, 765 escaped
        ("uid/0", "invalid key 'uid/0'"),
    ],
)
def test_canonical_key_refuses_what_the_server_never_looks_up(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        canonical_key(text)


@PROPERTY
@given(st.lists(st.tuples(st.sampled_from([0x81, 0x82, 0x86]), values), max_size=4), values)
def test_every_key_of_a_certificate_is_one_add_writes(
    names: list[tuple[int, bytes]], cn: bytes
) -> None:
    der = hand_cert(
        subject=name((CN_OID, 0x0C, cn)),
        extensions=[sans(*(tlv(tag, value) for tag, value in names))],
    )
    for key in cert_keys(der, asked=True):
        assert canonical_key(key) == key


@PROPERTY
@given(values)
def test_every_alpn_key_is_one_add_writes(value: bytes) -> None:
    for key in alpn_keys(value):
        assert canonical_key(key) == key


@PROPERTY
@given(DNS_LIKE)
def test_an_sni_key_is_one_add_writes(name: str) -> None:
    for key in sni_keys(name):
        if not key.endswith("."):  # "a.." looks up sni/a., which add writes sni/a
            assert canonical_key(key) == key


# --- listings ----------------------------------------------------------------


def test_families() -> None:
    assert FAMILIES == ("ip4", "ip6", "reversedns")
    assert TLS_FAMILIES == ("sni", "alpn", "certhash", "spki", "san", "cn", "cert")
    assert ALL_FAMILIES == FAMILIES + TLS_FAMILIES


def test_most_specific_first_lists_tls_families_as_tried() -> None:
    keys = [
        "cert/none", "cn/web", "alpn/@", "sni/@", "ip4/0.0.0.0_0", "san/DNS:a.example",
        "sni/none", "certhash/SHA256:00", "alpn/none", "sni/org", "cert/@", "alpn/h2",
        "spki/SHA256:11", "sni/a.example.org", "reversedns/@", "sni/example.org", "uid/0",
        "san/URI:spiffe:%2F%2Fx", "sni/%2Eb", "cert/other",
    ]  # fmt: skip
    assert sorted(keys, key=most_specific_first) == [
        "ip4/0.0.0.0_0", "reversedns/@",
        "sni/a.example.org", "sni/%2Eb", "sni/example.org", "sni/org", "sni/@", "sni/none",
        "alpn/h2", "alpn/@", "alpn/none",
        "certhash/SHA256:00", "spki/SHA256:11",
        "san/DNS:a.example", "san/URI:spiffe:%2F%2Fx",
        "cn/web",
        "cert/@", "cert/none", "cert/other",
        "uid/0",
    ]  # fmt: skip


@PROPERTY
@given(DNS_LIKE, st.lists(DNS_LIKE, max_size=6), st.data())
def test_the_first_listed_sni_key_a_client_matches_decides(
    sent: str, others: list[str], data: st.DataObject
) -> None:
    tried = sni_keys(sent)
    ruleset = data.draw(st.sets(st.sampled_from([*tried, "sni/none"]), max_size=4))
    for other in others:
        ruleset |= set(sni_keys(other)[:1])
    listed = sorted(ruleset, key=most_specific_first)
    first_listed = next((key for key in listed if key in tried), None)
    assert first_listed == next((key for key in tried if key in ruleset), None)


# --- the same in -i and -x ---------------------------------------------------


def test_dir_and_cdb_find_the_same_tls_rules(tmp_path: Path) -> None:
    der = hand_cert(
        subject=name((CN_OID, 0x0C, b"Zo\xc3\xab %")),
        extensions=[sans(tlv(0x86, b"spiffe://example.org/ns/x"), tlv(0x82, b"..x"))],
    )
    keys = [*sni_keys("a.b.example.org"), *alpn_keys(b"http/1.1"), *cert_keys(der, True)]
    assert "san/URI:spiffe:%2F%2Fexample.org%2Fns%2Fx" in keys
    rules = {key: Rule(allow=True, env=(("KEY", key),)) for key in keys}
    write_tree(str(tmp_path / "rules"), rules)
    assert (tmp_path / "rules/san/URI:spiffe:%2F%2Fexample.org%2Fns%2Fx/allow").is_file()
    assert (tmp_path / "rules/cn/Zoë %25/allow").is_file()
    assert sorted(os.listdir(tmp_path / "rules")) == sorted(TLS_FAMILIES)
    write_cdb(str(tmp_path / "rules.cdb"), compile_dir(str(tmp_path / "rules")))
    directory, cdb = DirRules(str(tmp_path / "rules")), CdbRules(str(tmp_path / "rules.cdb"))
    try:
        for key in keys:
            assert directory.get(key) == cdb.get(key) == rules[key]
        for lookup in (sni_keys("x.example.org"), alpn_keys("h2"), cert_keys(None, True)):
            assert directory.find(lookup) == cdb.find(lookup)
        assert directory.find(sni_keys("x.example.org")) == (
            "sni/example.org",
            rules["sni/example.org"],
        )
    finally:
        cdb.close()
