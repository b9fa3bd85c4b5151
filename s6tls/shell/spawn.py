"""Starting prog on pipes, and waiting for it, without forking the server.

``os.posix_spawn`` uses vfork, so starting prog costs the same whatever the
server's size. Each child is watched through a pidfd: the server never
installs a SIGCHLD handler, so no other reaper can steal an exit status.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from gevent.socket import wait_read

from s6tls.environ import Connection
from s6tls.launch import prog_command
from s6tls.options import Options
from s6tls.rules.verdict import Verdict
from s6tls.shell.descriptors import start_prog
from s6tls.sslvars import TlsInfo


class SpawnFailed(Exception):
    """prog could not be started; the message names it and says why."""


class Child(Protocol):
    """A running prog, with the server's ends of its stdin and stdout pipes."""

    pid: int
    stdin: int  # we write prog's input here
    stdout: int  # we read prog's output here

    def signal(self, signum: int) -> None: ...

    def wait(self) -> int | None:
        """Wait cooperatively for prog's end: its wait status, or None if
        this process cannot know it (a drainer after SIGTERM)."""


class LocalChild:
    """A prog this process started itself, watched through a pidfd."""

    def __init__(self, pid: int, stdin: int, stdout: int) -> None:
        self.pid, self.stdin, self.stdout = pid, stdin, stdout
        self._pidfd = os.pidfd_open(pid)

    def signal(self, signum: int) -> None:
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def wait(self) -> int | None:
        return reap(self._pidfd, self.pid)


def reap(pidfd: int, pid: int) -> int | None:
    """Wait cooperatively for child pid's end through its pidfd (closed here),
    and reap it: its wait status, or None if another reaper took it."""
    try:
        wait_read(pidfd)
    finally:
        os.close(pidfd)
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


def start_on_pipes(start: Callable[[int, int], int]) -> tuple[int, int, int]:
    """Make prog's pipes and start it on them with ``start(stdin, stdout) -> pid``.

    Returns (pid, our end of its stdin, our end of its stdout); prog's ends
    are closed here, and on failure nothing is left open.
    """
    (in_r, in_w), (out_r, out_w) = _pipes()
    try:
        pid = start(in_r, out_w)
    except BaseException:
        os.close(in_w)
        os.close(out_r)
        raise
    finally:
        os.close(in_r)
        os.close(out_w)
    return pid, in_w, out_r


def _pipes() -> tuple[tuple[int, int], tuple[int, int]]:
    """prog's stdin and stdout pipes, close-on-exec, non-blocking on our side."""
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    try:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
    except OSError:
        os.close(in_r)
        os.close(in_w)
        raise
    os.set_blocking(in_w, False)
    os.set_blocking(out_r, False)
    return (in_r, in_w), (out_r, out_w)


def spawn_on(argv: Sequence[str], env: Mapping[str, str], stdin: int, stdout: int) -> int:
    """Start argv (looked up in PATH) on these fds 0 and 1, stderr shared; its pid."""

    def spawn(stdin: int, stdout: int) -> int:
        return os.posix_spawnp(
            argv[0],
            list(argv),
            env,
            file_actions=[(os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, stdout, 1)],
            # Python ignores these; prog must get the defaults back.
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
        )

    try:
        return start_prog(stdin, stdout, spawn)
    except OSError as e:
        raise SpawnFailed(f"unable to exec {argv[0]}: {e.strerror}") from None


class Launcher(Protocol):
    """Starts prog for a connection whose access check and handshake passed."""

    def launch(
        self,
        conn: Connection,
        tcp_env: Mapping[str, str],
        verdict: Verdict,
        info: TlsInfo,
    ) -> Child: ...


class LocalLauncher:
    """Starts prog from this process (the server is not split for TLS_UID)."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts

    def launch(
        self,
        conn: Connection,
        tcp_env: Mapping[str, str],
        verdict: Verdict,
        info: TlsInfo,
    ) -> Child:
        argv, env = prog_command(self.opts, tcp_env, verdict.exec, info)
        pid, stdin, stdout = start_on_pipes(lambda i, o: spawn_on(argv, env, i, o))
        return LocalChild(pid, stdin, stdout)
