"""s6-tcprules: explain, list, script and import s6 access rules.

The command line is read here, and each verb runs from its own module:
``check`` from check.py, ``list`` from listing.py, ``add`` and ``remove``
from edit.py, ``import`` from importing.py. ``compile`` and ``decompile``
run the code of s6-accessrules-cdb-from-fs and s6-accessrules-fs-from-cdb
(so their messages carry those names).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import docopt

from s6tls.commands import cdb_from_fs, fs_from_cdb
from s6tls.commands.tcprules.check import check
from s6tls.commands.tcprules.edit import add, remove
from s6tls.commands.tcprules.failure import EXIT_USAGE, PROG, Failed
from s6tls.commands.tcprules.importing import import_rules
from s6tls.commands.tcprules.listing import list_rules
from s6tls.logline import say

USAGE = f"""Usage:
  {PROG} compile [-m MODE] [--] DIR CDB
  {PROG} decompile [--] CDB DIR
  {PROG} check (-i DIR | -x CDB) [-H] [-v] [--json] [--sni=NAME] [--alpn=PROTOCOL]
                    [--cert=FILE | --no-cert] [--] IP [NAME]
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
              (exit 0: allowed, 1: denied), before TLS and after its
              handshake; with IP -, for each line "IP [NAME]" of stdin
              (exit 1: one at least was denied)
  list        print every rule of DIR or CDB, one a line, in the order
              a lookup meets them
  import      translate djb tcprules text (FILE or stdin) into s6 rules;
              without -o or -x, list them
  add         put one rule under KEY in DIR, created if missing
              (exit 1: KEY has a rule)
  remove      remove the rule under KEY from DIR (exit 1: KEY has none)

KEY is ip4/ADDRESS_LENGTH, ip6/ADDRESS_LENGTH, reversedns/NAME,
reversedns/@, or the shorthand ADDRESS or ADDRESS/LENGTH; after the
handshake, sni/NAME, sni/@, sni/none, alpn/PROTOCOL, alpn/@, alpn/none,
certhash/SHA256:HEX, spki/SHA256:HEX, san/DNS:NAME, san/URI:URI,
san/email:ADDRESS, cn/TEXT, cert/@ or cert/none. add and remove write
the key as the server looks it up: the address in its canonical form, an
SNI or DNS name lower-cased, HEX the 64 digits of a SHA-256 digest in lower case
(SSL_PEER_CERT_HASH for certhash/), and a value escaped into one file
name (/ as %2F, % as %25, a leading . as %2E, other bytes as %XX) unless
it is written so already: san/URI:spiffe://example.org/x is
san/URI:spiffe:%2F%2Fexample.org%2Fx.

Options:
  -i DIR             rules directory
  -x CDB             rules cdb file
  -o DIR             rules directory to create
  -m MODE            permissions of the cdb file, in octal
  -H                 no names: for a server run with -H
  -v                 check: also list the keys tried, in order
  --sni=NAME         check: the client asks for NAME by SNI (else none)
  --alpn=PROTOCOL    check: the protocol negotiated by ALPN (else none)
  --cert=FILE        check: the client's certificate (PEM or DER), as
                     for a server run with -Y or -y
  --no-cert          check: a client that sent none, with -Y
  --json             print each answer or rule as one JSON object
  --env=NAME=VALUE   set NAME to VALUE for prog (repeatable)
  --unset=NAME       remove NAME from prog's environment (repeatable)
  --exec=TEXT        run execlineb -c TEXT instead of prog
  --replace          replace the rule KEY already has
  -h, --help         show this help
"""


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
    verb = next(word for word in _VERBS if args[word])
    try:
        return _VERBS[verb](args)
    except Failed as e:
        say(PROG, "fatal", str(e))
        return e.status


def _compile(args: dict[str, object]) -> int:
    mode = ["-m", str(args["-m"])] if args["-m"] is not None else []
    return cdb_from_fs.run([*mode, "--", str(args["CDB"]), str(args["DIR"])])


def _decompile(args: dict[str, object]) -> int:
    return fs_from_cdb.run([str(args["DIR"]), str(args["CDB"])])


# Each verb of the usage, and the function that runs it with the parsed command line.
_VERBS: dict[str, Callable[[dict[str, object]], int]] = {
    "compile": _compile,
    "decompile": _decompile,
    "check": check,
    "list": list_rules,
    "import": import_rules,
    "add": add,
    "remove": remove,
}
