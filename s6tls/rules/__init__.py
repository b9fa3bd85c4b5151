"""Access rules (``-i`` directory or ``-x`` cdb): which clients are allowed, with what env or exec.

Pure model: no sockets, no gevent, so the rules tools start fast. The parts
only some commands need are imported from their own modules, so that a server
without ``-x`` never loads them: ``s6tls.rules.cdbfile`` (cdb files),
``s6tls.rules.edit`` (scripting a ruleset), ``s6tls.rules.tcprules_text``
(djb's tcprules text and tcpserver's lookup) and
``s6tls.rules.tcprules_convert`` (its exact translation into s6 rules), the
last three for the s6-tcprules command; ``s6tls.rules.tlskeys`` (the keys of
the TLS stage, from the handshake) and ``s6tls.rules.verdict`` (how the two
stages decide together), for the server and s6-tcprules check.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from s6tls.rules.codec import Rule, decode, decode_all, encode
from s6tls.rules.envdir import read_envdir
from s6tls.rules.errors import NotARuleError, RulesError, RuleTooBigError
from s6tls.rules.fs import DirRules, check_dir, lookup_dir, read_tree, write_tree
from s6tls.rules.keys import ip_keys, most_specific_first, name_keys

__all__ = [
    "DirRules",
    "NotARuleError",
    "Rule",
    "RuleSource",
    "RuleTooBigError",
    "RulesError",
    "check_dir",
    "decide",
    "decode",
    "decode_all",
    "encode",
    "ip_keys",
    "lookup_dir",
    "most_specific_first",
    "name_keys",
    "read_envdir",
    "read_tree",
    "write_tree",
]


class RuleSource(Protocol):
    """Where rules are looked up: DirRules or CdbRules."""

    def get(self, key: str) -> Rule | None: ...

    def find(self, keys: Iterable[str]) -> tuple[str, Rule] | None: ...

    def find_each(self, groups: Iterable[Iterable[str]]) -> list[tuple[str, Rule] | None]:
        """``find`` for each list of keys, in the same version of the rules."""
        ...


def decide(source: RuleSource, ip: str, name: str | None) -> tuple[str, Rule] | None:
    """Return the first matching key and its rule for a client, or None (the caller denies).

    The address prefixes are tried first, most specific first; then, if the
    client has a name, its reverse-DNS suffixes and ``reversedns/@``.
    """
    keys = ip_keys(ip)
    # An empty name is no name: upstream only checks reversedns rules after
    # a lookup that produced a name.
    if name:
        keys += name_keys(name)
    return source.find(keys)
