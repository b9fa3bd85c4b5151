"""Access control: before TLS, banner, names and the IP stage of the rules;
after the handshake, the TLS stage (s6tls.rules.verdict)."""

from __future__ import annotations

import dataclasses
import socket

from s6tls import logline
from s6tls.environ import Connection
from s6tls.options import ClientCert
from s6tls.rules import Rule, RulesError, decide
from s6tls.rules.verdict import Verdict, decide_tls
from s6tls.shell.service import Service
from s6tls.sslvars import TlsInfo


class Denied(Exception):
    """The connection must be dropped; log_line says why at -v, if anything."""

    def __init__(self, log_line: str | None = None) -> None:
        super().__init__(log_line or "denied")
        self.log_line = log_line


def check_access(
    service: Service, sock: socket.socket, conn: Connection
) -> tuple[Connection, tuple[str, Rule] | None]:
    """Run upstream's access stage: the connection with its names, and the
    deciding key and rule (None when no rules are configured)."""
    opts = service.options
    log = service.log
    where = logline.endpoint(conn.remote_ip, conn.remote_port)
    if opts.banner:
        sock.sendall(opts.banner)
    if service.resolver is not None:
        from s6tls.shell.names import NameLookupFailed  # loaded with the resolver

        try:
            names = service.resolver.lookup(
                conn.remote_ip,
                conn.remote_port,
                conn.local_ip,
                conn.local_port,
                dns=opts.dns,
                localname=opts.localname,
                paranoid=opts.paranoid,
                ident=opts.ident,
                strict=opts.strict_lookups,
                timeout=opts.lookup_timeout_ms / 1000 or None,
            )
        except NameLookupFailed as e:
            log.warning(f"{where}: dropped: {e}")
            raise Denied() from None
        conn = dataclasses.replace(
            conn,
            remote_host=names.remote_host,
            local_host=names.local_host,
            remote_info=names.remote_info,
        )
    elif opts.localname is not None:
        conn = dataclasses.replace(conn, local_host=opts.localname)
    if service.rules is None:
        return conn, None
    name = conn.remote_host.rstrip(".") if conn.remote_host and opts.dns else None
    try:
        found = decide(service.rules, conn.remote_ip, name)
    except RulesError as e:
        log.warning(f"{where}: denied: {e}")
        raise Denied() from None
    if found is None:
        raise Denied(f"deny {where} no rule")
    key, rule = found
    if not rule.allow:
        raise Denied(f"deny {where} key {key}")
    if log.verbose:
        log.info(f"allow {where} key {key}")
    return conn, found


def check_tls(
    service: Service, where: str, info: TlsInfo, found: tuple[str, Rule] | None
) -> Verdict:
    """Run the TLS stage of the rules, after the handshake: the verdict of
    the IP rule ``found`` and of what the SNI name, the ALPN protocol and the
    client's certificate find. Denied if any of them denies."""
    if service.rules is None:
        return Verdict.of([found])
    try:
        decision = decide_tls(
            service.rules,
            found,
            info.servername,
            info.alpn,
            info.peer_der,
            service.options.client_cert is not ClientCert.NONE,
        )
    except RulesError as e:
        service.log.warning(f"{where}: denied: {e}")
        raise Denied() from None
    if decision.verdict is None:
        raise Denied(f"deny {where} key {decision.denied_by}")
    if service.log.verbose:
        for key in decision.verdict.keys[1 if found else 0 :]:
            service.log.info(f"allow {where} key {key}")
    return decision.verdict
