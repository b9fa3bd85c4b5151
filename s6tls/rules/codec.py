"""A rule and its cdb value, byte-compatible with skarnet's s6-accessrules-cdb-from-fs."""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from s6tls.rules.errors import NotARuleError, RulesError, RuleTooBigError

ENV_MAX = 4096
EXEC_MAX = 4096
# 'A', u16 env length, env block, u16 exec length, exec text.
_VALUE_MAX = 1 + 2 + ENV_MAX + 2 + EXEC_MAX


@dataclass(frozen=True)
class Rule:
    """An access decision; when allowed, the environment changes and the command to run instead.

    ``env`` holds (NAME, value) pairs where a None value removes NAME; an empty
    ``exec`` means no override.
    """

    allow: bool
    env: tuple[tuple[str, str | None], ...] = ()
    exec: str = ""


def encode(rule: Rule) -> bytes:
    """Return the cdb value of ``rule``; RuleTooBigError if env or exec exceeds 4096 bytes."""
    if not rule.allow:
        return b"D"
    env = b"".join(_encode_variable(name, value) for name, value in rule.env)
    if len(env) > ENV_MAX:
        raise RuleTooBigError("env", len(env))
    command = os.fsencode(rule.exec)
    if len(command) > EXEC_MAX:
        raise RuleTooBigError("exec", len(command))
    return b"A" + struct.pack(">H", len(env)) + env + struct.pack(">H", len(command)) + command


def decode(value: bytes) -> Rule:
    """Return the rule stored in a cdb value; RulesError if it is malformed.

    A value whose type byte is neither A nor D raises NotARuleError, the subclass
    for "no rule here".
    """
    # The checks and their order are s6_accessrules_backend_cdb's: a value
    # starting with D is a deny whatever follows; any other type byte means
    # the key is not a rule; A must be followed by exactly the two lengths.
    if not value or len(value) > _VALUE_MAX:
        raise RulesError(f"invalid rule value: {len(value)} bytes")
    kind = value[:1]
    if kind == b"D":
        return Rule(allow=False)
    if kind != b"A":
        raise NotARuleError(f"not a rule value: type {kind!r}")
    if len(value) < 5:
        raise RulesError("invalid rule value: truncated")
    (env_len,) = struct.unpack_from(">H", value, 1)
    if env_len > ENV_MAX or len(value) - 5 < env_len:
        raise RulesError(f"invalid rule value: env length {env_len}")
    (exec_len,) = struct.unpack_from(">H", value, 3 + env_len)
    if exec_len > EXEC_MAX or 5 + env_len + exec_len != len(value):
        raise RulesError(f"invalid rule value: exec length {exec_len}")
    env = _decode_env(value[3 : 3 + env_len])
    command = os.fsdecode(value[5 + env_len :])
    return Rule(allow=True, env=env, exec=command)


def decode_all(records: Mapping[str, bytes]) -> dict[str, Rule]:
    """Return the rules of cdb records, by key; RulesError naming the key of a malformed value.

    A value that is no rule (NotARuleError) is left out, as lookups treat its
    key as absent.
    """
    rules: dict[str, Rule] = {}
    for key, value in records.items():
        try:
            rules[key] = decode(value)
        except NotARuleError:
            continue
        except RulesError as e:
            raise RulesError(f"key {key}: {e}") from None
    return rules


def _encode_variable(name: str, value: str | None) -> bytes:
    raw_name = os.fsencode(name)
    if not raw_name or b"=" in raw_name or b"\0" in raw_name:
        raise RulesError(f"invalid variable name {name!r}")
    if value is None:
        return raw_name + b"\0"
    raw_value = os.fsencode(value)
    if b"\0" in raw_value:
        raise RulesError(f"invalid value for variable {name!r}: holds a NUL byte")
    return raw_name + b"=" + raw_value + b"\0"


def _decode_env(block: bytes) -> tuple[tuple[str, str | None], ...]:
    # Entries are NAME=value\0 (set) or NAME\0 (unset), as skalibs' env_addmodif
    # writes them; s6-accessrules-fs-from-cdb rejects an unterminated last entry.
    if block and not block.endswith(b"\0"):
        raise RulesError("invalid rule value: unterminated env block")
    env: list[tuple[str, str | None]] = []
    for entry in block[:-1].split(b"\0") if block else ():
        name, sep, raw_value = entry.partition(b"=")
        if not name:
            raise RulesError("invalid rule value: empty variable name in env block")
        env.append((os.fsdecode(name), os.fsdecode(raw_value) if sep else None))
    return tuple(env)
