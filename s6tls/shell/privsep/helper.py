"""The root helper: a blocking loop, as root, that answers the requests of
every process that serves (one channel each), until none is left.

What it may be asked, and why that is safe, is the package's threat model
(``s6tls.shell.privsep``).
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import socket
import stat
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn, cast

from s6tls.environ import is_tls_variable, tcp_environ
from s6tls.launch import prog_command
from s6tls.options import Options
from s6tls.rules import RuleSource, decode
from s6tls.rules.errors import RulesError
from s6tls.rules.verdict import Verdict, VerdictError
from s6tls.shell.files import LocalFiles
from s6tls.shell.load import busy_ns
from s6tls.shell.privsep.wire import (
    MAX_MESSAGE,
    HelperError,
    channel,
    conn_from,
    encode,
    info_from,
    rule_facts,
    text,
    texts,
)
from s6tls.shell.spawn import SpawnFailed, spawn_on


def _tls_paths(env: Iterable[tuple[str, str | None]]) -> set[str]:
    """The files an environment names for the TLS engine."""
    return {
        value
        for name, value in env
        if value and is_tls_variable(name) and name not in ("TLS_UID", "TLS_GID", "ALPN")
    }


def _open_regular(path: str) -> int:
    """A read-only descriptor of the regular file at path (never waiting on a
    FIFO, never a device)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file")
    return fd


class Helper:
    """The root half: answers the requests of every process that serves."""

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
            socket.send_fds(client, [encode(reply)], give)
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
            ours, theirs = channel()
            self._add_client(ours)
            give.append(theirs.detach())
            return {}
        if op == "find":  # a lookup for each list of keys
            groups = request.get("groups")
            if not isinstance(groups, list):
                raise HelperError("bad request")
            found = self.rules.find_each([texts(keys) for keys in groups]) if self.rules else []
            return {"found": [rule_facts(item) for item in found]}
        if op == "busy":  # the pool's load, read in /proc (world-readable)
            pids = request["pids"]
            if not all(isinstance(pid, int) and pid > 0 for pid in pids):
                raise HelperError("bad request")
            return {"busy": list(busy_ns(pids).values())}
        path = text(request.get("path"))
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
        verdict = self._verdict(texts(request.get("keys")))
        tcp_env = tcp_environ(self.base_env, conn, verdict.env)
        argv, env = prog_command(self.opts, tcp_env, verdict.exec, info)
        try:
            pid = spawn_on(argv, env, fds[0], fds[1])
        except SpawnFailed as e:
            raise HelperError(str(e)) from None
        pidfd = os.pidfd_open(pid)
        self.children[pid] = (pidfd, client)
        self.selector.register(pidfd, selectors.EVENT_READ, pid)
        return {"pid": pid}

    def _verdict(self, keys: list[str]) -> Verdict:
        """The verdict of the rules the requester names, as this helper finds them."""
        found = []
        for key in keys:
            rule = self.rules.get(key) if self.rules else None
            if rule is None:
                raise HelperError("no such rule")
            found.append((key, rule))
        try:
            return Verdict.of(found)
        except VerdictError as e:
            raise HelperError(str(e)) from None

    def _reap(self, pid: int) -> None:
        pidfd, client = self.children.pop(pid)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        status = os.waitpid(pid, 0)[1]
        try:
            client.send(encode({"exit": pid, "status": status}))
        except OSError:
            pass  # the process that asked for it is gone
