"""This machine booted again with systemd as PID 1, to run units for real.

systemd is not PID 1 where the tests run, so sandboxing directives, socket
activation and maintainer scripts that restart services could not be seen
working. Here the machine's own root becomes the lower layer of an overlay
(whatever the machine writes goes to a tmpfs and is gone after), and
systemd-nspawn boots it. It shares the host's network: its services are
reached on 127.0.0.1. Commands run inside through nsenter.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from tests.support.server import wait_for

# nspawn's own system call filter (systemd 252) refuses Landlock, which a host
# allows and s6-tlsserver's TLS engine uses: let it through, as on the host.
LANDLOCK = "landlock_create_ruleset landlock_add_rule landlock_restrict_self"


class BootFailed(Exception):
    """The machine could not be made or booted here (the reason is the message)."""


def _run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


class Machine:
    """A booted copy of this machine; stop() ends it and removes every trace."""

    def __init__(self, workdir: Path, name: str) -> None:
        self.name = name
        self.layer = workdir / "layer"
        self.root = workdir / "root"
        self.log = workdir / "boot.log"
        self._mounted: list[Path] = []
        self._nspawn: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def boot(self, timeout: float = 90) -> None:
        """Mount the overlay, boot it, and wait until systemd says it is up."""
        self.layer.mkdir(parents=True)
        self.root.mkdir()
        self._mount(["-t", "tmpfs", "-o", "size=1g", "tmpfs", str(self.layer)], self.layer)
        (self.layer / "upper").mkdir()
        (self.layer / "work").mkdir()
        options = f"lowerdir=/,upperdir={self.layer}/upper,workdir={self.layer}/work"
        self._mount(["-t", "overlay", "-o", options, "overlay", str(self.root)], self.root)
        # Nothing the host enables starts there (it shares the host's network),
        # and maintainer scripts may start and restart services, as on a server
        # (a container image's policy-rc.d forbids it).
        for wanted in (self.root / "etc/systemd/system").glob("*.wants/*"):
            wanted.unlink()
        (self.root / "usr/sbin/policy-rc.d").unlink(missing_ok=True)
        with open(self.log, "wb") as log:
            self._nspawn = subprocess.Popen(
                ["systemd-nspawn", "--quiet", "--directory", str(self.root), "--register=no",
                 "--keep-unit", f"--machine={self.name}", f"--system-call-filter={LANDLOCK}",
                 "--boot", "systemd.firstboot=off"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        if not wait_for(self._find_leader, timeout=30) or not self.leader:
            raise BootFailed(f"systemd-nspawn started no machine: {self.log.read_text()[-2000:]}")
        states: list[str] = []

        def up() -> bool:
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            states.append(state)
            return state in ("running", "degraded")

        if not wait_for(up, timeout=timeout, interval=0.2):
            raise BootFailed(f"the machine did not boot (systemd says {states[-1]})")

    def _mount(self, argv: list[str], target: Path) -> None:
        done = _run(["mount", *argv])
        if done.returncode:
            raise BootFailed(f"mount {target.name}: {done.stderr.strip()}")
        self._mounted.append(target)

    def _find_leader(self) -> bool:
        """The machine's PID 1 (systemd, pid 1 in its own namespace), once there."""
        assert self._nspawn is not None
        if self._nspawn.poll() is not None:
            return True  # it gave up: boot() says so
        for task in Path(f"/proc/{self._nspawn.pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                try:
                    status = Path(f"/proc/{child}/status").read_text()
                except OSError:
                    continue
                fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
                if fields.get("Name") == "systemd" and fields.get("NSpid", "").split()[-1] == "1":
                    self.leader = int(child)
                    return True
        return False

    def run(
        self, *argv: str, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside, as root, in all the machine's namespaces."""
        if not self.leader:
            raise BootFailed("the machine is not running")
        done = subprocess.run(
            ["nsenter", "--target", str(self.leader), "--all", *argv],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if check and done.returncode:
            raise AssertionError(f"{argv} exited {done.returncode}: {done.stdout}{done.stderr}")
        return done

    def path(self, inside: str) -> Path:
        """Where a path of the machine's file system is, seen from the host."""
        return self.root / inside.lstrip("/")

    def stop(self) -> None:
        """Power it off (killing it if it takes too long), then unmount everything."""
        if self._nspawn is not None and self._nspawn.poll() is None:
            self._nspawn.send_signal(signal.SIGTERM)  # nspawn powers the machine off
            try:
                self._nspawn.wait(timeout=30)
            except subprocess.TimeoutExpired:
                if self.leader:
                    os.kill(self.leader, signal.SIGKILL)  # PID 1: the whole machine
                self._nspawn.kill()
                self._nspawn.wait(timeout=10)
        self._nspawn = None
        self.leader = 0
        for target in reversed(self._mounted):
            if _run(["umount", str(target)]).returncode:
                _run(["umount", "--lazy", str(target)])
        self._mounted.clear()
        # nspawn cannot remove what it made here when /run is no tmpfs.
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.name}", ignore_errors=True)
