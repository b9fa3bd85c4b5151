"""Privilege separation: the TLS engine runs as TLS_UID, a small helper keeps root.

Upstream runs its TLS engine (s6-tlsd-io) as TLS_UID:TLS_GID, so a bug in
TLS parsing never runs as root. Here the TLS engine lives in the server
process, so when started as root with TLS_UID/TLS_GID set, the server:

1. binds its socket and loads its key material as root;
2. forks this helper, which keeps root and never touches the network;
3. drops to TLS_UID:TLS_GID with no supplementary groups, for good
   (real, effective and saved ids all changed);
4. confines itself (``s6tls.shell.confine``), unless S6TLS_CONFINE=0.

The unprivileged server then accepts, reads PROXY headers, talks TLS and
relays; whatever needs root goes to the helper over a socketpair, as JSON
messages (never pickle: the server side is the untrusted one here).

Threat model: an attacker who takes over the unprivileged server can ask
the helper only for what the configuration allows anyway. The helper

- starts only the command line's prog or the ``exec`` of a rule it finds
  itself in the ruleset, with the identity the options (or, for -U, the
  server's environment and that rule) give, and an environment it builds
  itself from the same pure functions as the server: the requester supplies
  the connection's facts (addresses, names, TLS parameters), which only ever
  become the values of TCP* and SSL_* variables;
- opens (read-only, regular files only), stats or lists only the files
  named by KEYFILE, CERTFILE, CAFILE, CADIR (and their ``:name`` forms) in
  the server's environment or in a rule's environment, the files inside
  such a CADIR, and the files the lookups read (resolv.conf, /etc/hosts);
- signals only the progs it started and that are still running;
- answers rule look-ups from the ruleset given on the command line;
- reads how busy the serving processes are (``/proc/PID/schedstat``,
  world-readable anyway), for the worker pool.

Through the helper, the worst a compromised server can do is run the
configured prog for a made-up client, or read the configured key files: the
same as a server that was never separated. By itself it can do less still:
once confined, it opens no file, runs no program, takes no other identity,
ptraces or signals no process but its own workers, and reaches the network
only through the sockets it holds (and, with lookups on, over UDP and to
TCP ports 53 and 113). What it keeps is what it serves: the sessions of that
process and the key pairs loaded in it. The reference page compares this
with upstream's s6-tlsd-io.
"""

from __future__ import annotations

import base64
import dataclasses
import errno
import gc
import json
import os
import selectors
import signal
import socket
import stat
import sys
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn, cast

import gevent
from gevent import socket as gsocket
from gevent.event import AsyncResult, Event
from gevent.lock import Semaphore

from s6tls.environ import Connection, is_tls_variable, tcp_environ
from s6tls.launch import prog_command
from s6tls.options import Options
from s6tls.rules import Rule, RuleSource, decode
from s6tls.rules.errors import RulesError
from s6tls.shell.fdio import to_null
from s6tls.shell.service import Service
from s6tls.shell.sigmask import fork_holding, release
from s6tls.shell.spawn import SpawnFailed, spawn_on, start_on_pipes
from s6tls.shell.tls import FileIdentity, LocalFiles
from s6tls.shell.workers import busy_ns
from s6tls.sslvars import TlsInfo

MAX_MESSAGE = 1 << 20


class HelperError(Exception):
    """The helper refused or failed a request."""


# -- messages


def _encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def _text(value: object) -> str:
    if not isinstance(value, str) or "\0" in value:
        raise HelperError("bad request")
    return value


def _port(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise HelperError("bad request")
    return value


def _optional(value: object) -> str | None:
    return None if value is None else _text(value)


def conn_facts(conn: Connection) -> dict[str, Any]:
    return dataclasses.asdict(conn)


def conn_from(facts: Mapping[str, Any]) -> Connection:
    """A Connection from a requester's facts, every field checked."""
    count = facts.get("connnum")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise HelperError("bad request")
    return Connection(
        local_ip=_text(facts.get("local_ip")),
        local_port=_port(facts.get("local_port")),
        remote_ip=_text(facts.get("remote_ip")),
        remote_port=_port(facts.get("remote_port")),
        connnum=count,
        remote_host=_optional(facts.get("remote_host")),
        local_host=_optional(facts.get("local_host")),
        remote_info=_optional(facts.get("remote_info")),
    )


def info_facts(info: TlsInfo) -> dict[str, Any]:
    return {
        "protocol": info.protocol,
        "cipher": info.cipher,
        "servername": info.servername,
        "peer_der": base64.b64encode(info.peer_der).decode() if info.peer_der else None,
        "peer_subject": info.peer_subject,
    }


def info_from(facts: Mapping[str, Any]) -> TlsInfo:
    der = _optional(facts.get("peer_der"))
    subject = facts.get("peer_subject")
    rdns: tuple[tuple[tuple[str, str], ...], ...] | None = None
    if subject is not None:
        if not isinstance(subject, list):
            raise HelperError("bad request")
        rdns = tuple(
            tuple((_text(pair[0]), _text(pair[1])) for pair in rdn if len(pair) == 2)
            for rdn in subject
            if isinstance(rdn, list)
        )
    return TlsInfo(
        protocol=_text(facts.get("protocol")),
        cipher=_text(facts.get("cipher")),
        servername=_optional(facts.get("servername")),
        peer_der=base64.b64decode(der) if der else None,
        peer_subject=rdns,
    )


def _rule_facts(found: tuple[str, Rule] | None) -> Any:
    if found is None:
        return None
    key, rule = found
    return {"key": key, "allow": rule.allow, "env": rule.env, "exec": rule.exec}


def _rule_from(facts: Any) -> tuple[str, Rule] | None:
    if facts is None:
        return None
    env = tuple((name, value) for name, value in facts["env"])
    return facts["key"], Rule(allow=facts["allow"], env=env, exec=facts["exec"])


# -- the root side


def _tls_paths(env: Iterable[tuple[str, str | None]]) -> set[str]:
    """The files an environment names for the TLS engine."""
    return {
        value
        for name, value in env
        if value and is_tls_variable(name) and name not in ("TLS_UID", "TLS_GID")
    }


def _open_regular(path: str) -> int:
    """A read-only descriptor of the regular file at path (never waiting on a
    FIFO, never a device)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return fd


def _channel() -> tuple[socket.socket, socket.socket]:
    """A pair of connected sockets for requests and replies, each up to MAX_MESSAGE."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (ours, theirs):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_MESSAGE)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MAX_MESSAGE)
    return ours, theirs


class Helper:
    """The root half: a blocking loop that answers the requests of every
    process that serves (one channel each), until none is left."""

    def __init__(
        self,
        sock: socket.socket,
        opts: Options,
        base_env: Mapping[str, str],
        rules: RuleSource | None,
        paths: Iterable[str] = (),
    ) -> None:
        """paths: files the server reads beyond its TLS files (the lookups')."""
        self.opts = opts
        self.base_env = base_env
        self.rules = rules
        self.files = LocalFiles()
        self.children: dict[int, tuple[int, socket.socket]] = {}  # pid -> pidfd, its requester
        self.selector = selectors.DefaultSelector()
        self.clients = 0
        self.allowed = _tls_paths(base_env.items()) | set(paths)
        self._add_client(sock)

    def _add_client(self, sock: socket.socket) -> None:
        self.selector.register(sock, selectors.EVENT_READ)
        self.clients += 1

    def serve(self) -> NoReturn:
        while True:
            for key, _ in self.selector.select():
                if key.data is None:
                    self._request(cast(socket.socket, key.fileobj))
                else:
                    self._reap(key.data)

    def _request(self, client: socket.socket) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(client, MAX_MESSAGE, 2)
        except OSError:
            data, fds = b"", []
        if not data:  # a process that served is gone (its drainer too)
            self.selector.unregister(client)
            client.close()
            self.clients -= 1
            if not self.clients:
                os._exit(0)
            return
        reply: dict[str, Any]
        request_id = None
        give: list[int] = []
        try:
            request = json.loads(data)
            request_id = request.get("id")
            reply = self._handle(client, request, fds, give)
        except (HelperError, RulesError) as e:
            reply = {"error": str(e)}
        except OSError as e:
            reply = {"error": e.strerror or str(e), "errno": e.errno}
        except Exception:  # a request must never take the helper down
            reply = {"error": "bad request"}
        finally:
            for fd in fds:
                os.close(fd)
        reply["id"] = request_id
        try:
            socket.send_fds(client, [_encode(reply)], give)
        finally:
            for fd in give:
                os.close(fd)

    def _handle(
        self, client: socket.socket, request: dict[str, Any], fds: list[int], give: list[int]
    ) -> dict[str, Any]:
        """The reply to one request; descriptors to pass back go in give."""
        op = request.get("op")
        if op == "spawn":
            return self._spawn(client, request, fds)
        if op == "kill":
            pid, signum = request["pid"], request["signal"]
            child = self.children.get(pid)
            if child is not None and child[1] is client and signum in (15, 18, 9):
                os.kill(pid, signum)
            return {}
        if op == "channel":  # for a worker process: a channel of its own
            ours, theirs = _channel()
            self._add_client(ours)
            give.append(theirs.detach())
            return {}
        if op == "find":
            keys = [_text(k) for k in request["keys"]]
            return {"found": _rule_facts(self.rules.find(keys) if self.rules else None)}
        if op == "busy":  # the pool's load, read in /proc (world-readable)
            pids = request["pids"]
            if not all(isinstance(pid, int) and pid > 0 for pid in pids):
                raise HelperError("bad request")
            return {"busy": list(busy_ns(pids).values())}
        path = _text(request.get("path"))
        self._check_path(path)
        if op == "open":
            give.append(_open_regular(path))
            return {}
        if op == "identity":
            return {"identity": self.files.identity(path)}
        if op == "listdir":
            return {"paths": self.files.listdir(path)}
        raise HelperError("bad request")

    def _check_path(self, path: str) -> None:
        if path in self.allowed or os.path.dirname(path) in self.allowed:
            return
        self.allowed |= self._ruleset_paths()  # a rule may have named it since
        if path in self.allowed or os.path.dirname(path) in self.allowed:
            return
        raise HelperError(f"{path} is not a file the configuration names")

    def _ruleset_paths(self) -> set[str]:
        from s6tls.rules.cdbfile import compile_dir, read_cdb  # only with -i or -x

        if self.opts.rulesdir:
            records = compile_dir(self.opts.rulesdir)
        elif self.opts.rulesfile:
            records = read_cdb(self.opts.rulesfile)
        else:
            return set()
        paths: set[str] = set()
        for value in records.values():
            try:
                paths |= _tls_paths(decode(value).env)
            except RulesError:
                continue
        return paths

    def _spawn(
        self, client: socket.socket, request: dict[str, Any], fds: list[int]
    ) -> dict[str, Any]:
        if len(fds) != 2:
            raise HelperError("bad request")
        conn = conn_from(request["conn"])
        info = info_from(request["info"])
        rule = None
        key = request.get("key")
        if key is not None:
            rule = self.rules.get(_text(key)) if self.rules else None
            if rule is None or not rule.allow:
                raise HelperError("no such rule")
        tcp_env = tcp_environ(self.base_env, conn, rule.env if rule else ())
        argv, env = prog_command(self.opts, tcp_env, rule, info)
        try:
            pid = spawn_on(argv, env, fds[0], fds[1])
        except SpawnFailed as e:
            raise HelperError(str(e)) from None
        pidfd = os.pidfd_open(pid)
        self.children[pid] = (pidfd, client)
        self.selector.register(pidfd, selectors.EVENT_READ, pid)
        return {"pid": pid}

    def _reap(self, pid: int) -> None:
        pidfd, client = self.children.pop(pid)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        status = os.waitpid(pid, 0)[1]
        try:
            client.send(_encode({"exit": pid, "status": status}))
        except OSError:
            pass  # the process that asked for it is gone


# -- the unprivileged side


class HelperChild:
    """A prog the helper started for us."""

    def __init__(self, client: HelperClient, pid: int, stdin: int, stdout: int) -> None:
        self.client, self.pid, self.stdin, self.stdout = client, pid, stdin, stdout

    def signal(self, signum: int) -> None:
        try:
            self.client.call({"op": "kill", "pid": self.pid, "signal": signum})
        except HelperError:
            pass

    def wait(self) -> int | None:
        status = self.client.exit_of(self.pid).get()
        self.client.forget(self.pid)
        return status if isinstance(status, int) else None


class HelperClient:
    """The server's side of the helper: a Launcher, Files and a RuleSource."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = gsocket.socket(fileno=sock.detach())
        self._sending = Semaphore()
        self._next = 0
        self._pending: dict[int, AsyncResult] = {}
        self._exits: dict[int, AsyncResult] = {}
        self.gone = Event()  # the helper closed its side: nothing more will come
        self._reader = gevent.spawn(self._read_replies)

    def _read_replies(self) -> None:
        while True:
            data, fds, _, _ = socket.recv_fds(self.sock, MAX_MESSAGE, 1)
            if not data:
                break
            message = json.loads(data)
            if "exit" in message:
                self.exit_of(message["exit"]).set(message["status"])
            elif (waiter := self._pending.pop(message.get("id"), None)) is not None:
                message["fds"] = fds
                waiter.set(message)
                continue
            for fd in fds:
                os.close(fd)
        self.gone.set()
        for waiter in [*self._pending.values(), *self._exits.values()]:
            waiter.set(None)

    def exit_of(self, pid: int) -> AsyncResult:
        """prog pid's wait status, once the helper reports it (None: the helper is gone)."""
        if pid not in self._exits:
            self._exits[pid] = AsyncResult()
            if self.gone.is_set():
                self._exits[pid].set(None)
        return self._exits[pid]

    def forget(self, pid: int) -> None:
        """prog pid was waited for: drop its record (pids are reused)."""
        self._exits.pop(pid, None)

    def call(self, request: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
        if self.gone.is_set():
            raise HelperError("the privileged helper is gone")
        self._next += 1
        request["id"] = self._next
        waiter = self._pending[self._next] = AsyncResult()
        try:
            with self._sending:
                socket.send_fds(self.sock, [_encode(request)], fds or [])
        except OSError:
            self._pending.pop(request["id"], None)
            raise HelperError("the privileged helper is gone") from None
        reply = waiter.get()
        if reply is None:
            raise HelperError("the privileged helper is gone")
        if "errno" in reply:
            raise OSError(reply["errno"], reply["error"], request.get("path"))
        if "error" in reply:
            raise HelperError(reply["error"])
        return reply  # type: ignore[no-any-return]

    def channel(self) -> int:
        """A new channel to the helper, for a worker process to use as its own."""
        (fd,) = self.call({"op": "channel"})["fds"]
        return int(fd)

    def busy_ns(self, pids: list[int]) -> dict[int, int]:
        """How long each process ran or waited to run (s6tls.shell.workers.busy_ns)."""
        return dict(zip(pids, self.call({"op": "busy", "pids": pids})["busy"], strict=True))

    # Launcher
    def launch(
        self,
        conn: Connection,
        tcp_env: Mapping[str, str],
        found: tuple[str, Rule] | None,
        info: TlsInfo,
    ) -> HelperChild:
        request = {
            "op": "spawn",
            "conn": conn_facts(conn),
            "info": info_facts(info),
            "key": found[0] if found else None,
        }

        def start(stdin: int, stdout: int) -> int:
            try:
                return int(self.call(request, [stdin, stdout])["pid"])
            except HelperError as e:
                raise SpawnFailed(str(e)) from None

        pid, stdin, stdout = start_on_pipes(start)
        return HelperChild(self, pid, stdin, stdout)

    # Files: a refusal is an OSError, as a file this process could not read
    def _file_op(self, op: str, path: str) -> dict[str, Any]:
        try:
            return self.call({"op": op, "path": path})
        except HelperError as e:
            raise OSError(errno.EACCES, str(e), path) from None

    def read(self, path: str) -> bytes:
        (fd,) = self._file_op("open", path)["fds"]
        with open(fd, "rb") as f:
            return f.read()

    def identity(self, path: str) -> FileIdentity:
        a, b, c, d, e = self._file_op("identity", path)["identity"]
        return (a, b, c, d, e)

    def listdir(self, path: str) -> list[str]:
        return list(self._file_op("listdir", path)["paths"])

    # RuleSource
    def get(self, key: str) -> Rule | None:
        found = self.find([key])
        return found[1] if found else None

    def find(self, keys: Iterable[str]) -> tuple[str, Rule] | None:
        """RulesError when the ruleset cannot be read (or the helper is gone)."""
        try:
            return _rule_from(self.call({"op": "find", "keys": list(keys)})["found"])
        except HelperError as e:
            raise RulesError(str(e)) from None


def _unmoved(_signum: int, _frame: object) -> None:
    pass


_GROUP_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)


def start_helper(service: Service, not_for_helper: Iterable[int]) -> HelperClient:
    """Fork the root helper; this process's side of its channel.

    The helper closes ``not_for_helper`` (the listening socket) at once.
    """
    ours, theirs = _channel()
    # What both processes hold from now on stays shared: no collection in
    # either walks these objects, and so copies their pages (gc.freeze's
    # own advice, without a collection first, which would leave holes that
    # new objects then fill).
    gc.freeze()
    pid = fork_holding(_GROUP_SIGNALS)  # until the helper has its handlers
    if pid == 0:
        ours.close()
        for fd in not_for_helper:
            os.close(fd)
        # The helper must not hold stdout open: -1's reader waits for its EOF.
        to_null(0, 1)
        # It ends when the last process it serves is gone, not on a signal
        # sent to the whole process group (Ctrl-C, timeout): handled, not
        # ignored, so that the progs it starts get them as they should.
        for signum in _GROUP_SIGNALS:
            signal.signal(signum, _unmoved)
        release(_GROUP_SIGNALS)
        try:
            paths = service.resolver.paths() if service.resolver else ()
            Helper(theirs, service.options, service.base_env, service.rules, paths).serve()
        finally:
            sys.stderr.flush()
            os._exit(111)
    theirs.close()
    return HelperClient(ours)


def drop_privileges(uid: int, gid: int) -> None:
    """Become uid:gid with no supplementary groups, with no way back to root."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def serve_through(service: Service, helper: HelperClient) -> None:
    """Start progs, read key files and look up rules through the helper."""
    service.launcher = helper
    service.contexts.files = helper
    if service.rules is not None:
        service.rules = helper
    if service.resolver is not None:
        service.resolver.files = helper
