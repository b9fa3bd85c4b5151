"""A systemd unit's command line and environment, worked out as systemd does.

systemd is not PID 1 where the tests run, so a test that runs a unit's
command (under systemd-socket-activate) takes ExecStart= and
EnvironmentFile= from the unit file itself, never re-typed, and expands them
the way systemd does: ``%i`` is the instance, a word ``$NAME`` becomes the
value's words, ``${NAME}`` the value as one word.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path

# Settings of s6tls@.service's environment file that prog must not see: the
# command line's four (the unit's ExecStart takes them out with env -u) and
# the server's own.
NOT_FOR_PROG = frozenset({"ADDRESS", "PORT", "OPTIONS", "PROG", "KEYFILE", "TLS_UID"})

# What systemd gives a system service when the unit sets no PATH.
SERVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_BRACED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_WORD = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


def directive(unit: str, name: str) -> str:
    """The value of the one line ``name=`` in the unit's text."""
    values = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(f"{name}=")]
    if len(values) != 1:
        raise ValueError(f"{len(values)} {name}= lines in the unit")
    return values[0]


def specifiers(text: str, instance: str) -> str:
    """%i, %I and %% in a unit setting (only instance names that need no escaping)."""

    def one(m: re.Match[str]) -> str:
        letter = m.group(1)
        if letter in "iI":
            return instance
        if letter == "%":
            return "%"
        raise ValueError(f"specifier %{letter} is not handled here")

    return re.sub(r"%(.)", one, text)


def environment_file(text: str) -> dict[str, str]:
    """NAME=value lines of a systemd environment file; # and ; start comments."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        name, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name.strip()):
            raise ValueError(f"not an assignment: {line!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[name.strip()] = value
    return env


def configure(example: str, **values: str) -> str:
    """The example environment file with these NAME=value lines replaced."""
    for name, value in values.items():
        example, count = re.subn(rf"^{name}=.*$", f"{name}={value}", example, flags=re.M)
        if count != 1:
            raise ValueError(f"{name}= is not in the example once")
    return example


def command_line(exec_start: str, env: Mapping[str, str], instance: str) -> list[str]:
    """ExecStart= as systemd runs it, with the environment the unit gives."""
    argv: list[str] = []
    for word in shlex.split(specifiers(exec_start, instance)):
        whole = _WORD.fullmatch(word)
        if whole:
            argv += shlex.split(env.get(whole.group(1), ""))
        else:
            argv.append(_BRACED.sub(lambda m: env.get(m.group(1), ""), word))
    return argv


def service_command(
    unit_path: Path, instance: str, root: Path = Path("/")
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of ``unit@instance``, its environment file read under root."""
    unit = unit_path.read_text()
    env_path = specifiers(directive(unit, "EnvironmentFile"), instance)
    env = {"PATH": SERVICE_PATH, **environment_file((root / env_path.lstrip("/")).read_text())}
    return command_line(directive(unit, "ExecStart"), env, instance), env
