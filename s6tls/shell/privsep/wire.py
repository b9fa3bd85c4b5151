"""The helper's messages: JSON on a SOCK_SEQPACKET socketpair, descriptors beside.

Everything the requester sends is checked here before the helper uses it: a
fact becomes a Connection, a TlsInfo or a rule key only if each field has
the type and range it must have (``HelperError`` otherwise).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import socket
from collections.abc import Mapping
from typing import Any

from s6tls.environ import Connection
from s6tls.rules import Rule
from s6tls.sslvars import TlsInfo

MAX_MESSAGE = 1 << 20


class HelperError(Exception):
    """The helper refused or failed a request."""


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def text(value: object) -> str:
    if not isinstance(value, str) or "\0" in value:
        raise HelperError("bad request")
    return value


def _port(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise HelperError("bad request")
    return value


def _optional(value: object) -> str | None:
    return None if value is None else text(value)


def conn_facts(conn: Connection) -> dict[str, Any]:
    return dataclasses.asdict(conn)


def conn_from(facts: Mapping[str, Any]) -> Connection:
    """A Connection from a requester's facts, every field checked."""
    count = facts.get("connnum")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise HelperError("bad request")
    return Connection(
        local_ip=text(facts.get("local_ip")),
        local_port=_port(facts.get("local_port")),
        remote_ip=text(facts.get("remote_ip")),
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
        "alpn": info.alpn,
    }


def info_from(facts: Mapping[str, Any]) -> TlsInfo:
    der = _optional(facts.get("peer_der"))
    peer_der = base64.b64decode(der) if der else None
    subject = None
    if peer_der:
        from s6tls.certinfo import subject_of  # with client certificates only

        subject = subject_of(peer_der)  # read here, as the server reads it
    return TlsInfo(
        protocol=text(facts.get("protocol")),
        cipher=text(facts.get("cipher")),
        servername=_optional(facts.get("servername")),
        peer_der=peer_der,
        peer_subject=subject,
        alpn=_optional(facts.get("alpn")),
    )


def texts(value: object) -> list[str]:
    """A list of strings (rule keys), each checked."""
    if not isinstance(value, list):
        raise HelperError("bad request")
    return [text(item) for item in value]


def rule_facts(found: tuple[str, Rule] | None) -> Any:
    if found is None:
        return None
    key, rule = found
    return {"key": key, "allow": rule.allow, "env": rule.env, "exec": rule.exec}


def rule_from(facts: Any) -> tuple[str, Rule] | None:
    if facts is None:
        return None
    env = tuple((name, value) for name, value in facts["env"])
    return facts["key"], Rule(allow=facts["allow"], env=env, exec=facts["exec"])


def channel() -> tuple[socket.socket, socket.socket]:
    """A pair of connected sockets for requests and replies, each up to MAX_MESSAGE."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for s in (ours, theirs):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_MESSAGE)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, MAX_MESSAGE)
    return ours, theirs
