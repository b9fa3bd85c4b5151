"""The Debian package: built by tools/deb, linted, installed with apt-get, run, purged.

The package is built once for the module (and once more, as a newer version,
for the upgrade). Installing it changes this machine, which CI throws away;
the module purges what it installed, whether its tests pass or not. The unit
runs two ways: its command line under systemd-socket-activate, as systemd
would start it, and for real under systemd as PID 1 in a booted overlay of
this machine (tests/support/nspawn.py), where the sandbox, the socket unit
and the restart on upgrade can be seen working.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support import client, probes, units
from tests.support.nspawn import BootFailed, Machine
from tests.support.probes import listening
from tests.support.server import free_port, wait_for

if TYPE_CHECKING:
    from tests.conftest import PKI

CHECKOUT = Path(__file__).resolve().parents[2]
VENV = Path("/opt/venvs/s6tls")
DOC = Path("/usr/share/doc/s6tls")
UNIT = "lib/systemd/system/s6tls@.service"
SOCKET = "lib/systemd/system/s6tls@.socket"
COMMANDS = (
    "s6-tlsserver",
    "s6-tcprules",
    "s6-accessrules-cdb-from-fs",
    "s6-accessrules-fs-from-cdb",
)
ALTERNATIVES = COMMANDS[2:]  # Debian's s6 ships these two names too
MAX_EXPOSURE = 2.5
NONINTERACTIVE = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
# prog in the served tests: who it runs as, then its environment
SHOW_ID = "/bin/sh -c id;env"


def _cannot_run() -> str | None:
    if os.geteuid() != 0:
        return "the package is installed with apt-get: needs root"
    for tool in ("dpkg-buildpackage", "dh_virtualenv", "lintian", "apt-get", "man"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (tools/install --test installs it)"
    if subprocess.run(["dpkg-query", "-W", "s6tls"], capture_output=True).returncode == 0:
        return "s6tls is installed on this machine: these tests install and purge it themselves"
    return None


pytestmark = [
    pytest.mark.skipif(_cannot_run() is not None, reason=str(_cannot_run())),
    pytest.mark.timeout(300),
]


def run(
    *argv: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def checked(*argv: str, timeout: float = 120, env: dict[str, str] | None = None) -> str:
    done = run(*argv, timeout=timeout, env=env)
    assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"
    return done.stdout


def debian_python() -> str:
    """python3.X, the interpreter the package's virtualenv is made with."""
    version = checked("/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])")
    return f"python{version.strip()}"


# -- building


@dataclass(frozen=True)
class Built:
    deb: Path
    tree: Path  # its contents, unpacked

    def field(self, name: str) -> str:
        return checked("dpkg-deb", "--field", str(self.deb), name).strip()


def build(out: Path, version: str | None = None) -> Built:
    env = {**os.environ, **({"S6TLS_DEB_VERSION": version} if version else {})}
    debs = checked(str(CHECKOUT / "tools" / "deb"), str(out), env=env, timeout=600).split()
    assert len(debs) == 1 and debs[0].endswith(".deb"), debs
    tree = out / "tree"
    checked("dpkg-deb", "--extract", debs[0], str(tree))
    return Built(Path(debs[0]), tree)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build(tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="module")
def newer(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Built:
    return build(tmp_path_factory.mktemp("deb-newer"), f"{built.field('Version')}+upgrade1")


def checkout_version() -> str:
    """debian/changelog's version, and in a git checkout, +git and the commit's time (UTC)."""
    version = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]["version"]
    git = ["git", "-C", str(CHECKOUT)]
    if subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        return version
    when = datetime.fromtimestamp(int(checked(*git, "log", "-1", "--format=%ct")), UTC)
    return f"{version}+git{when:%Y%m%d.%H%M%S}"


def test_fields(built: Built) -> None:
    version = checkout_version()
    arch = checked("dpkg", "--print-architecture").strip()
    assert built.deb.name == f"s6tls_{version}_{arch}.deb"
    assert (built.field("Package"), built.field("Version")) == ("s6tls", version)
    depends = [d.strip() for d in built.field("Depends").split(",")]
    assert {debian_python(), "openssl", "libseccomp2"} <= set(depends)
    assert built.field("Conflicts") == built.field("Replaces") == "s6-networking"


def test_contents(built: Built) -> None:
    tree = built.tree
    venv = tree / VENV.relative_to("/")
    for command in COMMANDS:
        assert (venv / "bin" / command).read_text().startswith(f"#!{VENV}/bin/python\n")
    for command in COMMANDS[:2]:
        assert os.readlink(tree / "usr/bin" / command) == f"{VENV}/bin/{command}"
        assert (tree / f"usr/share/man/man1/{command}.1.gz").is_file()
    for command in ALTERNATIVES:  # update-alternatives makes their links
        assert not (tree / "usr/bin" / command).exists()
        assert (venv / f"share/man/man1/{command}.1.gz").is_file()
    python = debian_python()  # Debian's, not the one running these tests
    assert os.readlink(venv / "bin" / python) == f"/usr/bin/{python}"
    doc = tree / DOC.relative_to("/")
    assert (doc / "README.rst.gz").is_file() and (doc / "copyright").is_file()
    shipped_docs = {p.name.removesuffix(".gz") for p in (doc / "docs").iterdir()}
    assert shipped_docs == {p.name for p in (CHECKOUT / "docs").glob("*.rst")}
    # the examples whole and unchanged, modes too (run scripts stay executable)
    examples = CHECKOUT / "rules-examples"
    for path in examples.rglob("*"):
        shipped = doc / "rules-examples" / path.relative_to(examples)
        assert shipped.exists(), shipped
        if path.is_file():
            assert shipped.read_bytes() == path.read_bytes(), shipped
            assert shipped.stat().st_mode == path.stat().st_mode, shipped
    # one source for the units: the examples are what the package installs
    for unit in (UNIT, SOCKET):
        assert (tree / unit).read_text() == (examples / "run-systemd" / Path(unit).name).read_text()
    # nothing that only the build needed, and no bytecode (postinst compiles it)
    names = {p.name for p in tree.rglob("*")}
    assert not names & {"pip", "setuptools", "wheel", "__pycache__", "tests"}
    assert not [p for p in names if p.endswith(".pyc")]


def test_lintian(built: Built) -> None:
    done = run("lintian", "--no-tag-display-limit", str(built.deb), timeout=300)
    assert done.returncode in (0, 2), done.stderr  # 2: it showed tags
    tags = []
    for line in done.stdout.splitlines():
        m = re.match(r"([EWIPXO]): s6tls(?: \w+)?: (\S+)", line)
        assert m, f"unexpected lintian output: {line}"
        tags.append((m.group(1), m.group(2)))
    # none: overridden tags are justified in debian/s6tls.lintian-overrides
    assert tags == []
    # each override follows the comment that says why (a blank line ends one)
    reason = False
    for line in (CHECKOUT / "debian" / "s6tls.lintian-overrides").read_text().splitlines():
        if line.startswith("#") or not line:
            reason = bool(line)
        else:
            assert reason, f"lintian override without its reason: {line}"


def render(page: Path | str) -> tuple[str, str]:
    """A manual page as man shows it, and what man, groff and preconv warned."""
    args = ["-l", str(page)] if isinstance(page, Path) else [page]
    env = {**os.environ, "MANWIDTH": "80"}
    done = run("man", "--warnings", "-E", "UTF-8", *args, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout, done.stderr


def named(text: str) -> str | None:
    """The command a rendered manual page's NAME line is about."""
    name = re.search(r"^NAME\n\s+(\S+)\s+-\s", text, re.M)
    return name.group(1) if name else None


def test_manual_pages(built: Built) -> None:
    pages = {p.name.removesuffix(".1.gz"): p for p in built.tree.rglob("*.1.gz")}
    assert set(pages) == set(COMMANDS)
    for command, page in pages.items():
        text, warnings = render(page)
        assert warnings == "", f"{command}: {warnings}"
        assert named(text) == command
        # the reference page's sections, all of them, in its order
        rst = (CHECKOUT / "docs" / f"{command}.rst").read_text()
        sections = [s.upper() for s in re.findall(r"^(.+)\n=+$", rst, re.M)[1:]]  # [0]: title
        headings = [line for line in text.splitlines() if line and not line[0].isspace()]
        added = ("NAME", "DESCRIPTION", "SEE ALSO")
        assert [h for h in headings[1:-1] if h not in added] == sections  # not header, footer


def test_unit_security_score(built: Built, tmp_path: Path) -> None:
    """systemd-analyze scores a template as an instance: a copy named as one."""
    instance = tmp_path / "s6tls@pkgtest.service"
    shutil.copy(built.tree / UNIT, instance)
    out = checked("systemd-analyze", "security", "--offline=yes", "--no-pager", str(instance))
    score = re.search(r"Overall exposure level for s6tls@pkgtest.service: (\d+\.\d+)", out)
    assert score and float(score.group(1)) <= MAX_EXPOSURE, out


# -- installed with apt-get


@dataclass(frozen=True)
class Installed:
    files: list[str]  # dpkg -L, once installed
    there_before: set[str]  # those of its paths that existed already (/usr/bin, /opt, ...)


def purge() -> None:
    for made in Path("/etc/s6tls").glob("pkgtest*"):  # what the tests put there
        shutil.rmtree(made) if made.is_dir() else made.unlink()
    if run("dpkg-query", "-W", "s6tls").returncode == 0:
        checked("apt-get", "purge", "-y", "s6tls", env=NONINTERACTIVE, timeout=300)


@pytest.fixture(scope="module")
def installed(built: Built) -> Iterator[Installed]:
    paths = [f"/{p.relative_to(built.tree)}" for p in built.tree.rglob("*")]
    there_before = {p for p in paths if os.path.lexists(p)}
    try:
        checked("apt-get", "install", "-y", str(built.deb), env=NONINTERACTIVE, timeout=300)
        files = [os.path.normpath(p) for p in checked("dpkg", "-L", "s6tls").splitlines()]
        yield Installed(files, there_before | {"/"})
    finally:
        purge()


def test_installed_commands(installed: Installed, tmp_path: Path) -> None:
    assert os.path.realpath("/usr/bin/s6-tlsserver") == f"{VENV}/bin/s6-tlsserver"
    assert run("/usr/bin/s6-tlsserver").returncode == 100  # usage
    assert "Usage" in checked("/usr/bin/s6-tcprules", "--help")
    for command in ALTERNATIVES:
        assert f"Alternative: {VENV}/bin/{command}" in checked(
            "update-alternatives", "--query", command
        )
        owner = run("dpkg-query", "-S", f"/usr/bin/{command}")
        if owner.returncode == 0:  # Debian's s6: its C tools keep the name
            assert owner.stdout.startswith("s6:") and not os.path.islink(f"/usr/bin/{command}")
        else:
            assert os.path.realpath(f"/usr/bin/{command}") == f"{VENV}/bin/{command}"
    # the virtualenv's own: a ruleset into a cdb and back
    rules = CHECKOUT / "rules-examples" / "env-per-client"
    cdb, back = tmp_path / "rules.cdb", tmp_path / "back"
    checked(f"{VENV}/bin/s6-accessrules-cdb-from-fs", str(cdb), str(rules))
    checked(f"{VENV}/bin/s6-accessrules-fs-from-cdb", str(back), str(cdb))
    assert {p.name for p in (back / "ip4").iterdir()} == {p.name for p in (rules / "ip4").iterdir()}
    assert list((VENV / "lib").rglob("s6tls/__pycache__/*.pyc"))  # compiled by postinst


def test_installed_units_verify(installed: Installed) -> None:
    """The units as installed, the socket named by its address (FILE:NAME loads the file
    as that unit); verify also looks for the man: page in Documentation=."""
    name = "s6tls@127.0.0.1:8443"
    done = run(
        "systemd-analyze", "verify", "--no-pager",
        f"/{UNIT}:{name}.service", f"/{SOCKET}:{name}.socket",
    )  # fmt: skip
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_installed_manual_pages(installed: Installed) -> None:
    for command in COMMANDS:
        found = checked("man", "-w", command).strip()  # where a link leads, for the accessrules
        assert os.path.realpath(found) == os.path.realpath(f"/usr/share/man/man1/{command}.1.gz")
        text, warnings = render(command)
        assert (warnings, named(text)) == ("", command)


def instance(root: Path, name: str, pki: PKI, prog: str, port: int) -> None:
    """/etc/s6tls/NAME.conf (under root) from the installed example, with a key
    pair only root can read and the env-per-client rules in /etc/s6tls/NAME/."""
    home = root / "etc" / "s6tls" / name
    home.mkdir(parents=True)
    shutil.copy(pki.ec.key, home / "key.pem")
    shutil.copy(pki.ec.cert, home / "cert.pem")
    (home / "key.pem").chmod(0o600)
    shutil.copytree(DOC / "rules-examples" / "env-per-client", home / "rules")
    inside = Path("/etc/s6tls") / name
    example = (DOC / "rules-examples" / "run-systemd" / "example.conf").read_text()
    conf = units.configure(
        example,
        KEYFILE=f"{inside}/key.pem",
        CERTFILE=f"{inside}/cert.pem",
        ADDRESS="127.0.0.1",
        PORT=str(port),
        OPTIONS=f"-v -H -u 1 -g 1 -i {inside}/rules",  # TLS_UID, TLS_GID: the example's
        PROG=prog,
    )
    (root / "etc" / "s6tls" / f"{name}.conf").write_text(conf)


def served(port: int, source: str = "127.0.0.1") -> tuple[str, dict[str, str]]:
    """What SHOW_ID printed for a client: its id line and its environment."""
    with client.connect(port, source=source) as s:
        text = client.read_all(s)[0].decode()
    who, _, env = text.partition("\n")
    return who, client.env_of(env.encode())


def assert_served_as_configured(port: int) -> None:
    """prog ran as uid 1, with the rules' environment and none of the unit's settings."""
    who, env = served(port)
    assert who.startswith("uid=1(") and " gid=1(" in who, who
    assert (env["ROLE"], env["TCPLOCALPORT"]) == ("admin", str(port))
    assert served(port, "127.0.0.3")[1]["ROLE"] == "local"
    assert not units.NOT_FOR_PROG & set(env)


def test_unit_command_line_serves(installed: Installed, pki: PKI, tmp_path: Path) -> None:
    """The installed unit's ExecStart, with its environment file, on a socket handed in."""
    instance(Path("/"), "pkgtest", pki, SHOW_ID, 443)
    argv, env = units.service_command(Path("/") / UNIT, "pkgtest")
    assert argv[0] == "/usr/bin/env" and "/usr/bin/s6-tlsserver" in argv
    port = free_port()
    with open(tmp_path / "log", "wb") as log:
        proc = subprocess.Popen(
            ["systemd-socket-activate", "-l", f"127.0.0.1:{port}",
             *[f"-E{k}={v}" for k, v in env.items()], *argv],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
            start_new_session=True,
        )  # fmt: skip
    try:
        assert wait_for(lambda: listening(port), timeout=10)  # the server starts at a client
        assert_served_as_configured(port)
        # the TLS engine: Debian's python3, as TLS_UID
        assert os.path.realpath(f"/proc/{proc.pid}/exe") == f"/usr/bin/{debian_python()}"
        assert probes.uid(proc.pid) == "65534"
    finally:
        os.killpg(proc.pid, 9)
        proc.wait(timeout=10)


# -- under systemd as PID 1


class Lab:
    """The booted machine, started by the first test that needs it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.machine: Machine | None = None
        self.failed: str | None = None

    def get(self) -> Machine:
        if self.machine is None and self.failed is None:
            machine = Machine(self.workdir / "machine", "s6tls-pkgtest")
            try:
                machine.boot()
                self.machine = machine
            except BootFailed as e:
                machine.stop()
                self.failed = str(e)
        if self.machine is None:
            pytest.skip(f"this machine does not boot under systemd-nspawn: {self.failed}")
        return self.machine

    def close(self) -> None:
        if self.machine is not None:
            self.machine.stop()
            self.machine = None


@pytest.fixture(scope="module")
def lab(installed: Installed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if shutil.which("systemd-nspawn") is None:
        pytest.skip("systemd-nspawn is not installed (tools/install --test installs it)")
    held = Lab(tmp_path_factory.mktemp("lab"))
    try:
        yield held
    finally:
        held.close()


def main_pid(machine: Machine, unit: str) -> int:
    return int(machine.run("systemctl", "show", "--property=MainPID", "--value", unit).stdout)


def servers(machine: Machine, name: str) -> list[tuple[int, int]]:
    """(pid, parent) of the s6-tlsserver processes of s6tls@NAME, inside the machine."""
    table = machine.run("ps", "-ww", "-eo", "pid=,ppid=,args=").stdout.splitlines()
    return [
        (int(pid), int(ppid))
        for pid, ppid, args in (line.split(None, 2) for line in table)
        if "s6-tlsserver" in args and f"/etc/s6tls/{name}/" in args
    ]


def test_service_under_systemd(lab: Lab, pki: PKI) -> None:
    """The hardened unit, started by systemd: it serves as configured, confined."""
    machine = lab.get()
    port = free_port()
    instance(machine.root, "pkgtest-sd", pki, SHOW_ID, port)
    machine.run("systemctl", "start", "s6tls@pkgtest-sd.service")
    try:
        assert listening(port)  # Type=notify: started means listening
        assert_served_as_configured(port)
        engine = main_pid(machine, "s6tls@pkgtest-sd.service")
        status = probes.status_fields(machine.run("cat", f"/proc/{engine}/status").stdout)
        assert (status["Uid"], status["NoNewPrivs"], status["Seccomp"]) == ("65534", "1", "2")
        # CAP_KILL, CAP_SETGID, CAP_SETUID, CAP_NET_BIND_SERVICE, no more
        assert int(status["CapBnd"], 16) == (1 << 5) | (1 << 6) | (1 << 7) | (1 << 10)
        scored = machine.run("systemd-analyze", "security", "s6tls@pkgtest-sd.service")
        score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", scored.stdout)
        assert score and float(score.group(1)) <= MAX_EXPOSURE, scored.stdout
        # certificate rotation: new files renamed over the old, no restart, no reload
        home = machine.path("/etc/s6tls/pkgtest-sd")
        for name, source in (("key.pem", pki.alt.key), ("cert.pem", pki.alt.cert)):
            shutil.copy(source, home / f"{name}.new")
            os.replace(home / f"{name}.new", home / name)

        def rotated() -> bool:
            with client.connect(port) as s:
                cert = s.getpeercert(binary_form=True)
                client.read_all(s)
            return cert == pki.alt.cert_der_bytes

        assert wait_for(rotated, timeout=5)
        # no warning but about a client (the test's own probes of the port): the
        # server, confinement and all, started as it should under this unit
        log = machine.run("journalctl", "--unit=s6tls@pkgtest-sd.service", "--output=cat").stdout
        assert "s6-tlsserver: info: starting" in log
        assert not re.findall(r"warning: (?!127\.0\.0\.\d+_\d+: ).*", log)
    finally:
        machine.run("systemctl", "stop", "s6tls@pkgtest-sd.service", check=False)


def test_systemctl_start_returns_once_ready(lab: Lab, pki: PKI) -> None:
    """Type=notify: when systemctl start returns, the server serves and reacts to
    its signals as documented (a SIGHUP sent at once, as a reload, keeps it
    serving); systemctl stop ends it at once, and a running session finishes."""
    machine = lab.get()
    port = free_port()
    unit = "s6tls@pkgtest-ready.service"
    instance(machine.root, "pkgtest-ready", pki, "/bin/cat", port)
    shown = machine.run("systemctl", "show", "--property=Type,NotifyAccess", unit).stdout
    assert sorted(shown.split()) == ["NotifyAccess=main", "Type=notify"]
    try:
        for _ in range(3):
            machine.run("systemctl", "start", unit)
            with client.connect(port) as s:  # at once, no retry: ready means serving
                assert client.echo(s) == b"ping\n"
            machine.run("systemctl", "stop", unit)
        machine.run("systemctl", "start", unit)
        machine.run("systemctl", "kill", "--kill-whom=main", "--signal=SIGHUP", unit)
        with client.connect(port) as s:
            assert client.echo(s) == b"ping\n"
        with client.connect(port) as session:
            assert client.echo(session, b"before the stop\n") == b"before the stop\n"
            machine.run("systemctl", "stop", unit)
            assert machine.run("systemctl", "is-active", unit, check=False).stdout == "inactive\n"
            assert probes.refuses(port)
            assert client.echo(session, b"after the stop\n") == b"after the stop\n"
            client.half_close(session)
            assert client.read_all(session) == (b"", "eof")

        def journal() -> str:
            return machine.run("journalctl", f"--unit={unit}", "--output=cat").stdout

        assert wait_for(lambda: journal().count("info: received SIGTERM, quitting") == 4)
        assert journal().count("info: received SIGHUP") == 1
        assert "reception only permitted for main PID" not in journal()  # no one else spoke
    finally:
        machine.run("systemctl", "stop", unit, check=False)


# Run inside the unit's sandbox: what s6-tlsserver's TLS engine needs to confine
# itself, on top of what the unit does: Landlock's ABI version, and seccomp().
CONFINEMENT_PROBE = "; ".join(
    (
        "import ctypes, os",
        "libc = ctypes.CDLL(None, use_errno=True)",
        "seccomp = dict(x86_64=317, aarch64=277)[os.uname().machine]",
        "allow = ctypes.c_uint32(0x7FFF0000)",  # SECCOMP_RET_ALLOW: is it available?
        "print(libc.syscall(444, None, 0, 1), libc.syscall(seccomp, 2, 0, ctypes.byref(allow)))",
    )
)


def test_unit_lets_the_engine_confine_itself(lab: Lab) -> None:
    """The unit's system call filter lets through Landlock and seccomp()."""
    machine = lab.get()
    dropin = machine.path("/etc/systemd/system/s6tls@pkgtest-probe.service.d")
    dropin.mkdir(parents=True)
    (dropin / "probe.conf").write_text(
        "[Service]\nType=oneshot\nRestart=no\nEnvironmentFile=\nExecStart=\n"
        f"ExecStart=/usr/bin/python3 -c '{CONFINEMENT_PROBE}'\n"
    )
    machine.run("systemctl", "daemon-reload")
    machine.run("systemctl", "start", "s6tls@pkgtest-probe.service")
    said = machine.run("journalctl", "--unit=s6tls@pkgtest-probe.service", "--output=cat")
    answer = re.search(r"^(-?\d+) (-?\d+)$", said.stdout, re.M)
    assert answer, said.stdout
    abi, seccomp = int(answer.group(1)), int(answer.group(2))
    assert abi >= 1 and seccomp == 0, said.stdout  # with @system-service alone: -1 -1


def test_socket_unit_under_systemd(lab: Lab, pki: PKI) -> None:
    """s6tls@ADDRESS:PORT.socket listens; the first client starts the service."""
    machine = lab.get()
    port = free_port()
    name = f"127.0.0.1:{port}"
    instance(machine.root, name, pki, SHOW_ID, 0)  # the socket's address is served
    machine.run("systemctl", "start", f"s6tls@{name}.socket")
    try:
        assert listening(port)
        assert_served_as_configured(port)
        active = machine.run("systemctl", "is-active", f"s6tls@{name}.service").stdout
        assert active == "active\n"
    finally:
        units_ = (f"s6tls@{name}.socket", f"s6tls@{name}.service")
        machine.run("systemctl", "stop", *units_, check=False)


def test_upgrade_keeps_sessions(lab: Lab, newer: Built, pki: PKI) -> None:
    """Installing a newer package restarts the running instance; its sessions go on."""
    machine = lab.get()
    port = free_port()
    instance(machine.root, "pkgtest-up", pki, "/bin/cat", port)
    machine.run("systemctl", "start", "s6tls@pkgtest-up.service")
    assert wait_for(lambda: listening(port), timeout=10)
    before = main_pid(machine, "s6tls@pkgtest-up.service")
    assert before in {pid for pid, _ in servers(machine, "pkgtest-up")}
    with client.connect(port) as session:
        assert client.echo(session, b"before the upgrade\n") == b"before the upgrade\n"
        shutil.copy(newer.deb, machine.path("/var/tmp"))
        upgrade = machine.run(
            "env", "DEBIAN_FRONTEND=noninteractive", "dpkg", "-i", f"/var/tmp/{newer.deb.name}",
            timeout=180,
        )  # fmt: skip
        assert "policy-rc.d" not in upgrade.stderr
        after = main_pid(machine, "s6tls@pkgtest-up.service")
        assert after not in (0, before)
        assert client.echo(session, b"after the upgrade\n") == b"after the upgrade\n"
        assert wait_for(lambda: listening(port), timeout=10)
        with client.connect(port) as fresh:
            assert client.echo(fresh, b"new server\n") == b"new server\n"
        version = machine.run("dpkg-query", "--show", "--showformat=${Version}", "s6tls").stdout
        assert version == newer.field("Version")
        log = machine.run("journalctl", "--unit=s6tls@pkgtest-up.service", "--no-pager").stdout
        assert f"s6tls@pkgtest-up[{before}]: s6-tlsserver: info: received SIGTERM" in log

    # the session over, what finished it (the old server's drainer) is gone too
    def only_the_new_server() -> bool:
        return all(after in (pid, ppid) for pid, ppid in servers(machine, "pkgtest-up"))

    assert wait_for(only_the_new_server, timeout=10), servers(machine, "pkgtest-up")


def test_purge_and_install_under_systemd(lab: Lab, built: Built) -> None:
    """prerm stops the running instances and the purge takes the package's files
    away; installed again, the package starts nothing, and an instance starts."""
    machine = lab.get()
    if not servers(machine, "pkgtest-up"):
        pytest.skip("test_upgrade_keeps_sessions left no instance running")
    apt = ("env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-y")
    machine.run(*apt, "purge", "s6tls", timeout=180)
    state = machine.run("systemctl", "is-active", "s6tls@pkgtest-up.service", check=False)
    assert state.stdout in ("inactive\n", "failed\n")
    assert wait_for(lambda: not servers(machine, "pkgtest-up"), timeout=10)
    assert not machine.path(str(VENV)).exists()
    assert not machine.path("/usr/bin/s6-tlsserver").exists()
    shutil.copy(built.deb, machine.path("/var/tmp"))
    machine.run(*apt, "install", f"/var/tmp/{built.deb.name}", timeout=180)
    running = ("systemctl", "list-units", "--no-legend", "--state=active", "s6tls@*")
    assert machine.run(*running).stdout == ""
    machine.run("systemctl", "start", "s6tls@pkgtest-up.service")  # its files stayed
    assert servers(machine, "pkgtest-up")
    machine.run("systemctl", "stop", "s6tls@pkgtest-up.service")


# -- purged


def test_purge_leaves_nothing(installed: Installed, lab: Lab) -> None:
    lab.close()  # its overlay reads this machine's files
    alternatives = {p.name for p in Path("/etc/alternatives").iterdir()}
    purge()
    assert run("dpkg-query", "-W", "s6tls").returncode != 0
    left = [p for p in installed.files if os.path.lexists(p) and p not in installed.there_before]
    assert left == []
    assert not VENV.exists() and not Path("/etc/s6tls").exists()
    for command in ALTERNATIVES:
        assert run("update-alternatives", "--query", command).returncode != 0
        assert not os.path.lexists(f"/usr/share/man/man1/{command}.1.gz")
    ours = {name for command in ALTERNATIVES for name in (command, f"{command}.1.gz")}
    assert {p.name for p in Path("/etc/alternatives").iterdir()} == alternatives - ours
    assert not list(Path("/var/lib/dpkg/info").glob("s6tls.*"))
