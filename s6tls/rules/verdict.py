"""What the rules decide for a connection, over both stages (SPEC §4b).

The IP stage (``s6tls.rules.decide``) runs before TLS, as upstream's
s6-tcpserver-access does. After the handshake, the TLS stage looks the same
ruleset up again with what the handshake told, in three lookups, each
first-match-wins in its own families: the SNI name, the negotiated ALPN
protocol, and the client's certificate (only when one was asked for). A
lookup that finds nothing changes nothing, so a ruleset without TLS keys
decides exactly as upstream's.

The rules that allowed a connection then make one verdict:

- a deny from any lookup wins (the caller checks with ``denial``);
- the environment accumulates, in this order: IP rule, SNI rule, ALPN rule,
  certificate rule (a later one wins a conflict);
- the program is the ALPN rule's ``exec``, else the SNI rule's (which service
  the client asked for), else the certificate rule's, else the IP rule's,
  else the command line's.

Pure, so that the server and its root helper, which starts prog under
privilege separation, make the same verdict from the same rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from s6tls.rules.codec import Rule

if TYPE_CHECKING:
    from s6tls.rules import RuleSource

Found = tuple[str, Rule]

IP, SNI, ALPN, CERT = range(4)
STAGE_OF_FAMILY = {
    "ip4": IP,
    "ip6": IP,
    "reversedns": IP,
    "sni": SNI,
    "alpn": ALPN,
    "certhash": CERT,
    "spki": CERT,
    "san": CERT,
    "cn": CERT,
    "cert": CERT,
}
# Whose exec runs: the protocol the client speaks, then the service it named.
_EXEC_PRIORITY = (ALPN, SNI, CERT, IP)


def stage_of(key: str) -> int | None:
    """The stage a key belongs to (IP, SNI, ALPN or CERT); None for another family."""
    return STAGE_OF_FAMILY.get(key.partition("/")[0])


def tls_lookups(
    servername: str | None, protocol: str | None, peer_der: bytes | None, cert_asked: bool
) -> list[list[str]]:
    """The TLS stage's lookups, in order: the keys each one tries, most specific first.

    ``cert_asked``: the server asked for a client certificate (-Y or -y);
    without, no certificate key is tried.
    """
    from s6tls.rules.tlskeys import alpn_keys, cert_keys, sni_keys  # with -i or -x only

    lookups = [sni_keys(servername), alpn_keys(protocol)]
    if cert_asked:
        lookups.append(cert_keys(peer_der, True))
    return lookups


def denial(found: Iterable[Found | None]) -> str | None:
    """The key of the first rule found that denies, or None."""
    for item in found:
        if item is not None and not item[1].allow:
            return item[0]
    return None


class VerdictError(ValueError):
    """Rules that cannot make one verdict (a deny, two of one stage, another family)."""


@dataclass(frozen=True)
class Verdict:
    """The allowing rules of a connection, by stage: what prog runs with."""

    rules: tuple[Found, ...] = ()  # in stage order, at most one each

    @classmethod
    def of(cls, found: Iterable[Found | None]) -> Verdict:
        """The verdict of these rules (None for a lookup that found nothing)."""
        by_stage: dict[int, Found] = {}
        for item in found:
            if item is None:
                continue
            key, rule = item
            stage = stage_of(key)
            if stage is None or stage in by_stage or not rule.allow:
                raise VerdictError(f"key {key} cannot take part in a verdict here")
            by_stage[stage] = item
        return cls(tuple(by_stage[s] for s in sorted(by_stage)))

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(key for key, _ in self.rules)

    @property
    def env(self) -> tuple[tuple[str, str | None], ...]:
        """The rules' changes to the environment, applied in this order."""
        return tuple(change for _, rule in self.rules for change in rule.env)

    @property
    def tls_env(self) -> tuple[tuple[str, str | None], ...]:
        """The changes of the TLS stage's rules alone, applied after the IP rule's."""
        return tuple(c for key, rule in self.rules if stage_of(key) != IP for c in rule.env)

    @property
    def exec(self) -> str:
        """The command line that replaces prog; empty for prog itself."""
        stages = {stage_of(key): rule for key, rule in self.rules}
        for stage in _EXEC_PRIORITY:
            rule = stages.get(stage)
            if rule is not None and rule.exec:
                return rule.exec
        return ""


@dataclass(frozen=True)
class TlsDecision:
    """What the TLS stage found, lookup by lookup, and the outcome."""

    tried: tuple[tuple[str, ...], ...]  # the keys of each lookup (SNI, ALPN, certificate)
    found: tuple[Found | None, ...]  # what each lookup found
    denied_by: str | None  # the key of the first rule found that denies
    verdict: Verdict | None  # the connection's verdict, unless denied


def decide_tls(
    source: RuleSource,
    ip_found: Found | None,
    servername: str | None,
    protocol: str | None,
    peer_der: bytes | None,
    cert_asked: bool,
) -> TlsDecision:
    """Run the TLS stage for a connection the IP stage allowed with ``ip_found``
    (None where no rules were consulted). RulesError if the rules are unreadable."""
    tried = tls_lookups(servername, protocol, peer_der, cert_asked)
    found = source.find_each(tried)
    denied_by = denial(found)
    verdict = None if denied_by else Verdict.of([ip_found, *found])
    return TlsDecision(tuple(map(tuple, tried)), tuple(found), denied_by, verdict)
