"""s6-tcprules add and remove: one rule put under a key of a rules directory, or taken away.

The options they share are read here: the key (or its shorthand), and the
``--env``, ``--unset`` and ``--exec`` that make a rule.
"""

from __future__ import annotations

from s6tls.commands.tcprules.failure import EXIT_USAGE, Failed
from s6tls.rules import Rule, RulesError, RuleTooBigError
from s6tls.rules.edit import NoRuleError, RuleExistsError, add_rule, canonical_key, remove_rule


def add(args: dict[str, object]) -> int:
    """Put the rule the options make under KEY in ``-i DIR``; exit 1 if KEY has one."""
    key = _key(args["KEY"])
    env: dict[str, str | None] = {}
    for assignment in args["--env"]:  # type: ignore[attr-defined]
        variable, equals, value = str(assignment).partition("=")
        if not equals:
            raise Failed(f"--env {assignment}: expected NAME=VALUE", EXIT_USAGE)
        if value != value.rstrip(" \t\r"):
            raise Failed(f"--env {assignment}: an envdir drops trailing blanks", EXIT_USAGE)
        _set(env, variable, value, f"--env {assignment}")
    for variable in args["--unset"]:  # type: ignore[attr-defined]
        _set(env, str(variable), None, f"--unset {variable}")
    command = "" if args["--exec"] is None else str(args["--exec"])
    rule = Rule(allow=bool(args["allow"]), env=tuple(sorted(env.items())), exec=command)
    try:
        add_rule(str(args["-i"]), key, rule, replace=bool(args["--replace"]))
    except RuleExistsError:
        raise Failed(f"{key} already has a rule (use --replace)", 1) from None
    except RuleTooBigError as e:
        raise Failed(f"{key}: {e}", EXIT_USAGE) from None
    except RulesError as e:
        raise Failed(str(e)) from None
    return 0


def remove(args: dict[str, object]) -> int:
    """Remove the rule under KEY from ``-i DIR``; exit 1 if KEY has none."""
    key = _key(args["KEY"])
    try:
        remove_rule(str(args["-i"]), key)
    except NoRuleError:
        raise Failed(f"{key} has no rule", 1) from None
    except RulesError as e:
        raise Failed(str(e)) from None
    return 0


def _key(text: object) -> str:
    try:
        return canonical_key(str(text))
    except ValueError as e:
        raise Failed(str(e), EXIT_USAGE) from None


def _set(env: dict[str, str | None], variable: str, value: str | None, option: str) -> None:
    if (
        not variable
        or variable.startswith(".")
        or any(c in variable for c in "/=\0")
        or (value is not None and "\0" in value)
    ):
        raise Failed(f"{option}: not a variable an envdir can hold", EXIT_USAGE)
    if variable in env:
        raise Failed(f"{option}: {variable} is given twice", EXIT_USAGE)
    env[variable] = value
