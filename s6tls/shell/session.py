"""One connection, from accept to prog's end, through upstream's stages.

access (banner, names, rules) → proxy (-L) → tls (context, handshake) →
tls rules (ours: SNI, ALPN, certificate) → launch (argv, identity,
environment) → spawn → relay → reap. Each stage is a call into the module
named after its job; this module only strings them together and logs the
outcome.
"""

from __future__ import annotations

import dataclasses
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import gevent

from s6tls import logline
from s6tls.environ import Connection, apply, tcp_environ
from s6tls.identity import IdentityError
from s6tls.shell.access import Denied, check_access, check_tls
from s6tls.shell.contexts import CRL_HAS_EXPIRED
from s6tls.shell.keyfiles import TlsConfigError
from s6tls.shell.proxyread import ProxyFailed, read_proxy_header
from s6tls.shell.relay import relay
from s6tls.shell.service import Service
from s6tls.shell.spawn import Child, SpawnFailed
from s6tls.shell.tls import HandshakeFailed, TlsStream
from s6tls.tlsconfig import TlsSettingsError


@dataclass(eq=False)
class Session:
    """A connection the server counts, and its prog once started."""

    remote_ip: str
    remote_port: int
    connnum: int
    child: Child | None = None  # when prog runs in this process
    pid: int = 0  # prog's, once it runs


def canonical_ip(ip: str) -> str:
    """The address text upstream shows (IPv6 compressed; no scope)."""
    return ip.split("%", 1)[0]


def _seconds(ms: int) -> float | None:
    return ms / 1000 if ms else None


def _proxied(conn: Connection, sock: socket.socket, deadline_ms: int) -> tuple[Connection, bytes]:
    """Read the PROXY header; its addresses replace the TCP ones (-L)."""
    header, pending = read_proxy_header(sock, _seconds(deadline_ms))
    if header.source is None or header.destination is None:
        return conn, pending  # LOCAL, UNKNOWN, or a family without addresses
    return dataclasses.replace(
        conn,
        remote_ip=header.source.ip,
        remote_port=header.source.port,
        local_ip=header.destination.ip,
        local_port=header.destination.port,
    ), pending


def _say_goodbye(stream: TlsStream) -> None:
    """End a session that prog never serves: close_notify, if it can go out."""
    try:
        stream.close_notify()
    except (OSError, ssl.SSLError):
        pass


def run(
    service: Service, sock: socket.socket, session: Session, on_start: Callable[[], None]
) -> int | None:
    """Serve one connection; return prog's wait status, or None if it never ran.

    ``on_start`` is called once prog runs, so the server can log ``accept``.
    """
    opts = service.options
    log = service.log
    where = logline.endpoint(session.remote_ip, session.remote_port)
    try:
        if opts.nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        local_ip, local_port = sock.getsockname()[:2]
        conn = Connection(
            local_ip=canonical_ip(local_ip),
            local_port=local_port,
            remote_ip=session.remote_ip,
            remote_port=session.remote_port,
            connnum=session.connnum,
        )
        # As upstream, the rules judge the connecting peer: behind -L, the proxy.
        conn, found = check_access(service, sock, conn)
        rule = found[1] if found else None
        pending = b""
        if opts.proxy:
            conn, pending = _proxied(conn, sock, opts.handshake_timeout_ms)
            where = logline.endpoint(conn.remote_ip, conn.remote_port)
        env = tcp_environ(service.base_env, conn, rule.env if rule else ())
        stream = TlsStream(sock, service.contexts.get(service.tls_settings(env)), pending)
        timeout = _seconds(opts.handshake_timeout_ms)
        with gevent.Timeout(timeout, HandshakeFailed("handshake timed out")):
            info = stream.handshake()
        try:
            verdict = check_tls(service, where, info, found)
        except Denied:
            _say_goodbye(stream)
            raise
        apply(env, verdict.tls_env)  # after the handshake: they change nothing of it
        child = service.launcher.launch(conn, env, verdict, info)
    except HandshakeFailed as e:
        log.warning(f"{where}: {e}")
        if e.verify_code == CRL_HAS_EXPIRED:
            service.contexts.crl_expired(service.tls_settings(env))
        sock.close()
        return None
    except (ProxyFailed, TlsConfigError, TlsSettingsError, IdentityError) as e:
        log.warning(f"{where}: {e}")
        sock.close()
        return None
    except Denied as e:
        if e.log_line:
            log.info(e.log_line)
        sock.close()
        return None
    except SpawnFailed as e:
        log.warning(str(e))
        sock.close()
        return 127 << 8
    except OSError as e:
        log.warning(f"{where}: {e.strerror or e}")
        sock.close()
        return None

    session.child = child
    on_start()
    try:
        end = relay(stream, child.stdin, child.stdout, opts.close_notify)
    finally:
        sock.close()
    if end.error:
        (log.info if end.after_our_end else log.warning)(f"{where}: {end.error}")
    elif end.ragged_eof and opts.require_close_notify:
        log.warning(f"{where}: remote closed connection without a close_notify")
    return child.wait()
