"""Scripting a ruleset: explain a decision, add or remove one rule, create a whole directory.

Changes are atomic for a server reading the directory at every connection:
a rule is built under a dot-name (which every reader skips) in the same
parent directory and renamed into place; a replaced rule is swapped with
its successor in one ``renameat2(RENAME_EXCHANGE)`` and then deleted; a
removed rule is renamed away first, then deleted.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from s6tls.rules.codec import Rule, encode
from s6tls.rules.errors import RulesError
from s6tls.rules.fs import is_safe_key, make_dir, write_tree
from s6tls.rules.keys import FAMILIES, TLS_FAMILIES, ip_keys, name_keys
from s6tls.rules.tlskeys import NAME_MAX, is_escaped, unescape, value_key

if TYPE_CHECKING:
    from s6tls.rules import RuleSource

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


class RuleExistsError(RulesError):
    """``add_rule`` found a rule under the key and was not asked to replace it."""


class NoRuleError(RulesError):
    """``remove_rule`` found no rule under the key."""


@dataclass(frozen=True)
class Explanation:
    """How a ruleset decides for one client: the keys tried in order and the one found.

    ``key`` and ``rule`` are None when no key matches (the server then denies).
    """

    ip: str
    name: str | None
    tried: tuple[str, ...]
    key: str | None
    rule: Rule | None

    @property
    def allowed(self) -> bool:
        """Whether the server lets the client in."""
        return self.rule is not None and self.rule.allow


def explain(source: RuleSource, ip: str, name: str | None = None) -> Explanation:
    """Return how ``source`` (DirRules or CdbRules) decides for a client at ``ip`` named ``name``.

    ``name`` is the client's reverse-DNS name, as the server would find it
    (None for no name, or for a server run with ``-H``); a final dot is
    ignored. Raises ValueError for an invalid address, RulesError for an
    unreadable ruleset.
    """
    keys = ip_keys(ip)
    name = name.rstrip(".") if name else None
    if name:
        keys += name_keys(name)
    found = source.find(keys)
    if found is None:
        return Explanation(ip, name or None, tuple(keys), None, None)
    key, rule = found
    return Explanation(ip, name or None, tuple(keys[: keys.index(key) + 1]), key, rule)


def canonical_key(text: str) -> str:
    """Return the key the server looks up for a rule written as ``text``; ValueError if none.

    Accepts ``ip4/ADDR_LEN``, ``ip6/ADDR_LEN``, ``reversedns/NAME`` and
    ``reversedns/@``, and the shorthands ``ADDR``, ``ADDR/LEN``. An address
    is rewritten in the server's form (``ip6/2001:DB8::0_32`` becomes
    ``ip6/2001:db8::_32``); an address with bits set past its prefix length
    is refused, since no client would ever be looked up under it.

    And the keys of the TLS stage (``tls_key``): ``sni/NAME``, ``sni/@``,
    ``sni/none``, ``alpn/PROTOCOL``, ``alpn/@``, ``alpn/none``,
    ``certhash/SHA256:HEX``, ``spki/SHA256:HEX``, ``san/DNS:NAME``,
    ``san/URI:URI``, ``san/email:ADDRESS``, ``cn/TEXT``, ``cert/@`` and
    ``cert/none``.
    """
    family, slash, rest = text.partition("/")
    if slash and family in TLS_FAMILIES:
        return tls_key(family, rest)
    if slash and family == "reversedns":
        name = rest.rstrip(".") if rest != "@" else rest
        key = f"reversedns/{name}"
        if not name or not is_safe_key(key) or "/" in name:
            raise ValueError(f"invalid name in key {text!r}")
        return key
    if slash and family in ("ip4", "ip6"):
        address, underscore, length = rest.rpartition("_")
        if not underscore or not length.isdecimal():
            raise ValueError(f"invalid key {text!r}: expected {family}/ADDRESS_LENGTH")
        return _network_key(text, address, int(length), 4 if family == "ip4" else 6)
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(
            f"invalid key {text!r}: expected ip4/ADDRESS_LENGTH, ip6/ADDRESS_LENGTH,"
            " reversedns/NAME, reversedns/@, ADDRESS or ADDRESS/LENGTH, or a key of"
            " the TLS stage (sni/, alpn/, certhash/, spki/, san/, cn/, cert/)"
        ) from None
    address = text.partition("/")[0]
    return _network_key(text, address, network.prefixlen, network.version)


_WORDS = {"sni": ("@", "none"), "alpn": ("@", "none"), "cert": ("@", "none")}
_SAN_KINDS = {"dns": "DNS:", "uri": "URI:", "email": "email:"}
_HEX = frozenset("0123456789abcdef")


def tls_key(family: str, value: str) -> str:
    """The key of the TLS stage for ``family/value``, as the server writes it
    (s6tls.rules.tlskeys); ValueError if the server never looks it up.

    A value already in escaped form (``tlskeys.is_escaped``: no ``/``, and it
    reads back the same) is taken as written, any other is escaped: so
    ``san/URI:spiffe://example.org/x`` and
    ``san/URI:spiffe:%2F%2Fexample.org%2Fx`` are the same key. An SNI name
    and a DNS name are lower-cased, an SNI name loses its final dot, a digest
    is ``SHA256:`` and 64 lower-case hex digits.

    A value that names nothing the server looks up is refused: empty, or
    over ``NAME_MAX`` bytes once escaped.
    """
    text = f"{family}/{value}"
    if value in _WORDS.get(family, ()):
        return f"{family}/{value}"
    if family == "cert":
        raise ValueError(f"invalid key {text!r}: expected cert/@ or cert/none")
    if family in ("certhash", "spki"):
        algorithm, colon, digest = value.partition(":")
        digest = digest.lower()
        if algorithm.upper() != "SHA256" or not colon or len(digest) != 64 or set(digest) - _HEX:
            raise ValueError(
                f"invalid key {text!r}: expected {family}/SHA256:"
                " and the 64 hex digits of a SHA-256 digest"
            )
        return f"{family}/SHA256:{digest}"
    kind = ""
    if family == "san":
        written, colon, value = value.partition(":")
        if not colon or written.lower() not in _SAN_KINDS:
            raise ValueError(
                f"invalid key {text!r}: expected san/DNS:NAME, san/URI:URI or san/email:ADDRESS"
            )
        kind = _SAN_KINDS[written.lower()]
    if family == "sni" and value.endswith("."):
        value = value[:-1]  # a final dot written as such (%2E is a name's own)
    raw = unescape(value) if is_escaped(value) else value.encode("utf-8", "surrogateescape")
    if not raw:
        raise ValueError(f"invalid key {text!r}: the value is empty")
    key = value_key(family, raw, kind)
    if key is None:
        raise ValueError(f"invalid key {text!r}: over {NAME_MAX} bytes once escaped")
    return key


def _network_key(text: str, address: str, length: int, version: int) -> str:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"invalid address in key {text!r}") from None
    if parsed.version != version or length > parsed.max_prefixlen:
        raise ValueError(f"invalid key {text!r}")
    key = ip_keys(str(parsed))[parsed.max_prefixlen - length]
    network = ipaddress.ip_network(f"{parsed}/{length}", strict=False)
    if network.network_address != parsed:
        raise ValueError(f"key {text!r} has host bits set: the server looks up {key}")
    return key


def add_rule(rulesdir: str, key: str, rule: Rule, *, replace: bool = False) -> None:
    """Put ``rule`` under ``key`` in a rules directory, atomically.

    A missing rules directory is created, with its ``ip4/``, ``ip6/`` and
    ``reversedns/`` parts (and the key's own); its parent must exist. Raises RuleExistsError if
    a rule is there and ``replace`` is false, RuleTooBigError if the rule
    could not be compiled into a cdb, RulesError for a key that is not the
    server's form or for a failed write.
    """
    _check_key(key)
    encode(rule)  # the limits of the cdb form, so the directory stays compilable
    top, name = key.split("/", 1)
    parent = f"{rulesdir}/{top}"
    target = f"{parent}/{name}"
    created = make_dir(rulesdir)
    # A new ruleset gets every part, which shows where rules go; an existing
    # one only the part this key needs.
    for part in dict.fromkeys((*FAMILIES, top)) if created else (top,):
        make_dir(f"{rulesdir}/{part}")
    staging = _temp_name(parent, name)
    write_tree(staging, {"rule": rule})
    built = f"{staging}/rule"
    try:
        try:
            _rename(built, target, _RENAME_NOREPLACE)
        except FileExistsError:
            if not replace:
                raise RuleExistsError(f"{target} exists") from None
            _replace(built, target, staging)
    except OSError as e:
        raise RulesError(f"unable to rename {built} to {target}: {e.strerror}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_rule(rulesdir: str, key: str) -> None:
    """Remove the rule under ``key`` from a rules directory, atomically.

    The rule disappears in one rename, then its files are deleted. Raises
    NoRuleError if there is none.
    """
    _check_key(key)
    top, name = key.split("/", 1)
    parent = f"{rulesdir}/{top}"
    target = f"{parent}/{name}"
    away = _temp_name(parent, name)
    try:
        os.rename(target, away)
    except FileNotFoundError:
        raise NoRuleError(f"{target} does not exist") from None
    except OSError as e:
        raise RulesError(f"unable to rename {target} to {away}: {e.strerror}") from None
    shutil.rmtree(away, ignore_errors=True)


def create_ruleset(directory: str, rules: Mapping[str, Rule]) -> None:
    """Create the rules directory ``directory`` (which must not exist) holding ``rules``.

    The tree is built under a dot-name beside it and renamed into place, so
    the directory appears complete or not at all.
    """
    parent, base = os.path.split(os.path.normpath(directory))
    staging = _temp_name(parent or ".", base)
    write_tree(staging, rules)
    try:
        _rename(staging, directory, _RENAME_NOREPLACE)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise RulesError(f"unable to rename {staging} to {directory}: {e.strerror}") from None


def _check_key(key: str) -> None:
    try:
        canonical = canonical_key(key)
    except ValueError as e:
        raise RulesError(str(e)) from None
    if canonical != key:
        raise RulesError(f"key {key!r} is not in the server's form: use {canonical}")


def _temp_name(parent: str, name: str) -> str:
    # A leading dot: the server, the compiler and lookups all skip it.
    return f"{parent}/.{name}.s6-tcprules.{os.getpid()}.{os.urandom(4).hex()}"


def _replace(built: str, target: str, staging: str) -> None:
    """Swap the new rule with the old one, so the key is never without a rule."""
    try:
        _rename(built, target, _RENAME_EXCHANGE)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
        # Without RENAME_EXCHANGE, a connection between the two renames
        # finds no rule under the key and falls back to a shorter one.
        os.rename(target, f"{staging}/old")
        os.rename(built, target)


@cache
def _libc_renameat2() -> Callable[..., int] | None:
    import ctypes  # only when a rule is written: the lookups start faster without it

    function: Callable[..., int] | None = getattr(
        ctypes.CDLL(None, use_errno=True), "renameat2", None
    )
    return function


def _rename(old: str, new: str, flags: int) -> None:
    """renameat2(2) with ``flags``; OSError as os.rename raises it."""
    renameat2 = _libc_renameat2()
    if renameat2 is None:
        if flags & _RENAME_EXCHANGE:
            raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
        # Not atomic: the best a libc without renameat2 allows.
        if flags & _RENAME_NOREPLACE and os.path.lexists(new):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), new)
        os.rename(old, new)
        return
    import ctypes

    flag_bits = ctypes.c_uint(flags)
    if renameat2(_AT_FDCWD, os.fsencode(old), _AT_FDCWD, os.fsencode(new), flag_bits) != 0:
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), new)
        raise OSError(code, os.strerror(code), new)
