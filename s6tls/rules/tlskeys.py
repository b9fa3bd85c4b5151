"""The rule keys of the TLS stage (SPEC 4b): what the handshake told, as keys tried in order.

Three lookups follow the handshake, each first-match-wins within its own
families: ``sni_keys``, ``alpn_keys`` and ``cert_keys``. Every value in a key
is the client's text, so it goes through ``escape``, which makes it one path
component that reads the same in a rules directory (``-i``) and a cdb
(``-x``):

- ``%`` is ``%25``, ``/`` is ``%2F``, a leading ``.`` is ``%2E``;
- each byte of a character that is not printable (``str.isprintable``:
  controls, NUL, DEL, format and separator characters but the ASCII space,
  unassigned code points) and each byte that is not part of valid UTF-8 is
  ``%XX``, in upper-case hex;
- a value that is exactly ``@`` or ``none``, the words the server uses for
  "any" and "nothing sent", has its first character escaped (``%40``,
  ``%6Eone``), so that an SNI name ``none`` (or ``x.none``, whose parent it
  is) never reads as "no SNI".

The escaped value decodes back to the original bytes (``%XX`` to the byte,
the rest as UTF-8: ``unescape``), so different values never share a key; it never is
empty, ``.`` or ``..``, and never holds ``/`` or NUL, so a key never leaves
its family nor the rules directory. A component longer than ``NAME_MAX``
bytes (after ``family/``: what a file system can name) is never looked up:
its key is left out of the list. An empty value is left out alike.
"""

from __future__ import annotations

from collections.abc import Iterable

from s6tls.sslvars import cert_hash

__all__ = [
    "NAME_MAX",
    "alpn_keys",
    "cert_keys",
    "escape",
    "is_escaped",
    "sni_keys",
    "unescape",
    "value_key",
]

NAME_MAX = 255
"""Longest key component, in bytes, after ``family/``: Linux's NAME_MAX."""

_RESERVED = {"@": "%40", "none": "%6Eone"}


def escape(value: str | bytes) -> str:
    """Return ``value`` as one path component (see the module's docstring).

    A str is taken as its UTF-8 bytes (lone surrogates, as ``surrogateescape``
    or ``surrogatepass`` would write them). An empty value gives an empty
    string, which is no component: the key functions leave such keys out.
    """
    raw = value if isinstance(value, bytes) else _encode(value)
    if raw in (b"@", b"none"):
        return _RESERVED[raw.decode()]
    # surrogateescape turns each byte that is not valid UTF-8 into U+DC80..U+DCFF,
    # and ASCII bytes are always valid: so the test below sees the bytes to escape.
    text = raw.decode("utf-8", "surrogateescape")
    if text.isprintable() and "%" not in text and "/" not in text and not text.startswith("."):
        return text
    parts = []
    for index, char in enumerate(text):
        if char == "%":
            parts.append("%25")
        elif char == "/":
            parts.append("%2F")
        elif char == "." and index == 0:
            parts.append("%2E")
        elif "\udc80" <= char <= "\udcff":
            parts.append(f"%{ord(char) - 0xDC00:02X}")
        elif not char.isprintable():
            parts.extend(f"%{byte:02X}" for byte in char.encode())
        else:
            parts.append(char)
    return "".join(parts)


def unescape(component: str) -> bytes:
    """Return the bytes a component stands for: each ``%XX`` (two hex digits)
    is that byte, the rest is UTF-8. The inverse of ``escape``:
    ``unescape(escape(v)) == v`` for bytes ``v``. ValueError for a ``%`` that
    two hex digits do not follow."""
    parts = component.split("%")
    out = bytearray(_encode(parts[0]))
    for part in parts[1:]:
        code = part[:2]
        if len(code) != 2 or not all(c in "0123456789abcdefABCDEF" for c in code):
            raise ValueError(f"% not followed by two hex digits in {component!r}")
        out.append(int(code, 16))
        out += _encode(part[2:])
    return bytes(out)


def is_escaped(value: str) -> bool:
    """Tell whether ``value`` is already a component as ``escape`` writes it:
    no ``/``, and ``escape(unescape(value)) == value``."""
    if "/" in value:
        return False
    try:
        return escape(unescape(value)) == value
    except ValueError:
        return False


def _encode(value: str) -> bytes:
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass")


def sni_keys(name: str | bytes | None) -> list[str]:
    """Return ``sni/NAME``, then each parent domain, then ``sni/@``; ``["sni/none"]`` for None.

    The name is lower-cased (ASCII letters only, as DNS compares names) and a
    final dot dropped. Parents follow reverse DNS: ``a.b.org`` gives
    ``a.b.org``, ``b.org``, ``org``.
    """
    if name is None:
        return ["sni/none"]
    raw = name if isinstance(name, bytes) else _encode(name)
    if raw.endswith(b"."):
        raw = raw[:-1]
    suffixes = []
    start = 0
    # The suffix after each dot, as name_keys does for reverse DNS: "a..b"
    # gives "a..b", ".b", "b".
    while start < len(raw):
        suffixes.append(raw[start:])
        dot = raw.find(b".", start)
        if dot < 0:
            break
        start = dot + 1
    return [*_fitting(value_key("sni", suffix) for suffix in suffixes), "sni/@"]


def alpn_keys(protocol: str | bytes | None) -> list[str]:
    """Return ``alpn/PROTOCOL`` then ``alpn/@``; ``["alpn/none"]`` when none was negotiated."""
    if protocol is None:
        return ["alpn/none"]
    return [*_fitting([value_key("alpn", protocol)]), "alpn/@"]


def cert_keys(der: bytes | None, asked: bool) -> list[str]:
    """Return the keys of a client certificate, in the order the server tries them.

    Not ``asked`` (no ``-Y``/``-y``): no key at all. No certificate: only
    ``cert/none``. Otherwise ``certhash/SHA256:<hex>`` (the value of
    SSL_PEER_CERT_HASH), ``spki/SHA256:<hex>``, each subject alternative name
    in certificate order (``san/DNS:..`` lower-cased, ``san/URI:..``, ``san/email:..``),
    each subject commonName (``cn/..``), then ``cert/@``. A repeated key is
    given once.

    A certificate this module cannot take apart (CertificateError: OpenSSL
    verified it, but it is not strict DER) gives ``certhash/..`` and
    ``cert/@`` only: what it is and that it is verified stay true, and a
    rule on ``cert/@`` still applies to it. So rules that deny some SAN or CN
    and allow ``cert/@`` are no revocation: use CRLFILE or ``certhash/``.
    """
    if not asked:
        return []
    if der is None:
        return ["cert/none"]
    from s6tls.certinfo import CertificateError, read_certificate  # with -Y or -y only

    keys = [f"certhash/{cert_hash(der)}"]
    try:
        facts = read_certificate(der)
    except CertificateError:
        return [*keys, "cert/@"]
    keys.append(f"spki/{facts.spki_hash}")
    keys += _fitting(value_key("san", value, f"{kind}:") for kind, value in facts.subject_alt_names)
    keys += _fitting(value_key("cn", value) for value in facts.common_names)
    keys.append("cert/@")
    return list(dict.fromkeys(keys))


def _fitting(keys: Iterable[str | None]) -> list[str]:
    return [key for key in keys if key is not None]


def value_key(family: str, value: str | bytes, kind: str = "") -> str | None:
    """The key ``family/kind<escaped value>`` the server looks up for one
    value (kind: ``DNS:``, ``URI:`` or ``email:`` for ``san/``), or None
    where none can match: an empty value, or one over NAME_MAX once escaped.

    Names compare without case, as DNS compares them: an SNI name and a DNS
    SAN are lower-cased (ASCII letters only); URIs, addresses and CNs keep
    theirs.
    """
    raw = value if isinstance(value, bytes) else _encode(value)
    if family == "sni" or kind == "DNS:":
        raw = raw.lower()
    if not raw:
        return None
    component = kind + escape(raw)
    if len(component.encode()) > NAME_MAX:
        return None
    return f"{family}/{component}"
