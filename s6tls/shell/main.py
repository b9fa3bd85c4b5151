"""``s6-tlsserver``: check the command line and environment, bind, serve.

Every start-up problem is reported here, once, as one line: bad usage exits
100 (with the usage), a system failure (bind, key files) exits 111.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import gevent
from gevent import socket as gsocket

from s6tls.errors import S6tlsError, SystemFailure, UsageError
from s6tls.logline import PROG, Log
from s6tls.options import SHORT_USAGE, Options, parse, unsigned
from s6tls.rules import DirRules
from s6tls.shell.contexts import ContextCache
from s6tls.shell.descriptors import raise_for
from s6tls.shell.fdio import to_null
from s6tls.shell.limits import Limits
from s6tls.shell.readiness import Notifier, notify_address
from s6tls.shell.server import Server
from s6tls.shell.service import Service
from s6tls.shell.spawn import LocalLauncher
from s6tls.shell.tls import unraisable
from s6tls.shell.workers import MAX_WORKERS, Policy, Pool
from s6tls.tlsconfig import settings_from

if TYPE_CHECKING:
    from s6tls.shell.privsep.client import HelperClient  # imported only with TLS_UID

# systemd socket activation: the first passed socket is fd 3.
SD_LISTEN_FDS_START = 3


def handed_in(env: dict[str, str]) -> socket.socket | None:
    """A listening socket given to us: systemd's LISTEN_FDS, or on fd 0
    (as s6-fdholder-retrieve and s6-tcpserver-socketbinder hand it)."""
    if env.pop("LISTEN_PID", None) == str(os.getpid()) and env.pop("LISTEN_FDS", "0") != "0":
        env.pop("LISTEN_FDNAMES", None)
        fd = SD_LISTEN_FDS_START
    else:
        fd = 0
    try:
        sock = gsocket.socket(fileno=fd)
    except OSError:
        return None
    if (
        sock.type != socket.SOCK_STREAM
        or sock.family not in (socket.AF_INET, socket.AF_INET6)
        or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    ):
        sock.detach()
        if fd != 0:
            raise SystemFailure(f"fd {fd} is not a listening TCP socket")
        return None
    os.set_inheritable(fd, False)  # prog must not get the listener
    return sock  # type: ignore[no-any-return]


def listen(opts: Options) -> socket.socket:
    """Bind and listen on ip:port, one address family only."""
    family = socket.AF_INET6 if opts.family_v6 else socket.AF_INET
    sock = gsocket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if opts.family_v6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    try:
        sock.bind((opts.ip, opts.port))
        sock.listen(opts.backlog if opts.backlog is not None else socket.SOMAXCONN)
    except OSError as e:
        sock.close()
        raise SystemFailure(f"unable to bind to {opts.ip} port {opts.port}: {e.strerror}") from None
    return sock  # type: ignore[no-any-return]


def notify_ready(port: int) -> None:
    """-1: write the port on stdout, then close stdout (kept open on /dev/null)."""
    os.write(1, f"{port}\n".encode())
    to_null(1)


def check_environment(opts: Options, env: dict[str, str]) -> None:
    """Refuse at start-up what upstream would only discover per connection."""
    settings_from(env, opts.snilevel, opts.client_cert)
    identity_asked = opts.identity_from_env or any(
        v is not None for v in (opts.uid, opts.gid, opts.groups)
    )
    if identity_asked and os.geteuid() != 0:
        raise UsageError("-u, -g, -G and -U need the server to run as root")
    tls_identity(env)


def tls_identity(env: dict[str, str]) -> tuple[int, int] | None:
    """Started as root with TLS_UID/TLS_GID: the uid and gid the TLS engine
    must run as (both required and numeric); None when it may stay as it is."""
    if os.geteuid() != 0 or ("TLS_UID" not in env and "TLS_GID" not in env):
        return None
    if "TLS_UID" not in env or "TLS_GID" not in env:
        raise UsageError("TLS_UID and TLS_GID must be set together")
    return unsigned(env["TLS_UID"], "TLS_UID"), unsigned(env["TLS_GID"], "TLS_GID")


def build_service(opts: Options, env: dict[str, str]) -> Service:
    log = Log(opts.verbosity)
    service = Service(
        options=opts,
        log=log,
        base_env=env,
        contexts=ContextCache(log.warning),
        launcher=LocalLauncher(opts),
    )
    # Load the default pair now: a bad key or certificate fails the start, not a client.
    service.contexts.get(service.tls_settings(env))
    if opts.rulesdir is not None:
        service.rules = DirRules(opts.rulesdir)
    elif opts.rulesfile is not None:
        from s6tls.rules.cdbfile import CdbRules  # the cdb code, only with -x

        service.rules = CdbRules(opts.rulesfile)
    if opts.dns or opts.ident:
        from s6tls.shell.names import Resolver  # the DNS and IDENT code, only when asked

        service.resolver = Resolver.from_environment(env, opts.hosts_first)
    return service


def fail(error: S6tlsError, usage: bool = False) -> None:
    """Report a start-up error in one line (and the usage line) and exit."""
    message = f"{PROG}: fatal: {error}\n" + (f"{SHORT_USAGE}\n" if usage else "")
    os.write(2, message.encode(errors="replace"))
    sys.exit(error.exitcode)


def main() -> None:
    # Until the server runs, SIGINT ends it at once, as upstream.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.unraisablehook = unraisable
    env = dict(os.environ)
    try:
        opts = parse(sys.argv[1:])
    except UsageError as e:
        fail(e, usage=True)
        return
    try:
        check_environment(opts, env)
        policy = worker_policy(env)
        confined = confinement(env)
        notify_socket = notify_address(env)  # systemd's, never prog's
        short = raise_for(opts.maxconn)
        listener = handed_in(env) or listen(opts)
        service = build_service(opts, env)
        ids = tls_identity(env)
        # Now: a confined TLS engine could not connect to it (see start()).
        notifier = Notifier(notify_socket, service.log.warning)
        ip, port = listener.getsockname()[:2]
        if short:
            service.log.warning(short)
        service.log.info(f"starting - bound to ip {ip} port {port}")
        service.log.info(f"status: 0/{opts.maxconn}")
        serve = start(service, listener, policy, ids, confined, notifier)
    except S6tlsError as e:
        fail(e)
        return
    # Ready: it listens, and every signal of the reference page gets its
    # reaction (start() set them up), even before serve() runs the loop.
    if opts.notify:
        notify_ready(port)
    notifier.ready()
    os._exit(serve())


def worker_policy(env: dict[str, str]) -> Policy:
    """S6TLS_WORKERS=N: N processes serve, always; unset: as many as the load needs."""
    text = env.pop("S6TLS_WORKERS", None)
    if text is None:
        return Policy.default()
    count = unsigned(text, "S6TLS_WORKERS")
    if not 1 <= count <= MAX_WORKERS:
        raise UsageError(f"S6TLS_WORKERS must be between 1 and {MAX_WORKERS}")
    return Policy(count, count)


def confinement(env: dict[str, str]) -> bool:
    """S6TLS_CONFINE=0: the TLS engine is not confined (for debugging); unset or 1: it is."""
    text = env.pop("S6TLS_CONFINE", "1")
    if text not in ("0", "1"):
        raise UsageError("S6TLS_CONFINE must be 0 or 1")
    return text == "1"


def separate(
    service: Service, uid: int, gid: int, confined: bool, not_for_helper: list[int]
) -> HelperClient:
    """Privilege separation (s6tls.shell.privsep): fork the root helper, drop
    this process to uid:gid for good, and confine it (s6tls.shell.confine)."""
    # Only with TLS_UID: the helper's code, and the confinement's.
    from s6tls.shell.privsep import startup

    confine = None
    if confined:
        from s6tls.shell.confine import prepare

        # As root, while files can be read; and before the fork, so that the
        # memory it takes is shared with the helper (importing after the fork
        # would unshare many more pages).
        confine = prepare(service.options)
    helper = startup.start_helper(service, not_for_helper)
    startup.drop_privileges(uid, gid)
    startup.serve_through(service, helper)
    if confine is None:
        service.log.warning("S6TLS_CONFINE=0: the TLS engine is not confined")
    elif missing := confine():
        service.log.warning(f"the TLS engine is confined without {'; '.join(missing)}")
    return helper


def stop_without(helper: HelperClient, server: Server) -> None:
    """Without the root helper no prog starts: stop (running sessions go on)
    and exit 111, so that the supervisor starts the server again."""
    helper.gone.wait()
    server.fail("the privileged helper is gone")


def start(
    service: Service,
    listener: socket.socket,
    policy: Policy,
    ids: tuple[int, int] | None,
    confined: bool,
    notifier: Notifier,
) -> Callable[[], int]:
    """Set up the processes that serve; what then serves, returning the exit code.

    With TLS_UID, root stays in a helper that every serving process talks
    to, nothing that faces the network keeps root, and the processes that
    do are confined (s6tls.shell.confine) before the first worker is forked.
    The server reacts to its signals once this returns: readiness may be
    announced.
    """
    limits = Limits(service.options.maxconn, service.options.localmaxconn)
    server = Server(service, listener, limits, stopped_accepting=notifier.stopping)
    helper = None
    if ids:
        not_for_helper = [listener.fileno(), *limits.fds(), *notifier.fds()]
        helper = separate(service, *ids, confined, not_for_helper)
        gevent.spawn(stop_without, helper, server)
    if policy.most > 1:
        server.workers = pool = Pool(server, policy, helper)
        pool.start()
    server.handle_signals()
    return server.serve
