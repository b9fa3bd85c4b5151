"""prog's environment, assembled in upstream's order as a pure function.

The TCP variables come first, then the access rule's changes (which may
choose KEYFILE/CERTFILE for this client), then the TLS variables; unless -Z,
the TLS engine's own variables are removed last.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from s6tls.sslvars import TlsInfo

TLS_VARIABLES = frozenset(
    {"KEYFILE", "CERTFILE", "CADIR", "CAFILE", "CRLFILE", "ALPN", "TLS_UID", "TLS_GID"}
)
TLS_PREFIXES = ("KEYFILE:", "CERTFILE:")
SSL_VARIABLES = (
    "SSL_PROTOCOL",
    "SSL_CIPHER",
    "SSL_TLS_SNI_SERVERNAME",
    "SSL_PEER_CERT_HASH",
    "SSL_PEER_CERT_SUBJECT",
    "SSL_ALPN_PROTOCOL",
)
IDENTITY_VARIABLES = ("UID", "GID", "GIDLIST")

# A change sets NAME to a value, or removes NAME when the value is None.
Changes = Iterable[tuple[str, str | None]]


@dataclass(frozen=True)
class Connection:
    """What the server knows of a connection before TLS."""

    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    connnum: int
    remote_host: str | None = None
    local_host: str | None = None
    remote_info: str | None = None


def apply(env: dict[str, str], changes: Changes) -> dict[str, str]:
    """Apply set/unset changes to env in order, in place, and return it."""
    for name, value in changes:
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def is_tls_variable(name: str) -> bool:
    """True for the variables that configure the TLS engine."""
    return name in TLS_VARIABLES or name.startswith(TLS_PREFIXES)


def tcp_environ(base: Mapping[str, str], conn: Connection, rule: Changes = ()) -> dict[str, str]:
    """The environment after the TCP stage and the access rule's changes."""
    env = dict(base)
    env["PROTO"] = "TCP"
    env["TCPLOCALIP"] = conn.local_ip
    env["TCPLOCALPORT"] = str(conn.local_port)
    env["TCPREMOTEIP"] = conn.remote_ip
    env["TCPREMOTEPORT"] = str(conn.remote_port)
    env["TCPCONNNUM"] = str(conn.connnum)
    # Names are set by our own lookups or not at all: inherited values never leak.
    apply(
        env,
        (
            ("TCPREMOTEHOST", conn.remote_host),
            ("TCPLOCALHOST", conn.local_host),
            ("TCPREMOTEINFO", conn.remote_info),
        ),
    )
    return apply(env, rule)


def prog_environ(
    env: Mapping[str, str], tls: TlsInfo, keep_tls: bool, drop_identity: bool = False
) -> dict[str, str]:
    """The environment prog runs with, once the handshake is done.

    With -U, UID, GID and GIDLIST have been used to choose prog's identity
    and are removed, as ``s6-applyuidgid -Uz`` does.
    """
    out = dict(env)
    for name in SSL_VARIABLES:
        out.pop(name, None)
    if not keep_tls:
        for name in [*TLS_VARIABLES, *(n for n in out if n.startswith(TLS_PREFIXES))]:
            out.pop(name, None)
    if drop_identity:
        for name in IDENTITY_VARIABLES:
            out.pop(name, None)
    out.update(tls.variables())
    return out
