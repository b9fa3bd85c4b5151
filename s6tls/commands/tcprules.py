"""s6-tcprules: explain, list, script and import s6 access rules.

``compile`` and ``decompile`` run the code of s6-accessrules-cdb-from-fs and
s6-accessrules-fs-from-cdb (so their messages carry those names);
``import`` translates djb's tcprules text exactly or not at all.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from operator import itemgetter
from typing import Literal

import docopt

from s6tls.commands import cdb_from_fs, fs_from_cdb
from s6tls.logline import say
from s6tls.rules import (
    DirRules,
    Rule,
    RulesError,
    RuleSource,
    RuleTooBigError,
    check_dir,
    encode,
    most_specific_first,
    read_tree,
)
from s6tls.rules.cdbfile import CdbRules, read_cdb_rules, write_cdb
from s6tls.rules.edit import (
    Explanation,
    NoRuleError,
    RuleExistsError,
    add_rule,
    canonical_key,
    create_ruleset,
    explain,
    remove_rule,
)
from s6tls.rules.tcprules_text import TcpRulesError, convert_tcprules, parse_tcprules

PROG = "s6-tcprules"

USAGE = f"""Usage:
  {PROG} compile [-m MODE] [--] DIR CDB
  {PROG} decompile [--] CDB DIR
  {PROG} check (-i DIR | -x CDB) [-H] [-v] [--json] [--] IP [NAME]
  {PROG} list (-i DIR | -x CDB) [--json]
  {PROG} import [-H] [-o DIR | -x CDB [-m MODE]] [--] [FILE]
  {PROG} add -i DIR [--replace] [--env=NAME=VALUE]... [--unset=NAME]... [--exec=TEXT] [--] KEY allow
  {PROG} add -i DIR [--replace] [--] KEY deny
  {PROG} remove -i DIR [--] KEY
  {PROG} (-h | --help)
"""

HELP = f"""{USAGE}
Commands:
  compile     compile the rules directory DIR into the cdb file CDB
  decompile   write the rules of the cdb file CDB as the new directory DIR
  check       say how the rules decide for a client at IP named NAME
              (exit 0: allowed, 1: denied); with IP -, for each line
              "IP [NAME]" of stdin (exit 1: one at least was denied)
  list        print every rule of DIR or CDB, one a line, in the order
              a lookup meets them
  import      translate djb tcprules text (FILE or stdin) into s6 rules;
              without -o or -x, list them
  add         put one rule under KEY in DIR, created if missing
              (exit 1: KEY has a rule)
  remove      remove the rule under KEY from DIR (exit 1: KEY has none)

KEY is ip4/ADDRESS_LENGTH, ip6/ADDRESS_LENGTH, reversedns/NAME,
reversedns/@, or the shorthand ADDRESS or ADDRESS/LENGTH.

Options:
  -i DIR             rules directory
  -x CDB             rules cdb file
  -o DIR             rules directory to create
  -m MODE            permissions of the cdb file, in octal
  -H                 no names: for a server run with -H
  -v                 check: also list the keys tried, in order
  --json             print each answer or rule as one JSON object
  --env=NAME=VALUE   set NAME to VALUE for prog (repeatable)
  --unset=NAME       remove NAME from prog's environment (repeatable)
  --exec=TEXT        run execlineb -c TEXT instead of prog
  --replace          replace the rule KEY already has
  -h, --help         show this help
"""

# How check answers: the decision and what it changes, the same with the keys tried, or JSON.
_Form = Literal["short", "verbose", "json"]

EXIT_USAGE = 100
EXIT_FAILURE = 111
_OCTAL = re.compile(r"[0-7]+")
_UINT_MAX = 0xFFFFFFFF


class _Failed(Exception):
    """End the command with one message and an exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.status = status


def main() -> None:
    """Run the command with the process arguments and exit with its status."""
    sys.exit(run(sys.argv[1:]))


def run(argv: list[str]) -> int:
    """Run one subcommand; return its exit status (0, 1, 100 or 111)."""
    try:
        args = docopt.docopt(HELP, argv, default_help=False)
    except docopt.DocoptExit:
        sys.stderr.write(f"{PROG}: usage:\n{USAGE.partition(chr(10))[2].rstrip()}\n")
        return EXIT_USAGE
    if args["--help"]:
        sys.stdout.write(HELP)
        return 0
    try:
        if args["compile"]:
            return _compile(args)
        if args["decompile"]:
            return fs_from_cdb.run([str(args["DIR"]), str(args["CDB"])])
        if args["check"]:
            return _check(args)
        if args["list"]:
            return _list(args)
        if args["import"]:
            return _import(args)
        if args["add"]:
            return _add(args)
        return _remove(args)
    except _Failed as e:
        say(PROG, "fatal", str(e))
        return e.status


def _compile(args: dict[str, object]) -> int:
    mode = ["-m", str(args["-m"])] if args["-m"] is not None else []
    return cdb_from_fs.run([*mode, "--", str(args["CDB"]), str(args["DIR"])])


def _check(args: dict[str, object]) -> int:
    source: RuleSource
    if args["-i"] is not None:
        directory = str(args["-i"])
        try:
            check_dir(directory)  # the server would deny everyone; say why instead
        except RulesError as e:
            raise _Failed(str(e)) from None
        source = DirRules(directory)
    else:
        source = CdbRules(str(args["-x"]))
    names = not args["-H"]
    form: _Form = "json" if args["--json"] else "verbose" if args["-v"] else "short"
    if args["IP"] != "-":
        name = None if args["NAME"] is None else str(args["NAME"])
        return 0 if _answer(source, str(args["IP"]), name, names, form) else 1
    if args["NAME"] is not None:
        raise _Failed("NAME cannot follow - (give names on the lines of stdin)", EXIT_USAGE)
    allowed = True
    answered = False
    for number, line in enumerate(sys.stdin.buffer.read().splitlines(), start=1):
        words = os.fsdecode(line).split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) > 2:
            raise _Failed(f"stdin line {number}: expected IP [NAME]", EXIT_USAGE)
        if answered and form != "json":
            sys.stdout.write("\n")  # a blank line between two answers
        answered = True
        name = words[1] if len(words) == 2 else None
        try:
            allowed = _answer(source, words[0], name, names, form) and allowed
        except _Failed as e:
            raise _Failed(f"stdin line {number}: {e}", e.status) from None
    return 0 if allowed else 1


def _answer(source: RuleSource, ip: str, name: str | None, names: bool, form: _Form) -> bool:
    """Print how ``source`` decides for one client, in ``form``; tell whether it is allowed."""
    try:
        answer = explain(source, ip, name if names else None)
    except ValueError:
        raise _Failed(f"invalid IP address: {ip}", EXIT_USAGE) from None
    except RulesError as e:
        raise _Failed(str(e)) from None
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
        **_changes(answer.rule),
        "tried": list(answer.tried),
    }


def _changes(rule: Rule | None) -> dict[str, object]:
    """What a rule does to prog's environment and command, as JSON fields (nothing for a denial)."""
    if rule is None or not rule.allow:
        return {"set": {}, "unset": [], "exec": None}
    return {
        "set": {n: v for n, v in _variables(rule) if v is not None},
        "unset": [n for n, v in _variables(rule) if v is None],
        "exec": rule.exec or None,
    }


def _variables(rule: Rule) -> list[tuple[str, str | None]]:
    """The rule's variables by name, so that a directory and its cdb read alike.

    skarnet's compiler writes them in the order the directory lists them.
    """
    return sorted(rule.env, key=itemgetter(0))


def _as_text(answer: Explanation, ignored_name: str | None, *, tried: bool) -> str:
    name = answer.name or "no name"
    if ignored_name is not None:
        name = f"no name ({_show(ignored_name)} ignored: -H)"
    lines = [f"client: {answer.ip}, {name}"]
    rule = answer.rule
    lines.append(f"decision: {'allow' if answer.allowed else 'deny'}")
    lines.append(f"key: {answer.key}" if answer.key else "key: none (no rule matches)")
    if rule is not None and rule.allow:
        for variable, value in _variables(rule):
            if value is None:
                lines.append(f"unset: {variable}")
            else:
                lines.append(f"set: {variable}={_show(value)}")
        if rule.exec:
            lines.append(f"exec: execlineb -c {_show(rule.exec, quote=True)}")
    if tried:
        lines += [f"tried: {key}" for key in answer.tried]
    return "".join(f"{line}\n" for line in lines)


def _show(text: str, *, quote: bool = False) -> str:
    """Text as is when it is printable on one line, else as a JSON string."""
    if text.isprintable() and not quote:
        return text
    return json.dumps(text, ensure_ascii=False)


def _import(args: dict[str, object]) -> int:
    path = args["FILE"]
    label = "stdin" if path is None or path == "-" else str(path)
    try:
        if path is None or path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(str(path), "rb") as file:
                data = file.read()
    except OSError as e:
        raise _Failed(f"unable to read {label}: {e.strerror}") from None
    mode = _mode(args["-m"])
    try:
        conversion = convert_tcprules(parse_tcprules(os.fsdecode(data)), names=not args["-H"])
    except TcpRulesError as e:
        for problem in e.problems[:-1]:
            say(PROG, "fatal", f"{label}: {problem}")
        raise _Failed(f"{label}: {e.problems[-1]}", EXIT_USAGE) from None
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
                print(f"{_listing(key, rule)}  # {where}")
    except RulesError as e:
        raise _Failed(str(e)) from None
    return 0


def _list(args: dict[str, object]) -> int:
    try:
        if args["-i"] is not None:
            rules = read_tree(str(args["-i"]))
        else:
            rules = read_cdb_rules(str(args["-x"]))
    except RulesError as e:
        raise _Failed(str(e)) from None
    for key in sorted(rules, key=most_specific_first):
        rule = rules[key]
        if args["--json"]:
            fields = {"key": key, "decision": "allow" if rule.allow else "deny", **_changes(rule)}
            print(json.dumps(fields, ensure_ascii=False))
        else:
            print(_listing(key, rule))
    return 0


def _listing(key: str, rule: Rule) -> str:
    """One rule on one line: KEY allow|deny, then NAME=VALUE to set, NAME to unset, --exec=TEXT.

    Each word is quoted for a shell, or written as a JSON string when it is
    not printable on one line (an exec file usually ends with a newline).
    """
    words = [key, "allow" if rule.allow else "deny"]
    for name, value in _variables(rule):
        words.append(name if value is None else f"{name}={value}")
    if rule.exec:
        words.append(f"--exec={rule.exec}")
    return " ".join(shlex.quote(w) if w.isprintable() else _show(w) for w in words)


def _mode(text: object) -> int | None:
    if text is None:
        return None
    if not _OCTAL.fullmatch(str(text)) or int(str(text), 8) > _UINT_MAX:
        raise _Failed("mode needs to be an unsigned integer (in octal)", EXIT_USAGE)
    return int(str(text), 8)


def _key(text: object) -> str:
    try:
        return canonical_key(str(text))
    except ValueError as e:
        raise _Failed(str(e), EXIT_USAGE) from None


def _add(args: dict[str, object]) -> int:
    key = _key(args["KEY"])
    env: dict[str, str | None] = {}
    for assignment in args["--env"]:  # type: ignore[attr-defined]
        variable, equals, value = str(assignment).partition("=")
        if not equals:
            raise _Failed(f"--env {assignment}: expected NAME=VALUE", EXIT_USAGE)
        if value != value.rstrip(" \t\r"):
            raise _Failed(f"--env {assignment}: an envdir drops trailing blanks", EXIT_USAGE)
        _set(env, variable, value, f"--env {assignment}")
    for variable in args["--unset"]:  # type: ignore[attr-defined]
        _set(env, str(variable), None, f"--unset {variable}")
    command = "" if args["--exec"] is None else str(args["--exec"])
    rule = Rule(allow=bool(args["allow"]), env=tuple(sorted(env.items())), exec=command)
    try:
        add_rule(str(args["-i"]), key, rule, replace=bool(args["--replace"]))
    except RuleExistsError:
        raise _Failed(f"{key} already has a rule (use --replace)", 1) from None
    except RuleTooBigError as e:
        raise _Failed(f"{key}: {e}", EXIT_USAGE) from None
    except RulesError as e:
        raise _Failed(str(e)) from None
    return 0


def _set(env: dict[str, str | None], variable: str, value: str | None, option: str) -> None:
    if (
        not variable
        or variable.startswith(".")
        or any(c in variable for c in "/=\0")
        or (value is not None and "\0" in value)
    ):
        raise _Failed(f"{option}: not a variable an envdir can hold", EXIT_USAGE)
    if variable in env:
        raise _Failed(f"{option}: {variable} is given twice", EXIT_USAGE)
    env[variable] = value


def _remove(args: dict[str, object]) -> int:
    key = _key(args["KEY"])
    try:
        remove_rule(str(args["-i"]), key)
    except NoRuleError:
        raise _Failed(f"{key} has no rule", 1) from None
    except RulesError as e:
        raise _Failed(str(e)) from None
    return 0
