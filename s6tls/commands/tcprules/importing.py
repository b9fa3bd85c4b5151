"""s6-tcprules import: djb's tcprules text translated into s6 rules, exactly or not at all.

The rules become a new directory (``-o``), a cdb file (``-x``), or lines on
stdout naming the tcprules line each comes from.
"""

from __future__ import annotations

import os
import re
import sys

from s6tls.commands.tcprules.failure import EXIT_USAGE, PROG, Failed
from s6tls.commands.tcprules.listing import rule_line
from s6tls.logline import say
from s6tls.rules import RulesError, encode
from s6tls.rules.cdbfile import write_cdb
from s6tls.rules.edit import create_ruleset
from s6tls.rules.tcprules_convert import convert_tcprules
from s6tls.rules.tcprules_text import TcpRulesError, parse_tcprules

_OCTAL = re.compile(r"[0-7]+")
_UINT_MAX = 0xFFFFFFFF


def import_rules(args: dict[str, object]) -> int:
    """Translate FILE (or stdin) and write or list the rules; exit 100 if it cannot be exact."""
    path = args["FILE"]
    label = "stdin" if path is None or path == "-" else str(path)
    try:
        if path is None or path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(str(path), "rb") as file:
                data = file.read()
    except OSError as e:
        raise Failed(f"unable to read {label}: {e.strerror}") from None
    mode = _mode(args["-m"])
    try:
        conversion = convert_tcprules(parse_tcprules(os.fsdecode(data)), names=not args["-H"])
    except TcpRulesError as e:
        for problem in e.problems[:-1]:
            say(PROG, "fatal", f"{label}: {problem}")
        raise Failed(f"{label}: {e.problems[-1]}", EXIT_USAGE) from None
    for warning in conversion.warnings:
        say(PROG, "warning", f"{label}: {warning}")
    try:
        if args["-o"] is not None:
            create_ruleset(str(args["-o"]), conversion.rules)
        elif args["-x"] is not None:
            records = {key: encode(rule) for key, rule in conversion.rules.items()}
            write_cdb(str(args["-x"]), records, mode)
        else:
            for key, rule in conversion.rules.items():
                origin = conversion.origin[key]
                where = "tcpserver's default" if origin is None else f"line {origin}"
                print(f"{rule_line(key, rule)}  # {where}")
    except RulesError as e:
        raise Failed(str(e)) from None
    return 0


def _mode(text: object) -> int | None:
    if text is None:
        return None
    if not _OCTAL.fullmatch(str(text)) or int(str(text), 8) > _UINT_MAX:
        raise Failed("mode needs to be an unsigned integer (in octal)", EXIT_USAGE)
    return int(str(text), 8)
