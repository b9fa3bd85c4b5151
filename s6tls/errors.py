"""Errors a user can cause, each with the exit code upstream gives it."""


class S6tlsError(Exception):
    """A failure reported as one line, then the process exits with `exitcode`."""

    exitcode = 111


class UsageError(S6tlsError):
    """The command line or the start-up environment is wrong (exit 100)."""

    exitcode = 100


class SystemFailure(S6tlsError):
    """The system refused something at start-up: bind, key files (exit 111)."""

    exitcode = 111
