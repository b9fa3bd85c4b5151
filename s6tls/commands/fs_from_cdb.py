"""s6-accessrules-fs-from-cdb: decompile a rules cdb into a directory, drop-in for skarnet's."""

from __future__ import annotations

import sys

import docopt

from s6tls.logline import say
from s6tls.rules import RulesError, decode_all, write_tree
from s6tls.rules.cdbfile import read_cdb

PROG = "s6-accessrules-fs-from-cdb"
USAGE = f"{PROG} dir cdbfile"

# Upstream takes no options: every word is an operand, extra ones ignored.
# run() puts "--" first so that docopt reads a leading "-x" as a name too.
_GRAMMAR = f"Usage: {PROG} [--] DIR CDBFILE [IGNORED...]\n"


def main() -> None:
    """Run the command with the process arguments and exit with its status."""
    sys.exit(run(sys.argv[1:]))


def run(argv: list[str]) -> int:
    """Decompile as the command line asks; return the exit status (0, 100 or 111)."""
    try:
        args = docopt.docopt(_GRAMMAR, ["--", *argv], default_help=False, options_first=True)
    except docopt.DocoptExit:
        return _say("usage", USAGE, 100)
    directory, cdbfile = str(args["DIR"]), str(args["CDBFILE"])
    try:
        records = read_cdb(cdbfile)
    except RulesError as e:
        return _say("fatal", str(e), 111)
    try:
        rules = decode_all(records)
    except RulesError:
        invalid = f"{cdbfile} does not contain valid accessrules data"
        return _say("fatal", f"unable to handle cdb record: {invalid}", 111)
    try:
        write_tree(directory, rules)
    except RulesError as e:
        return _say("fatal", str(e), 111)
    return 0


def _say(kind: str, message: str, status: int) -> int:
    say(PROG, kind, message)
    return status
