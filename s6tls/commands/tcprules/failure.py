"""How an s6-tcprules verb fails: one message under the command's name, and an exit status."""

from __future__ import annotations

PROG = "s6-tcprules"

EXIT_USAGE = 100
EXIT_FAILURE = 111


class Failed(Exception):
    """End the command with one message and an exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.status = status
