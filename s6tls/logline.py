"""Log lines on stderr, one per event, in upstream's wording.

Verbosity 0 logs only fatal errors, 1 adds warnings and rejects, 2 every
connection. Lines carry no colours and never span two lines, so s6-log and
journald take them as they are.
"""

from __future__ import annotations

import os
from collections.abc import Callable

PROG = "s6-tlsserver"


def say(prog: str, kind: str, message: str) -> None:
    """Write ``prog: kind: message`` on stderr, as skarnet's tools do.

    Paths go back as the bytes they were given; a closed stderr is ignored.
    """
    try:
        os.write(2, os.fsencode(f"{prog}: {kind}: {message}\n"))
    except (OSError, ValueError):
        pass


def one_line(text: str) -> str:
    """Fold anything a peer or the system could put in a message onto one line."""
    return text.replace("\n", " ").replace("\r", " ")


def endpoint(ip: str, port: int) -> str:
    """Format an address as upstream does in its logs: ``IP_PORT``."""
    return f"{ip}_{port}"


def accept(ip: str, port: int, pid: int, count: int, localmax: int) -> str:
    return f"accept {endpoint(ip, port)} pid {pid} count {count}/{localmax}"


def reject(ip: str, port: int, count: int, localmax: int) -> str:
    return f"reject {endpoint(ip, port)} count {count}/{localmax}"


def how_ended(status: int) -> str:
    """A wait status in upstream's words: ``exitcode N`` or ``signal N``."""
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exitcode {os.waitstatus_to_exitcode(status)}"


def end(pid: int, status: int, count: int, localmax: int) -> str:
    """The end of a session, from prog's wait status."""
    return f"end pid {pid} {how_ended(status)} count {count}/{localmax}"


def status(total: int, maxconn: int) -> str:
    return f"status: {total}/{maxconn}"


class Log:
    """Writes lines at or below the configured verbosity."""

    def __init__(self, verbosity: int, write: Callable[[bytes], object] | None = None) -> None:
        self.verbosity = verbosity
        self._write = write or (lambda data: os.write(2, data))

    def _line(self, level: str, message: str) -> None:
        try:
            self._write(f"{PROG}: {level}: {one_line(message)}\n".encode(errors="replace"))
        except OSError:
            pass  # a broken log pipe must not take the server down

    @property
    def verbose(self) -> bool:
        """Whether every-connection lines are shown: check before formatting them."""
        return self.verbosity >= 2

    def info(self, message: str) -> None:
        """Every-connection chatter: shown at -v."""
        if self.verbosity >= 2:
            self._line("info", message)

    def notice(self, message: str) -> None:
        """Information shown at the default verbosity, as upstream does (reject)."""
        if self.verbosity >= 1:
            self._line("info", message)

    def warning(self, message: str) -> None:
        if self.verbosity >= 1:
            self._line("warning", message)

    def fatal(self, message: str) -> None:
        self._line("fatal", message)
