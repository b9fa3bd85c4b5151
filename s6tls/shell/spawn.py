"""Starting prog on pipes, and waiting for it, without forking the server.

``os.posix_spawn`` uses vfork, so starting prog costs the same whatever the
server's size. Each child is watched through a pidfd: the server never
installs a SIGCHLD handler, so no other reaper can steal an exit status.
"""

from __future__ import annotations

import fcntl
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gevent.socket import wait_read

# A bigger pipe means fewer wake-ups per megabyte relayed.
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class SpawnFailed(Exception):
    """prog could not be started; the message names it and says why."""


@dataclass
class Child:
    """A running prog, with the server's ends of its stdin and stdout pipes."""

    pid: int
    stdin: int  # we write prog's input here
    stdout: int  # we read prog's output here
    pidfd: int

    def signal(self, signum: int) -> None:
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def wait(self) -> int | None:
        """Wait cooperatively for prog to end; its wait status, or None if
        this process is not its parent (a drainer after SIGTERM)."""
        wait_read(self.pidfd)
        os.close(self.pidfd)
        self.pidfd = -1
        try:
            return os.waitpid(self.pid, 0)[1]
        except ChildProcessError:
            return None


def _pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # over /proc/sys/fs/pipe-max-size for this user: keep the default
    return r, w


def spawn(argv: Sequence[str], env: Mapping[str, str]) -> Child:
    """Start argv (looked up in PATH) with pipes on fds 0 and 1, stderr shared."""
    in_r, in_w = _pipe()
    out_r, out_w = _pipe()
    try:
        pid = os.posix_spawnp(
            argv[0],
            list(argv),
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, in_r, 0),
                (os.POSIX_SPAWN_DUP2, out_w, 1),
            ],
            # Python ignores these; prog must get the defaults back.
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
        )
    except OSError as e:
        for fd in (in_r, in_w, out_r, out_w):
            os.close(fd)
        raise SpawnFailed(f"unable to exec {argv[0]}: {e.strerror}") from None
    os.close(in_r)
    os.close(out_w)
    os.set_blocking(in_w, False)
    os.set_blocking(out_r, False)
    return Child(pid=pid, stdin=in_w, stdout=out_r, pidfd=os.pidfd_open(pid))
