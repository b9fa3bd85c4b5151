"""The helper as the unprivileged server sees it: a Launcher, Files and a RuleSource.

Requests go out on one channel; a greenlet reads the replies and the exits
of the progs the helper started, and wakes whoever waits for them.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from collections.abc import Iterable, Mapping
from typing import Any

import gevent
from gevent import socket as gsocket
from gevent.event import AsyncResult, Event
from gevent.lock import Semaphore

from s6tls.environ import Connection
from s6tls.rules import Rule
from s6tls.rules.errors import RulesError
from s6tls.rules.verdict import Verdict
from s6tls.shell.files import FileIdentity
from s6tls.shell.privsep.wire import (
    MAX_MESSAGE,
    HelperError,
    conn_facts,
    encode,
    info_facts,
    rule_from,
)
from s6tls.shell.spawn import SpawnFailed, start_on_pipes
from s6tls.sslvars import TlsInfo


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
                socket.send_fds(self.sock, [encode(request)], fds or [])
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

    # The worker pool's calls: a refusal is an OSError, as the system's would be.
    def channel(self) -> int:
        """A new channel to the helper, for a worker process to use as its own."""
        (fd,) = self._pool_call({"op": "channel"})["fds"]
        return int(fd)

    def busy_ns(self, pids: list[int]) -> dict[int, int]:
        """How long each process ran or waited to run (s6tls.shell.load.busy_ns)."""
        busy = self._pool_call({"op": "busy", "pids": pids})["busy"]
        return dict(zip(pids, busy, strict=True))

    def _pool_call(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.call(request)
        except HelperError as e:
            raise OSError(errno.EPIPE, str(e)) from None

    # Launcher
    def launch(
        self,
        conn: Connection,
        tcp_env: Mapping[str, str],
        verdict: Verdict,
        info: TlsInfo,
    ) -> HelperChild:
        request = {
            "op": "spawn",
            "conn": conn_facts(conn),
            "info": info_facts(info),
            "keys": list(verdict.keys),
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
        return self.find_each([keys])[0]

    def find_each(self, groups: Iterable[Iterable[str]]) -> list[tuple[str, Rule] | None]:
        """A lookup for each list of keys, in one request."""
        request = {"op": "find", "groups": [list(keys) for keys in groups]}
        try:
            return [rule_from(found) for found in self.call(request)["found"]]
        except HelperError as e:
            raise RulesError(str(e)) from None
