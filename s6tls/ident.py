"""IDENT (RFC 1413) replies, parsed without any I/O."""

from __future__ import annotations

import re

IDENT_PORT = 113
# s6-networking reads at most this much of an IDENT reply line.
IDENT_REPLY_MAX = 1024


class IdentReplyError(Exception):
    """The reply carries no user id; ``answered_error`` if the server said ERROR."""

    def __init__(self, message: str, answered_error: bool = False) -> None:
        super().__init__(message)
        self.answered_error = answered_error


_IDENT_REPLY = re.compile(
    rb"[ \t]*(?P<rport>\d+)[ \t]*,[ \t]*(?P<lport>\d+)[ \t]*:[ \t]*"
    rb"(?:USERID[ \t]*:[^:]*:[ \t]?(?P<user>.*)|ERROR[ \t]*:[ \t]*(?P<error>.*))",
    re.DOTALL,
)


def parse_ident_reply(line: bytes, remote_port: int, local_port: int) -> str:
    """The user id in an IDENT reply line (without its newline); IdentReplyError otherwise.

    The reply is ``rport , lport : USERID : opsys[,charset] : user-id`` or
    ``rport , lport : ERROR : error-type``.
    """
    match = _IDENT_REPLY.fullmatch(line.removesuffix(b"\r"))
    if match is None or (int(match["rport"]), int(match["lport"])) != (remote_port, local_port):
        raise IdentReplyError(f"IDENT reply not understood: {_printable(line)}")
    if match["user"] is None:
        error = _printable(match["error"].strip())
        raise IdentReplyError(f"IDENT server answered ERROR : {error}", answered_error=True)
    # The id becomes an environment variable: cut at a NUL as upstream's C strings do.
    return match["user"].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _printable(text: bytes) -> str:
    """`text` fit for a one-line message."""
    return "".join(c if c.isprintable() else "?" for c in text.decode("ascii", "replace"))
