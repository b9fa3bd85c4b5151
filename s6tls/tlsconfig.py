"""Which key pairs and trust anchors a connection's TLS engine uses.

Read from the environment, as upstream's s6-tlsd does: KEYFILE/CERTFILE,
with ``-k`` every KEYFILE:name/CERTFILE:name pair for SNI, and with -Y/-y
CADIR or CAFILE. Ours beside them: CRLFILE (with -Y/-y: revoked client
certificates) and ALPN (the application protocols served, in order of
preference). An access rule may change any of them for one client.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from s6tls.errors import UsageError
from s6tls.options import ClientCert

T = TypeVar("T")


class TlsSettingsError(UsageError):
    """The environment does not describe a usable TLS set-up."""


@dataclass(frozen=True)
class TlsSettings:
    """The files and policy that make one TLS context (and its SNI contexts)."""

    keyfile: str | None
    certfile: str | None
    named: tuple[tuple[str, str, str], ...] = ()  # (lowercase name, keyfile, certfile)
    sni_required: bool = False
    client_cert: ClientCert = ClientCert.NONE
    cafile: str | None = None
    cadir: str | None = None
    crlfile: str | None = None
    alpn: tuple[str, ...] = ()  # the protocols served, best first; () for no ALPN

    def paths(self) -> tuple[str, ...]:
        """Every file whose change means the contexts must be rebuilt."""
        paths = [self.keyfile, self.certfile, self.cafile, self.cadir, self.crlfile]
        for _, key, cert in self.named:
            paths += [key, cert]
        return tuple(p for p in paths if p)


def named_pairs(env: Mapping[str, str]) -> tuple[tuple[str, str, str], ...]:
    """The KEYFILE:name/CERTFILE:name pairs, sorted; an unpaired one is an error."""
    keys = {k[8:]: v for k, v in env.items() if k.startswith("KEYFILE:")}
    certs = {k[9:]: v for k, v in env.items() if k.startswith("CERTFILE:")}
    for name in keys.keys() - certs.keys():
        raise TlsSettingsError(
            f"environment variable KEYFILE:{name} not paired with the corresponding CERTFILE"
        )
    for name in certs.keys() - keys.keys():
        raise TlsSettingsError(
            f"environment variable CERTFILE:{name} not paired with the corresponding KEYFILE"
        )
    pairs = []
    for name in sorted(keys):
        wildcard, _, rest = name.partition(".")
        if "*" in name and (wildcard != "*" or "*" in rest or "." not in rest):
            raise TlsSettingsError(
                f"KEYFILE:{name}: a wildcard may only stand for the first label,"
                " before at least two others"
            )
        pairs.append((name.lower(), keys[name], certs[name]))
    return tuple(pairs)


def settings_from(env: Mapping[str, str], snilevel: int, client_cert: ClientCert) -> TlsSettings:
    """Read the TLS settings of one connection from its environment."""
    named = named_pairs(env) if snilevel >= 1 else ()
    if snilevel >= 2:
        if not named:
            raise TlsSettingsError("no suitable keypairs found in the environment")
        keyfile = certfile = None
    else:
        certfile, keyfile = env.get("CERTFILE"), env.get("KEYFILE")
        if not certfile:
            raise TlsSettingsError("CERTFILE not set")
        if not keyfile:
            raise TlsSettingsError("KEYFILE not set")
    cafile = cadir = crlfile = None
    if client_cert is not ClientCert.NONE:
        cafile, cadir = env.get("CAFILE") or None, env.get("CADIR") or None
        if not (cafile or cadir):
            raise TlsSettingsError("CADIR or CAFILE not set")
        crlfile = env.get("CRLFILE") or None
    return TlsSettings(
        keyfile, certfile, named, snilevel >= 2, client_cert, cafile, cadir, crlfile, alpn_of(env)
    )


def alpn_of(env: Mapping[str, str]) -> tuple[str, ...]:
    """The ALPN setting: protocols in order of preference; () when unset or empty."""
    text = env.get("ALPN")
    return _alpn_list(text) if text else ()


@functools.lru_cache(maxsize=64)  # read for every connection; set in a few places at most
def _alpn_list(text: str) -> tuple[str, ...]:
    from s6tls.clienthello import AlpnListError, parse_alpn_list  # only with ALPN

    try:
        return parse_alpn_list(text)
    except AlpnListError as e:
        raise TlsSettingsError(str(e)) from None


def match_name(names: Mapping[str, T], servername: str) -> T | None:
    """The entry for an SNI name: exact (any case), else ``*.`` + its parent.

    A wildcard stands for exactly one label: ``*.example.com`` serves
    ``a.example.com``, not ``a.b.example.com`` nor ``example.com``.
    """
    name = servername.lower().rstrip(".")
    if name in names:
        return names[name]
    label, dot, parent = name.partition(".")
    if dot and label and "." in parent:
        return names.get("*." + parent)
    return None
