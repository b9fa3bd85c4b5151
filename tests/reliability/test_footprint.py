"""What an idle server holds, seen from outside: no code for options it was not given,
and little memory beyond what any gevent TLS server needs.

Which modules a process imported, the interpreter itself reports on stderr
when PYTHONVERBOSE is set (``import 'dns.message' # ...``); which extension
modules it loaded, /proc/PID/maps shows. An idle ``-H`` server with no rules
must not load the DNS and IDENT code (dnspython) or the cdb code (cdbx); the
options that need them must.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from s6tls.rules.cdbfile import write_cdb
from tests.reliability import observe
from tests.support import client
from tests.support.server import Running, wait_for

pytestmark = pytest.mark.timeout(60)

# Modules by the options that need them.
LOOKUP_MODULES = ("dns", "s6tls.shell.names", "s6tls.shell.dnsclient", "s6tls.ident")
CDB_MODULES = ("cdbx", "s6tls.rules.cdbfile")
# The TLS stage's keys come with rules, the certificate reader with -Y or -y;
# the calendar (and the datetime and locale it brings) with dnspython only.
RULES_MODULES = ("s6tls.rules.tlskeys",)
CERTIFICATE_MODULES = ("s6tls.certinfo",)
CALENDAR_MODULES = ("calendar", "datetime", "locale")
CDB_LIBRARY = "/cdbx/_cdb."  # cdbx's extension module, as mapped


def imported(srv: Running) -> set[str]:
    """The modules the server imported, from the interpreter's own trace."""
    return set(re.findall(r"^import '([\w.]+)'", srv.log(), re.MULTILINE))


def loads(modules: set[str], packages: tuple[str, ...]) -> bool:
    return any(m == p or m.startswith(p + ".") for m in modules for p in packages)


def one_session(port: int) -> None:
    with client.connect(port) as s:
        assert client.echo(s) == b"ping\n"


def idle_after_sessions(srv: Running, count: int = 3) -> None:
    for _ in range(count):
        one_session(srv.port)
    assert wait_for(lambda: not srv.children())


@pytest.fixture
def cdbfile(tmp_path: Path) -> str:
    path = tmp_path / "rules.cdb"
    write_cdb(str(path), {"ip4/0.0.0.0_0": b"A\0\0\0\0"})
    return str(path)


@pytest.mark.parametrize(
    ("options", "lookups", "cdb"),
    [
        (["-H"], False, False),
        (["-H", "-r"], True, False),  # IDENT
        ([], True, False),  # DNS
        (["-H", "-x", "CDB"], False, True),
    ],
    ids=["H", "H-r", "dns", "H-x"],
)
def test_code_is_loaded_only_for_the_options_that_need_it(
    server, pki, cdbfile, options, lookups, cdb
):
    args = [cdbfile if a == "CDB" else a for a in options]
    srv = server(*args, "127.0.0.1", "0", "/bin/cat", env={**pki.env(), "PYTHONVERBOSE": "1"})
    if not lookups:  # a session, to see that serving loads nothing more
        idle_after_sessions(srv, count=1)
    modules = imported(srv)
    assert "s6tls.shell.main" in modules  # the trace is there
    assert loads(modules, LOOKUP_MODULES) == lookups
    assert loads(modules, CDB_MODULES) == cdb
    assert loads(modules, RULES_MODULES) == cdb
    assert not loads(modules, CERTIFICATE_MODULES)
    assert loads(modules, CALENDAR_MODULES) == lookups
    mapped = observe.mapped_files(srv.pid)
    assert any(CDB_LIBRARY in path for path in mapped) == cdb


# The least any gevent TLS server holds: the interpreter, gevent's hub, one
# context with its key pair, a listening socket, a few sessions served.
BARE_SERVER = """
import sys, ssl, gevent.socket
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[1])
listener = gevent.socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
print(listener.getsockname()[1], flush=True)
while True:
    with ctx.wrap_socket(listener.accept()[0], server_side=True) as tls:
        tls.sendall(tls.recv(100))
"""

# s6tls's own code and state: 2.1 to 2.7 MiB of private memory here (Python
# 3.11, gevent 26); loading the lookup code and dnspython adds about 4 MiB, and
# the server held 6.9 MiB more than the bare one before its imports were trimmed.
OWN_MIB = 4


def test_idle_server_holds_little_more_than_a_bare_gevent_tls_server(server, pki):
    srv = server("-H", "127.0.0.1", "0", "/bin/cat")
    idle_after_sessions(srv)
    bare = subprocess.Popen(
        [sys.executable, "-c", BARE_SERVER, str(pki.ec.key), str(pki.ec.cert)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert bare.stdout is not None
        port = int(bare.stdout.readline())
        for _ in range(3):
            one_session(port)
        own = (observe.private_kib(srv.pid) - observe.private_kib(bare.pid)) / 1024
    finally:
        bare.kill()
        bare.wait()
    assert own <= OWN_MIB, f"{own:.1f} MiB more than a bare gevent TLS server"
