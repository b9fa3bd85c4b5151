"""s6-tcprules list, and how the command writes a rule: one line, or JSON fields.

``check`` and ``import`` write the rules they show in the same forms.
"""

from __future__ import annotations

import json
import shlex
from operator import itemgetter

from s6tls.commands.tcprules.failure import Failed
from s6tls.rules import Rule, RulesError, most_specific_first, read_tree
from s6tls.rules.cdbfile import read_cdb_rules


def list_rules(args: dict[str, object]) -> int:
    """Print every rule of ``-i DIR`` or ``-x CDB`` in the order a lookup meets them."""
    try:
        if args["-i"] is not None:
            rules = read_tree(str(args["-i"]))
        else:
            rules = read_cdb_rules(str(args["-x"]))
    except RulesError as e:
        raise Failed(str(e)) from None
    for key in sorted(rules, key=most_specific_first):
        rule = rules[key]
        if args["--json"]:
            fields = {"key": key, "decision": "allow" if rule.allow else "deny", **changes(rule)}
            print(json.dumps(fields, ensure_ascii=False))
        else:
            print(rule_line(key, rule))
    return 0


def rule_line(key: str, rule: Rule) -> str:
    """One rule on one line: KEY allow|deny, then NAME=VALUE to set, NAME to unset, --exec=TEXT.

    Each word is quoted for a shell, or written as a JSON string when it is
    not printable on one line (an exec file usually ends with a newline).
    """
    words = [key, "allow" if rule.allow else "deny"]
    for name, value in variables(rule):
        words.append(name if value is None else f"{name}={value}")
    if rule.exec:
        words.append(f"--exec={rule.exec}")
    return " ".join(shlex.quote(w) if w.isprintable() else show(w) for w in words)


def changes(rule: Rule | None) -> dict[str, object]:
    """What a rule does to prog's environment and command, as JSON fields (nothing for a denial)."""
    if rule is None or not rule.allow:
        return {"set": {}, "unset": [], "exec": None}
    return {
        "set": {n: v for n, v in variables(rule) if v is not None},
        "unset": [n for n, v in variables(rule) if v is None],
        "exec": rule.exec or None,
    }


def variables(rule: Rule) -> list[tuple[str, str | None]]:
    """The rule's variables by name, so that a directory and its cdb read alike.

    skarnet's compiler writes them in the order the directory lists them.
    """
    return sorted(rule.env, key=itemgetter(0))


def show(text: str, *, quote: bool = False) -> str:
    """Text as is when it is printable on one line, else as a JSON string."""
    if text.isprintable() and not quote:
        return text
    return json.dumps(text, ensure_ascii=False)
