"""s6-accessrules-cdb-from-fs: compile a rules directory into a cdb file, drop-in for skarnet's."""

from __future__ import annotations

import re
import sys

import docopt

from s6tls.logline import say
from s6tls.rules import RulesError, RuleTooBigError
from s6tls.rules.cdbfile import compile_dir, write_cdb

PROG = "s6-accessrules-cdb-from-fs"
USAGE = f"{PROG} [ -m mode ] cdbfile dir"

# Upstream parses options up to the first operand and ignores extra operands.
_GRAMMAR = f"""Usage: {PROG} [-m MODE] [--] CDBFILE DIR [IGNORED...]

Options:
  -m MODE, --mode=MODE  create CDBFILE with permissions MODE (octal)
"""

_OCTAL = re.compile(r"[0-7]+")
_UINT_MAX = 0xFFFFFFFF


def main() -> None:
    """Run the command with the process arguments and exit with its status."""
    sys.exit(run(sys.argv[1:]))


def run(argv: list[str]) -> int:
    """Compile as the command line asks; return the exit status (0, 100 or 111)."""
    try:
        args = docopt.docopt(_GRAMMAR, argv, default_help=False, options_first=True)
    except docopt.DocoptExit:
        return _say("usage", USAGE, 100)
    mode: int | None = None
    if args["--mode"] is not None:
        text = str(args["--mode"])
        if not _OCTAL.fullmatch(text) or int(text, 8) > _UINT_MAX:
            return _say("fatal", "mode needs to be an unsigned integer (in octal)", 100)
        mode = int(text, 8)
    try:
        write_cdb(str(args["CDBFILE"]), compile_dir(str(args["DIR"])), mode)
    except RuleTooBigError as e:
        return _say("fatal", str(e), 100)
    except RulesError as e:
        return _say("fatal", str(e), 111)
    return 0


def _say(kind: str, message: str, status: int) -> int:
    say(PROG, kind, message)
    return status
