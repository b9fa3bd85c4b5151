"""The s6-tlsserver command line, parsed the way skarnet's tools parse it.

The usage text below is the single description of the options: getopt's
option string is read from its table, and the scan itself is POSIX getopt
(clustered flags, attached or separate arguments, ``--``, stop at the first
operand), so that of two contradicting flags the last one wins, as with
upstream.
"""

from __future__ import annotations

import getopt
import ipaddress
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from s6tls.errors import UsageError

USAGE = """\
Usage: s6-tlsserver [options] [--] ip port prog...

Server options:
  -q               verbosity 0: fatal errors only
  -Q               verbosity 1 (default): warnings and failures
  -v               verbosity 2: every connection
  -1               once listening, write the port and a newline to stdout, then close it
  -c maxconn       at most maxconn concurrent sessions (default 40)
  -C localmaxconn  at most localmaxconn concurrent sessions from one IP (default 40)
  -b backlog       listen backlog

Access options:
  -w               DNS and IDENT errors drop the connection
  -W               DNS and IDENT errors are tolerated (default)
  -d               keep Nagle's algorithm (default)
  -D               set TCP_NODELAY
  -r               IDENT lookups (RFC 1413)
  -R               no IDENT lookups (default)
  -p               paranoid: the remote name must resolve back to the remote IP
  -P               not paranoid (default)
  -H               no DNS lookups at all
  -h               consult /etc/hosts before DNS
  -l localname     TCPLOCALHOST=localname, without a lookup
  -B banner        write banner in cleartext right after accept
  -t timeout       milliseconds for all lookups of one connection (0: none)
  -i rulesdir      access rules from a directory
  -x rulesfile     access rules from a cdb file

TLS options:
  -Z               keep the TLS variables in prog's environment
  -z               remove the TLS variables from prog's environment (default)
  -S               on prog's EOF, send close_notify and close
  -s               on prog's EOF, half-close TCP and keep reading (default)
  -J               a peer EOF without close_notify is an error
  -j               a peer EOF without close_notify is normal (default)
  -Y               ask for an optional client certificate
  -y               require a client certificate
  -K kimeout       handshake timeout in milliseconds (0: none)
  -k snilevel      1: also serve KEYFILE:name/CERTFILE:name by SNI; 2: only those

Identity options:
  -u uid           run prog as this uid
  -g gid           run prog as this gid
  -G gid,gid       run prog with these supplementary groups
  -U               take uid, gid and groups from $UID, $GID and $GIDLIST

Proxy options:
  -L               each connection starts with a PROXY protocol v1 or v2 header
"""

SHORT_USAGE = "s6-tlsserver: usage: s6-tlsserver [ options ] [ -- ] ip port prog..."

MAXCONN_DEFAULT = 40
MAXCONN_MAX = 16384


class ClientCert(Enum):
    """Whether the TLS handshake asks the client for a certificate."""

    NONE = "none"
    OPTIONAL = "optional"
    REQUIRED = "required"


@dataclass(frozen=True)
class Options:
    """Everything the command line says, checked and normalised."""

    ip: str
    port: int
    prog: tuple[str, ...]
    verbosity: int = 1
    notify: bool = False
    maxconn: int = MAXCONN_DEFAULT
    localmaxconn: int = MAXCONN_DEFAULT
    backlog: int | None = None
    strict_lookups: bool = False
    nodelay: bool = False
    ident: bool = False
    paranoid: bool = False
    dns: bool = True
    hosts_first: bool = False
    localname: str | None = None
    banner: bytes | None = None
    lookup_timeout_ms: int = 0
    rulesdir: str | None = None
    rulesfile: str | None = None
    keep_tls_env: bool = False
    close_notify: bool = False
    require_close_notify: bool = False
    client_cert: ClientCert = ClientCert.NONE
    handshake_timeout_ms: int = 0
    snilevel: int = 0
    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] | None = None
    identity_from_env: bool = False
    proxy: bool = False

    @property
    def family_v6(self) -> bool:
        """True when listening on an IPv6 address."""
        return ":" in self.ip


def _optstring() -> str:
    """Build getopt's option string from the usage text's option table:
    ``  -c maxconn  ...`` is ``c:``, ``  -q  ...`` is ``q``."""
    table = re.findall(r"^  -(\w)( \w+)?", USAGE, re.MULTILINE)
    return "".join(letter + (":" if argument else "") for letter, argument in table)


OPTSTRING = _optstring()

# Flags that set one field to one value; for a pair, the last given wins.
_FLAGS: dict[str, tuple[str, object]] = {
    "-q": ("verbosity", 0),
    "-Q": ("verbosity", 1),
    "-v": ("verbosity", 2),
    "-1": ("notify", True),
    "-w": ("strict_lookups", True),
    "-W": ("strict_lookups", False),
    "-d": ("nodelay", False),
    "-D": ("nodelay", True),
    "-r": ("ident", True),
    "-R": ("ident", False),
    "-p": ("paranoid", True),
    "-P": ("paranoid", False),
    "-H": ("dns", False),
    "-h": ("hosts_first", True),
    "-Z": ("keep_tls_env", True),
    "-z": ("keep_tls_env", False),
    "-S": ("close_notify", True),
    "-s": ("close_notify", False),
    "-J": ("require_close_notify", True),
    "-j": ("require_close_notify", False),
    "-Y": ("client_cert", ClientCert.OPTIONAL),
    "-y": ("client_cert", ClientCert.REQUIRED),
    "-U": ("identity_from_env", True),
    "-L": ("proxy", True),
}

# Options with an unsigned integer argument, named as upstream names them in errors.
_NUMBERS: dict[str, tuple[str, str]] = {
    "-c": ("maxconn", "global-max-connections"),
    "-C": ("localmaxconn", "local-max-connections"),
    "-b": ("backlog", "backlog"),
    "-t": ("lookup_timeout_ms", "timeout"),
    "-K": ("handshake_timeout_ms", "handshake-timeout"),
    "-k": ("snilevel", "snilevel"),
    "-u": ("uid", "uid"),
    "-g": ("gid", "gid"),
}


def unsigned(text: str, what: str) -> int:
    """Parse a decimal unsigned integer as skarnet's tools accept it."""
    if not text.isascii() or not text.isdigit():
        raise UsageError(f"{what} must be an unsigned integer")
    return int(text)


def parse_groups(text: str) -> tuple[int, ...]:
    """Parse a comma-separated list of numeric group ids (may be empty)."""
    if text == "":
        return ()
    return tuple(unsigned(part, "gidlist") for part in text.split(","))


def parse(argv: list[str]) -> Options:
    """Turn s6-tlsserver's arguments (without argv[0]) into Options."""
    try:
        pairs, operands = getopt.getopt(argv, OPTSTRING)
    except getopt.GetoptError as e:
        if e.msg.startswith("option -") and "requires argument" in e.msg:
            raise UsageError(f"missing argument to option -{e.opt}") from None
        raise UsageError(f"unrecognized short option: {e.opt}") from None

    fields: dict[str, Any] = {}
    for flag, value in pairs:
        if flag in _FLAGS:
            name, setting = _FLAGS[flag]
            fields[name] = setting
        elif flag in _NUMBERS:
            name, what = _NUMBERS[flag]
            fields[name] = unsigned(value, what)
        elif flag == "-G":
            fields["groups"] = parse_groups(value)
        elif flag == "-l":
            fields["localname"] = value
        elif flag == "-B":
            fields["banner"] = value.encode("utf-8", "surrogateescape")
        elif flag == "-i":
            fields["rulesdir"] = value
        elif flag == "-x":
            fields["rulesfile"] = value

    if len(operands) < 3:
        raise UsageError("too few arguments")
    ip, port_text, *prog = operands
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        raise UsageError(f"invalid IP address: {ip}") from None
    port = unsigned(port_text, "port")
    if port > 65535:
        raise UsageError(f"invalid port: {port_text}")
    if "rulesdir" in fields and "rulesfile" in fields:
        raise UsageError("-i and -x are mutually exclusive")

    # Upstream counts 0 as 1, caps the global limit, and clamps the local one to it.
    maxconn = min(max(fields.pop("maxconn", MAXCONN_DEFAULT), 1), MAXCONN_MAX)
    localmax = max(fields.pop("localmaxconn", MAXCONN_DEFAULT), 1)
    return Options(
        ip=address.compressed,
        port=port,
        prog=tuple(prog),
        maxconn=maxconn,
        localmaxconn=min(localmax, maxconn),
        **fields,
    )
