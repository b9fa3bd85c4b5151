"""Tests for the DER reader of client certificates (s6tls.certinfo)."""

from __future__ import annotations

import calendar
import datetime
import hashlib
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from s6tls.certinfo import (
    MAX_CERTIFICATE,
    MAX_SERIAL,
    CertFacts,
    CertificateError,
    crl_next_update,
    read_certificate,
    subject_of,
)
from s6tls.sslvars import cert_hash
from tests.support.der import (
    ALGORITHM,
    CN_OID,
    EC_KEY,
    ISSUER,
    SAN_OID,
    SPKI,
    VALIDITY,
    Key,
    extension,
    hand_cert,
    integer,
    name,
    oid,
    sans,
    seq,
    spki_of,
    tlv,
)

FUZZ = settings(max_examples=500, deadline=None, database=None)

NOW = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
CN = NameOID.COMMON_NAME


def make_cert(
    *,
    key: Key = EC_KEY,
    subject: x509.Name | None = None,
    issuer: x509.Name | None = None,
    sans: list[x509.GeneralName] | None = None,
    serial: int = 1234,
) -> bytes:
    """A real certificate (DER), signed by its own key."""
    if subject is None:
        subject = x509.Name([x509.NameAttribute(CN, "client")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW)
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.DER)


def test_the_hand_writer_writes_what_cryptography_reads() -> None:
    der = hand_cert(extensions=[sans(tlv(0x82, b"example.org"))])
    cert = x509.load_der_x509_certificate(der)
    assert cert.serial_number == 7
    assert cert.public_key() == EC_KEY.public_key()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["example.org"]


# --- real certificates -------------------------------------------------------


def test_reads_a_real_certificate() -> None:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
            x509.NameAttribute(CN, "client.example.org"),
        ]
    )
    issuer = x509.Name([x509.NameAttribute(CN, "Example CA")])
    der = make_cert(
        subject=subject,
        issuer=issuer,
        serial=0x1234_5678_9ABC_DEF0_1234_5678_9ABC_DEF0_1234_5678,
        sans=[
            x509.DNSName("client.example.org"),
            x509.UniformResourceIdentifier("spiffe://example.org/ns/prod/sa/web"),
            x509.RFC822Name("ops@example.org"),
            x509.DNSName("*.example.org"),
        ],
    )
    facts = read_certificate(der)
    assert facts == CertFacts(
        serial=0x1234_5678_9ABC_DEF0_1234_5678_9ABC_DEF0_1234_5678,
        spki=SPKI,
        issuer=issuer.public_bytes(),
        subject_alt_names=(
            ("DNS", b"client.example.org"),
            ("URI", b"spiffe://example.org/ns/prod/sa/web"),
            ("email", b"ops@example.org"),
            ("DNS", b"*.example.org"),
        ),
        subject=(("C", b"FR"), ("O", b"Example"), ("CN", b"client.example.org")),
    )
    assert facts.common_names == (b"client.example.org",)
    assert subject_of(der) == (("C", "FR"), ("O", "Example"), ("CN", "client.example.org"))
    assert subject_of(der[:-1]) is None
    assert facts.spki_hash == "SHA256:" + hashlib.sha256(SPKI).hexdigest()


@pytest.mark.parametrize(
    "key",
    [
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        ec.generate_private_key(ec.SECP384R1()),
        ed25519.Ed25519PrivateKey.generate(),
    ],
    ids=["rsa", "ec", "ed25519"],
)
def test_spki_is_the_public_key_as_openssl_writes_it(key: Key) -> None:
    facts = read_certificate(make_cert(key=key))
    assert facts.spki == spki_of(key)


def test_reissued_certificate_keeps_its_spki_hash() -> None:
    first = make_cert(serial=1, sans=[x509.DNSName("a.example.org")])
    again = make_cert(
        serial=2,
        subject=x509.Name([x509.NameAttribute(CN, "renamed")]),
        issuer=x509.Name([x509.NameAttribute(CN, "another CA")]),
    )
    assert cert_hash(first) != cert_hash(again)
    assert read_certificate(first).spki_hash == read_certificate(again).spki_hash
    other = make_cert(key=ec.generate_private_key(ec.SECP256R1()), serial=1)
    assert read_certificate(other).spki_hash != read_certificate(first).spki_hash


def test_other_general_names_are_skipped() -> None:
    der = make_cert(
        sans=[
            x509.IPAddress(ipaddress.ip_address("192.0.2.1")),
            x509.DirectoryName(x509.Name([x509.NameAttribute(CN, "dir")])),
            x509.DNSName("one.example"),
            x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"), b"\x0c\x01x"),
            x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4")),
            x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
            x509.RFC822Name("a@b.example"),
        ]
    )
    assert read_certificate(der).subject_alt_names == (
        ("DNS", b"one.example"),
        ("email", b"a@b.example"),
    )


def test_no_san_no_cn() -> None:
    facts = read_certificate(make_cert(subject=x509.Name([])))
    assert (facts.subject_alt_names, facts.common_names) == ((), ())


@pytest.mark.parametrize(
    ("kind", "value", "read"),
    [
        (_ASN1Type.UTF8String, "Zoë Ω", "Zoë Ω".encode()),
        (_ASN1Type.PrintableString, "Plain Name", b"Plain Name"),
        (_ASN1Type.IA5String, "ia5@name", b"ia5@name"),
        (_ASN1Type.T61String, "t61", b"t61"),
        (_ASN1Type.VisibleString, "visible", b"visible"),
        (_ASN1Type.NumericString, "0123", b"0123"),
        (_ASN1Type.BMPString, "Zoë Ω", "Zoë Ω".encode()),
        (_ASN1Type.UniversalString, "Zoë Ω 😀", "Zoë Ω 😀".encode()),
    ],
)
def test_common_name_string_types(kind: _ASN1Type, value: str, read: bytes) -> None:
    subject = x509.Name([x509.NameAttribute(CN, value, _type=kind)])
    assert read_certificate(make_cert(subject=subject)).common_names == (read,)


def test_every_common_name_in_order() -> None:
    subject = x509.Name(
        [
            x509.RelativeDistinguishedName([x509.NameAttribute(CN, "first")]),
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "O"),
                    x509.NameAttribute(CN, "second"),
                ]
            ),
            x509.RelativeDistinguishedName([x509.NameAttribute(CN, "third")]),
        ]
    )
    facts = read_certificate(make_cert(subject=subject))
    assert facts.common_names == (b"first", b"second", b"third")


def test_issuer_is_its_der() -> None:
    issuer = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CA Org")])
    assert read_certificate(make_cert(issuer=issuer)).issuer == issuer.public_bytes()


@pytest.mark.parametrize("serial", [1, 127, 128, 255, 256, (1 << 159) - 1])
def test_serial_numbers(serial: int) -> None:
    assert read_certificate(make_cert(serial=serial)).serial == serial


# --- what cryptography would not write ----------------------------------------


def test_san_bytes_that_are_not_utf8_are_kept() -> None:
    # Python's getpeercert() raises UnicodeDecodeError on such a certificate.
    uri = b"spiffe://example.org/\xff\xfe\x00/../ip4/0.0.0.0_0"
    der = hand_cert(extensions=[sans(tlv(0x86, uri), tlv(0x82, b"caf\xe9"), tlv(0x81, b""))])
    facts = read_certificate(der)
    assert facts.subject_alt_names == (("URI", uri), ("DNS", b"caf\xe9"), ("email", b""))


def test_san_patched_into_a_real_certificate() -> None:
    der = make_cert(sans=[x509.UniformResourceIdentifier("spiffe://example.org/XXXX")])
    patched = der.replace(b"XXXX", b"\x80\xc0/\x00")
    assert read_certificate(patched).subject_alt_names == (
        ("URI", b"spiffe://example.org/\x80\xc0/\x00"),
    )


@pytest.mark.skipif(not hasattr(ssl._ssl, "_test_decode_cert"), reason="no ssl decoder to probe")  # type: ignore[attr-defined]
def test_getpeercert_fails_where_this_reader_does_not(tmp_path: Path) -> None:
    # The reason for this module: the decoder behind getpeercert() raises.
    der = make_cert(sans=[x509.UniformResourceIdentifier("spiffe://example.org/XXXX")])
    der = der.replace(b"XXXX", b"\xff\xfe\xfd\xfc")
    path = tmp_path / "cert.pem"
    path.write_bytes(x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM))
    with pytest.raises(UnicodeDecodeError):
        ssl._ssl._test_decode_cert(str(path))  # type: ignore[attr-defined]
    assert read_certificate(der).subject_alt_names == (
        ("URI", b"spiffe://example.org/\xff\xfe\xfd\xfc"),
    )


@pytest.mark.parametrize(
    ("tag", "value", "read"),
    [
        (0x1E, b"\x00Z\x00o", b"Zo"),  # BMPString
        (0x1E, b"\x00Z\x00", b"\x00Z\x00"),  # odd length: raw
        (0x1E, b"\xd8\x00\x00a", b"\xd8\x00\x00a"),  # lone surrogate: raw
        (0x1C, b"\x00\x00\x00Z", b"Z"),  # UniversalString
        (0x1C, b"\x00\x11\x00\x00", b"\x00\x11\x00\x00"),  # past U+10FFFF: raw
        (0x1C, b"\x00\x00Z", b"\x00\x00Z"),  # not a multiple of 4: raw
        (0x0C, b"\xff\xfe", b"\xff\xfe"),  # UTF8String that is not UTF-8
        (0x14, b"caf\xe9", b"caf\xe9"),  # T61String: its bytes
    ],
)
def test_common_name_decoding(tag: int, value: bytes, read: bytes) -> None:
    facts = read_certificate(hand_cert(subject=name((CN_OID, tag, value))))
    assert facts.common_names == (read,)


def test_common_name_that_is_not_a_string_is_skipped() -> None:
    subject = name((CN_OID, 0x02, b"\x01"), (CN_OID, 0x2C, tlv(0x0C, b"x")), (CN_OID, 0x13, b"ok"))
    assert read_certificate(hand_cert(subject=subject)).common_names == (b"ok",)


def test_version_1_certificate() -> None:
    facts = read_certificate(hand_cert(version=None))
    assert (facts.serial, facts.subject_alt_names, facts.common_names) == (7, (), (b"client",))


def test_unique_ids_and_critical_flag() -> None:
    der = hand_cert(extensions=[extension(SAN_OID, seq(tlv(0x82, b"a.example")), critical=True)])
    assert read_certificate(der).subject_alt_names == (("DNS", b"a.example"),)
    # issuerUniqueID and subjectUniqueID come between the key and the extensions.
    tbs_fields = [tlv(0xA0, integer(2)), integer(7), ALGORITHM, ISSUER, VALIDITY]
    tbs_fields += [name(), SPKI, tlv(0x81, b"\x00\x01"), tlv(0x82, b"\x00\x02")]
    tbs_fields.append(tlv(0xA3, seq(sans(tlv(0x82, b"b.example")))))
    der = seq(seq(*tbs_fields), ALGORITHM, tlv(0x03, b"\x00"))
    assert read_certificate(der).subject_alt_names == (("DNS", b"b.example"),)


def test_empty_sequences_are_read() -> None:
    der = hand_cert(subject=seq(tlv(0x31, b"")), extensions=[extension(SAN_OID, seq())])
    facts = read_certificate(der)
    assert (facts.subject_alt_names, facts.common_names) == ((), ())
    assert read_certificate(hand_cert(extensions=[])).subject_alt_names == ()


def test_negative_serial() -> None:
    # RFC 5280 forbids it; some old CAs wrote one all the same.
    assert read_certificate(hand_cert(serial=integer(-5))).serial == -5


def padded(size: int) -> bytes:
    """A certificate with an extension of ``size`` bytes, to reach a given length."""
    return hand_cert(extensions=[extension("1.2.3.4", b"\0" * size)])


def test_largest_certificate() -> None:
    guess = MAX_CERTIFICATE - len(padded(0))
    size = next(n for n in range(guess - 64, guess) if len(padded(n)) == MAX_CERTIFICATE)
    assert read_certificate(padded(size)).serial == 7
    assert len(padded(size + 1)) > MAX_CERTIFICATE
    with pytest.raises(CertificateError, match="over 65536 bytes"):
        read_certificate(padded(size + 1))


# --- malformed certificates --------------------------------------------------

GOOD = hand_cert(extensions=[sans(tlv(0x82, b"x.example"))])


def malformed() -> list[tuple[str, bytes, str]]:
    long_serial = integer(1 << (8 * MAX_SERIAL - 1))
    return [
        ("empty", b"", "truncated certificate"),
        ("one byte", b"\x30", "truncated certificate"),
        ("not a sequence", b"\x31\x00", "bad certificate: tag 0x31"),
        ("indefinite length", b"\x30\x80" + GOOD[2:] + b"\0\0", "bad certificate: length"),
        ("4-byte length", b"\x30\x84\x00\x00\x00\x05", "bad certificate: length"),
        ("long form for a short length", b"\x30\x81\x05" + b"\0" * 5, "shortest form"),
        ("leading zero length", b"\x30\x82\x00\x90" + b"\0" * 0x90, "shortest form"),
        ("length past the end", GOOD[:-1], "truncated certificate"),
        ("trailing bytes", GOOD + b"\0", "end of DER"),
        ("inside trailing bytes", hand_cert(cert_tail=b"\x05\x00"), "end of certificate"),
        ("tbs trailing bytes", hand_cert(tbs_tail=b"\x05\x00"), "end of tbsCertificate"),
        ("no signature", seq(seq(integer(1))), "truncated signatureAlgorithm"),
        ("empty serial", hand_cert(serial=tlv(0x02, b"")), "empty INTEGER"),
        ("padded serial", hand_cert(serial=tlv(0x02, b"\x00\x01")), "shortest form"),
        ("padded negative", hand_cert(serial=tlv(0x02, b"\xff\x80")), "shortest form"),
        ("long serial", hand_cert(serial=long_serial), f"over {MAX_SERIAL} bytes"),
        ("version not integer", hand_cert(version=tlv(0xA0, tlv(0x04, b""))), "bad version"),
        ("two versions", hand_cert(version=tlv(0xA0, integer(2) + integer(2))), "of version"),
        ("serial as octets", hand_cert(serial=tlv(0x04, b"\x01")), "bad serialNumber"),
        ("high tag", hand_cert(subject=name((CN_OID, 0x1F, b"\x20x"))), "high tag"),
        (
            "two SAN extensions",
            hand_cert(extensions=[sans(tlv(0x82, b"a")), sans(tlv(0x82, b"b"))]),
            "two subjectAltName",
        ),
        (
            "SAN not a sequence",
            hand_cert(extensions=[extension(SAN_OID, tlv(0x31, b""))]),
            "bad subjectAltName",
        ),
        (
            "SAN trailing bytes",
            hand_cert(extensions=[extension(SAN_OID, seq() + b"\x05\x00")]),
            "end of subjectAltName",
        ),
        (
            "constructed dNSName",
            hand_cert(extensions=[sans(tlv(0xA2, tlv(0x16, b"x")))]),
            "bad GeneralName tag 0xa2",
        ),
        ("GeneralName [9]", hand_cert(extensions=[sans(tlv(0x89, b"x"))]), "tag 0x89"),
        (
            "extension without value",
            hand_cert(extensions=[seq(oid(SAN_OID))]),
            "truncated extension value",
        ),
        (
            "extension trailing",
            hand_cert(extensions=[seq(oid(SAN_OID), tlv(0x04, seq()), tlv(0x05, b""))]),
            "end of extension",
        ),
        (
            "critical not a boolean",
            hand_cert(extensions=[seq(oid(SAN_OID), tlv(0x02, b"\1"), tlv(0x04, seq()))]),
            "bad extension value",
        ),
        ("RDN not a set", hand_cert(subject=seq(seq())), "bad RelativeDistinguishedName"),
        (
            "attribute without value",
            hand_cert(subject=seq(tlv(0x31, seq(oid(CN_OID))))),
            "truncated attribute value",
        ),
        ("no key", seq(seq(integer(1), ALGORITHM, ISSUER, VALIDITY, name())), "truncated"),
        ("too big", b"\x30\x83\x01\x00\x00" + b"\0" * 0x10000, "over 65536 bytes"),
    ]


CASES = malformed()


@pytest.mark.parametrize(("what", "der", "message"), CASES, ids=[c[0] for c in CASES])
def test_malformed(what: str, der: bytes, message: str) -> None:
    with pytest.raises(CertificateError, match=message):
        read_certificate(der)


@pytest.mark.parametrize("value", ["text", None, bytearray(GOOD), memoryview(GOOD), 3])
def test_not_bytes(value: object) -> None:
    with pytest.raises(CertificateError, match="not bytes"):
        read_certificate(value)  # type: ignore[arg-type]


def test_certificate_error_is_a_value_error() -> None:
    assert issubclass(CertificateError, ValueError)


# --- fuzzing: CertFacts or CertificateError, nothing else ---------------------

REAL = make_cert(
    sans=[
        x509.DNSName("client.example.org"),
        x509.IPAddress(ipaddress.ip_address("192.0.2.1")),
        x509.UniformResourceIdentifier("spiffe://example.org/ns/x"),
        x509.RFC822Name("a@example.org"),
    ],
    subject=x509.Name(
        [x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"), x509.NameAttribute(CN, "client")]
    ),
)
SEEDS = [REAL, GOOD, hand_cert(version=None), hand_cert(subject=name((CN_OID, 0x1E, b"\0a")))]


def outcome(der: bytes) -> CertFacts | None:
    try:
        facts = read_certificate(der)
    except CertificateError:
        return None
    assert isinstance(facts, CertFacts)
    assert facts.spki in der and facts.issuer in der
    return facts


@FUZZ
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data: bytes) -> None:
    outcome(data)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_bytes_in_a_sequence(data: bytes) -> None:
    outcome(seq(data))
    outcome(seq(seq(data)))


@pytest.mark.parametrize("seed", range(len(SEEDS)))
def test_every_truncation_fails(seed: int) -> None:
    der = SEEDS[seed]
    for end in range(len(der)):
        with pytest.raises(CertificateError):
            read_certificate(der[:end])


@FUZZ
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_fuzz_byte_changes(der: bytes, changes: list[tuple[int, int]]) -> None:
    data = bytearray(der)
    for position, value in changes:
        data[position % len(data)] = value
    outcome(bytes(data))


@FUZZ
@given(
    st.sampled_from(SEEDS),
    st.integers(0, 5000),
    st.integers(0, 40),
    st.binary(max_size=40),
)
def test_fuzz_splices(der: bytes, at: int, cut: int, inserted: bytes) -> None:
    at %= len(der)
    outcome(der[:at] + inserted + der[at + cut :])


# Certificates right but for a part or two, to reach every branch of the reader.
TAGS = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x0C, 0x13, 0x1C, 0x1E, 0x1F, 0x2C, 0x30, 0x31]
TAGS += [0x80, 0x81, 0x82, 0x86, 0x87, 0x89, 0xA0, 0xA2, 0xA3, 0xA4]
elements = st.builds(tlv, st.sampled_from(TAGS), st.binary(max_size=8)) | st.sampled_from(
    [oid(SAN_OID), oid(CN_OID), integer(2), tlv(0x01, b"\xff"), seq(), b"\x05", b"\x30\x81"]
)
contents = st.lists(elements, max_size=4).map(b"".join)
attributes = st.builds(
    lambda o, value: seq(o, value), st.sampled_from([oid(CN_OID), oid("2.5.4.6")]), elements
) | elements.map(seq)
subjects = st.lists(
    st.lists(attributes, max_size=3).map(lambda a: tlv(0x31, b"".join(a))) | elements,
    max_size=4,
).map(lambda rdns: seq(*rdns))
san_values = st.lists(elements, max_size=5).map(lambda names: seq(*names)) | contents
extensions = (
    st.builds(
        lambda o, critical, value: seq(o, critical, tlv(0x04, value)),
        st.sampled_from([oid(SAN_OID), oid("2.5.29.19")]),
        st.sampled_from([b"", tlv(0x01, b"\xff"), tlv(0x02, b"\x01")]),
        san_values,
    )
    | elements
)


@FUZZ
@given(
    subjects,
    st.none() | st.lists(extensions, max_size=4),
    st.sampled_from([None, tlv(0xA0, integer(2)), tlv(0xA0, b""), tlv(0xA0, integer(2) * 2)]),
    st.sampled_from([b"", tlv(0x81, b"\0"), tlv(0x05, b""), tlv(0xA3, b"")]),
)
def test_fuzz_certificate_parts(
    subject: bytes, exts: list[bytes] | None, version: bytes | None, tail: bytes
) -> None:
    outcome(hand_cert(subject=subject, extensions=exts, version=version, tbs_tail=tail))


@FUZZ
@given(st.lists(st.sampled_from(TAGS + [0x30] * 8), max_size=6), st.binary(max_size=6))
def test_fuzz_nesting(tags: list[int], core: bytes) -> None:
    data = core
    for tag in tags:
        data = tlv(tag, data)
    outcome(data)
    outcome(seq(data))


# --- a CRL's next update -----------------------------------------------------


def make_crl(next_update: datetime.datetime) -> bytes:
    return (
        x509.CertificateRevocationListBuilder()
        .issuer_name(x509.Name([x509.NameAttribute(CN, "CA")]))
        .last_update(min(NOW, next_update))
        .next_update(next_update)
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(7).revocation_date(NOW).build()
        )
        .sign(EC_KEY, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


@pytest.mark.parametrize(
    "when",
    [
        datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC),  # UTCTime
        datetime.datetime(1999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC),
        datetime.datetime(2051, 6, 7, 8, 9, 10, tzinfo=datetime.UTC),  # GeneralizedTime
    ],
)
def test_crl_next_update(when: datetime.datetime) -> None:
    assert crl_next_update(make_crl(when)) == int(when.timestamp())


def hand_crl(*times: bytes, version: bytes = integer(1)) -> bytes:
    tbs = seq(version, ALGORITHM, ISSUER, *times)
    return seq(tbs, ALGORITHM, tlv(0x03, b"\x00" + b"\x01" * 64))


def test_crl_without_next_update_or_version() -> None:
    this_update = tlv(0x17, b"240101000000Z")
    assert crl_next_update(hand_crl(this_update)) is None
    assert crl_next_update(hand_crl(this_update, seq())) is None  # revokedCertificates
    assert crl_next_update(hand_crl(this_update, tlv(0x17, b"240102000000Z"), version=b"")) == (
        int(datetime.datetime(2024, 1, 2, tzinfo=datetime.UTC).timestamp())
    )


@pytest.mark.parametrize(
    "der",
    [
        b"",
        b"\x30\x00",
        hand_crl(),  # no thisUpdate
        hand_crl(tlv(0x04, b"240101000000Z")),
        hand_crl(tlv(0x17, b"240101000000Z"), tlv(0x17, b"2401020000Z")),
        hand_crl(tlv(0x17, b"240101000000Z"), tlv(0x18, b"240102000000Z")),
        hand_crl(tlv(0x17, b"240101000000Z"), tlv(0x17, b"241302000000Z")),
        hand_crl(tlv(0x17, b"240101000000Z"), tlv(0x17, b"24010200000+Z")),
        hand_crl(tlv(0x17, b"240101000000Z"), tlv(0x17, b"240102000000+0100")),
    ],
)
def test_crl_next_update_malformed(der: bytes) -> None:
    with pytest.raises(CertificateError):
        crl_next_update(der)


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_crl_next_update(data: bytes) -> None:
    try:
        crl_next_update(data)
    except CertificateError:
        pass


@given(
    st.datetimes(min_value=datetime.datetime(1950, 1, 1), max_value=datetime.datetime(9999, 12, 31))
)
def test_times_count_seconds_as_the_utc_calendar_does(when: datetime.datetime) -> None:
    from s6tls.certinfo import _GENERALIZED_TIME, _time

    text = when.strftime("%Y%m%d%H%M%SZ").encode()
    assert _time(_GENERALIZED_TIME, text) == calendar.timegm(when.timetuple())
