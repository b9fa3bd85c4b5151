"""s6-tcprules check: how the rules decide for a client, as text or JSON.

The facts about the client (its address, its name) come from the command
line or, with IP ``-``, from the lines of stdin.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Literal

from s6tls.commands.tcprules.failure import EXIT_USAGE, Failed
from s6tls.commands.tcprules.listing import changes, show, variables
from s6tls.rules import DirRules, RulesError, RuleSource, check_dir
from s6tls.rules.cdbfile import CdbRules
from s6tls.rules.edit import Explanation, explain

# How check answers: the decision and what it changes, the same with the keys tried, or JSON.
_Form = Literal["short", "verbose", "json"]


def check(args: dict[str, object]) -> int:
    """Answer for IP [NAME], or for each line of stdin; 0 if every client is allowed, else 1."""
    source: RuleSource
    if args["-i"] is not None:
        directory = str(args["-i"])
        try:
            check_dir(directory)  # the server would deny everyone; say why instead
        except RulesError as e:
            raise Failed(str(e)) from None
        source = DirRules(directory)
    else:
        source = CdbRules(str(args["-x"]))
    names = not args["-H"]
    form: _Form = "json" if args["--json"] else "verbose" if args["-v"] else "short"
    if args["IP"] != "-":
        name = None if args["NAME"] is None else str(args["NAME"])
        return 0 if _answer(source, str(args["IP"]), name, names, form) else 1
    if args["NAME"] is not None:
        raise Failed("NAME cannot follow - (give names on the lines of stdin)", EXIT_USAGE)
    allowed = True
    answered = False
    for number, line in enumerate(sys.stdin.buffer.read().splitlines(), start=1):
        words = os.fsdecode(line).split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) > 2:
            raise Failed(f"stdin line {number}: expected IP [NAME]", EXIT_USAGE)
        if answered and form != "json":
            sys.stdout.write("\n")  # a blank line between two answers
        answered = True
        name = words[1] if len(words) == 2 else None
        try:
            allowed = _answer(source, words[0], name, names, form) and allowed
        except Failed as e:
            raise Failed(f"stdin line {number}: {e}", e.status) from None
    return 0 if allowed else 1


def _answer(source: RuleSource, ip: str, name: str | None, names: bool, form: _Form) -> bool:
    """Print how ``source`` decides for one client, in ``form``; tell whether it is allowed."""
    try:
        answer = explain(source, ip, name if names else None)
    except ValueError:
        raise Failed(f"invalid IP address: {ip}", EXIT_USAGE) from None
    except RulesError as e:
        raise Failed(str(e)) from None
    if form == "json":
        print(json.dumps(_as_json(answer), ensure_ascii=False))
    else:
        ignored = None if names else name
        sys.stdout.write(_as_text(answer, ignored, tried=form == "verbose"))
    sys.stdout.flush()
    return answer.allowed


def _as_json(answer: Explanation) -> dict[str, object]:
    return {
        "ip": answer.ip,
        "name": answer.name,
        "decision": "allow" if answer.allowed else "deny",
        "key": answer.key,
        **changes(answer.rule),
        "tried": list(answer.tried),
    }


def _as_text(answer: Explanation, ignored_name: str | None, *, tried: bool) -> str:
    name = answer.name or "no name"
    if ignored_name is not None:
        name = f"no name ({show(ignored_name)} ignored: -H)"
    lines = [f"client: {answer.ip}, {name}"]
    rule = answer.rule
    lines.append(f"decision: {'allow' if answer.allowed else 'deny'}")
    lines.append(f"key: {answer.key}" if answer.key else "key: none (no rule matches)")
    if rule is not None and rule.allow:
        for variable, value in variables(rule):
            if value is None:
                lines.append(f"unset: {variable}")
            else:
                lines.append(f"set: {variable}={show(value)}")
        if rule.exec:
            lines.append(f"exec: execlineb -c {show(rule.exec, quote=True)}")
    if tried:
        lines += [f"tried: {key}" for key in answer.tried]
    return "".join(f"{line}\n" for line in lines)
