"""The workloads, run server after server, rotating the order run by run.

Alternating servers within every run spreads any drift of the machine (other
users, thermal, caches) over all of them alike, so the ratios stay fair even
when the absolute numbers move.
"""

from __future__ import annotations

import json
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import memory
from benchlib.client import Client, ClientError
from benchlib.procs import Processes
from benchlib.servers import Kind, Running, ServerError, Setup, start, start_all

Sample = dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """How much of each workload one bench run does."""

    name: str
    runs: int
    seconds: float  # per sessions measurement (after warm-up)
    warmup: float
    count: int  # when > 0: sessions per measurement instead of a duration
    concurrencies: tuple[int, ...]
    down: int  # bytes
    up: int
    echo: int
    idle: int  # idle sessions
    memory_runs: int
    nodelay_everywhere: bool  # ours -D at every concurrency, or only at 1 (its target)
    versions: tuple[str, ...] = ("1.3", "1.2")  # TLS versions of the full handshakes
    quiet_load: float = 5.0  # seconds of load before the quiet measurement
    quiet: float = 30.0  # seconds without a connection before it
    handshakes_only: bool = False  # --only handshakes: the full-handshake points, nothing else


MIB = 1 << 20
PLANS = {
    # A check of the bench itself: every workload once, tiny.
    "smoke": Plan(
        "smoke", runs=1, seconds=0, warmup=0, count=20, concurrencies=(1, 4),
        down=4 * MIB, up=4 * MIB, echo=4 * MIB, idle=20, memory_runs=1,
        nodelay_everywhere=True, quiet_load=0.5, quiet=1.0,
    ),
    # About two minutes on an idle 2-core machine.
    "quick": Plan(
        "quick", runs=3, seconds=0.8, warmup=0.1, count=0, concurrencies=(1, 16, 64),
        down=128 * MIB, up=128 * MIB, echo=64 * MIB, idle=1000, memory_runs=1,
        nodelay_everywhere=False,
    ),
    # The full sizes (1 GiB each way); about ten minutes.
    "full": Plan(
        "full", runs=5, seconds=1.5, warmup=0.3, count=0, concurrencies=(1, 16, 64),
        down=1024 * MIB, up=1024 * MIB, echo=256 * MIB, idle=1000, memory_runs=3,
        nodelay_everywhere=True,
    ),
}  # fmt: skip


@dataclass
class Results:
    """Every sample, by measurement and server, in run order."""

    samples: dict[str, dict[str, list[Sample]]] = field(default_factory=dict)

    def add(self, key: str, server: str, sample: Sample) -> None:
        self.samples.setdefault(key, {}).setdefault(server, []).append(sample)


def rotated(kinds: Sequence[Kind], run: int) -> list[Kind]:
    k = run % len(kinds) if kinds else 0
    return [*kinds[k:], *kinds[:k]]


def _reaped(root: int, wait: float = 5.0) -> bool:
    """Wait until the server has reaped the prog of a finished session (its CPU
    time then counts among the server's children's); whether it did."""
    deadline = time.monotonic() + wait
    while memory.progs_left(root):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _share(result: dict[str, Any]) -> float:
    """The client's CPU time as a share of one core over its measuring time."""
    wall = float(result["wall"])
    return float(result["cpu"]) / wall if wall > 0 else 0.0


class Bench:
    """Runs the plan against the chosen servers and collects the samples."""

    def __init__(
        self,
        plan: Plan,
        kinds: Sequence[Kind],
        setup: Setup,
        client: Client,
        procs: Processes,
        say: Callable[..., None],
    ) -> None:
        self.plan = plan
        self.kinds = list(kinds)
        self.setup = setup
        self.client = client
        self.procs = procs
        self.say = say
        self.results = Results()
        self.progs = _progs(setup.workdir, plan)
        self.run_index = 0  # the run under way: sessions samples carry it, to pair servers

    # -- the plan

    def points(self) -> list[tuple[bool, int, str]]:
        """(resumed, concurrency, TLS version) of every sessions measurement:
        full handshakes in every version, resumed ones in the first."""
        plan = self.plan
        full = [(False, c, v) for v in plan.versions for c in plan.concurrencies]
        if plan.handshakes_only:
            return full
        return full + [(True, c, plan.versions[0]) for c in plan.concurrencies]

    def _runs_at(self, kind: Kind, resume: bool, conc: int, version: str) -> bool:
        """Whether kind takes part in this sessions measurement."""
        if not kind.tls:  # plain TCP: once per concurrency
            return not resume and version == self.plan.versions[0]
        if kind.name in ("ours-1", "ours-2"):  # the worker comparison, at its concurrency
            return not resume and conc == main_concurrency(self.plan)
        if kind.name == "ours-D":
            return not resume and (conc == 1 or self.plan.nodelay_everywhere)
        return True

    def run(self) -> Results:
        bulk = [k for k in self.kinds if k.name not in ("ours-D", "ours-1", "ours-2")]
        if self.plan.handshakes_only:
            bulk = []
        wanted = [(k, "line") for k in self.kinds]
        wanted += [(k, w) for k in bulk for w in ("down", "up", "echo")]
        started = start_all([(k, self.progs[w], w) for k, w in wanted], self.setup, self.procs)
        by = {(k.name, w): server for (k, w), server in zip(wanted, started, strict=True)}
        line = {k.name: by[(k.name, "line")] for k in self.kinds}
        streams = {key: server for key, server in by.items() if key[1] != "line"}
        for run in range(self.plan.runs):
            self.run_index = run
            self.say(f"run {run + 1}/{self.plan.runs}: sessions")
            for resume, conc, version in self.points():
                key = point_key(resume, conc, version)
                for kind in rotated(self.kinds, run):
                    if self._runs_at(kind, resume, conc, version):
                        self._guarded(
                            key, kind, self._sessions, kind, line[kind.name], conc, resume, version
                        )
            if bulk:
                self.say(f"run {run + 1}/{self.plan.runs}: one-session transfers")
            for workload in ("down", "up", "echo"):
                for kind in rotated(bulk, run):
                    server = streams[(kind.name, workload)]
                    self._guarded(workload, kind, self._transfer, kind, server, workload)
        for running in [*line.values(), *streams.values()]:
            self.procs.stop(running.proc)
        # tcpserver keeps nothing per connection (prog is its fork): no memory figure.
        held = [k for k in bulk if k.tls]
        for run in range(self.plan.memory_runs if held else 0):
            self.say(f"memory {run + 1}/{self.plan.memory_runs}: {self.plan.idle} idle sessions")
            for kind in rotated(held, run):
                self._guarded("idle", kind, self._idle, kind, run)
        quiet = [k for k in self.kinds if k.name in ("ours", "ours-1")]
        if quiet and not self.plan.handshakes_only:
            self.say(f"after {self.plan.quiet_load:g} s of load and {self.plan.quiet:g} s quiet")
            self._guarded("quiet", quiet[0], self._quiet, quiet)
        return self.results

    def _start(self, kind: Kind, workload: str) -> Running:
        return start(kind, self.setup, self.progs[workload], self.procs, workload)

    # -- measurements

    def _guarded(self, key: str, kind: Kind, measure: Callable[..., None], *args: Any) -> None:
        """Run one measurement; a failure is recorded as such and the bench goes on."""
        try:
            measure(*args)
        except (ClientError, ServerError) as e:
            self.results.add(key, kind.name, {"errors": 1, "failure": str(e)})
            self.say(f"  {key} {kind.label}: failed: {e}")

    def _sessions(self, kind: Kind, server: Running, conc: int, resume: bool, version: str) -> None:
        plan = self.plan
        options = ["--conc", str(conc)]
        if plan.count:
            options += ["--count", str(plan.count)]
            timeout = 120.0
        else:
            options += ["--seconds", str(plan.seconds), "--warmup", str(plan.warmup)]
            timeout = plan.seconds + plan.warmup + 60
        if resume:
            options.append("--resume")
        cpu0 = memory.server_cpu(server.pid)
        argv = self.client.argv("sessions", server.port, kind.tls, *options, version=version)
        result = self.client.run(argv, timeout)
        cpu1 = memory.server_cpu(server.pid)
        used = memory.cpu_used(cpu0, cpu1)
        total = int(result["total"])
        sample: Sample = {
            "rate": result["rate"],
            "p50_ms": result["p50_ms"],
            "p99_ms": result["p99_ms"],
            "sessions": result["sessions"],
            "errors": int(result["errors"]) + int(result["short_reads"]),
            "client_cpu": _share(result),
            "protocol": result["protocol"],
            "cipher": result["cipher"],
            "alpn": result.get("alpn", ""),
            "run": self.run_index + 1,  # which run (servers alternate): to pair them
            "server_processes": len(cpu1),  # at the end (ours grows workers under load)
        }
        if total and used and kind.name != "socat":
            # CPU time per session of the server process and of the progs it reaped
            # (socat's per-connection forks reap the progs: no split there).
            if kind.name != "tcpserver":
                sample["server_cpu_us"] = used[0] / total * 1e6
            sample["prog_cpu_us"] = used[1] / total * 1e6
        if int(result["sessions"]):
            sample["client_cpu_us"] = float(result["cpu"]) / int(result["sessions"]) * 1e6
        if resume:
            samples = int(result["samples"])
            sample["resumed"] = int(result["resumed"]) / samples if samples else 0.0
            sample["resume_kind"] = result["resume_kind"]
        key = point_key(resume, conc, version)
        self.results.add(key, kind.name, sample)
        self.say(f"  {key:14} {kind.label:10} {sample['rate']:8.1f}/s", verbose=True)

    def _transfer(self, kind: Kind, server: Running, workload: str) -> None:
        size = {"down": self.plan.down, "up": self.plan.up, "echo": self.plan.echo}[workload]
        if workload == "down":
            options = ["--expect", str(size)]
        elif workload == "up":
            options = ["--send", str(size), "--half-close", "--expect", str(len(UP_DONE))]
        else:
            options = ["--send", str(size), "--half-close", "--expect", str(size)]
        timeout = size / 5e6 + 60
        cpu0 = memory.server_cpu(server.pid)
        idle0, all0 = memory.machine_ticks()
        argv = self.client.argv(
            "transfer", server.port, kind.tls, *options, version=self.plan.versions[0]
        )
        result = self.client.run(argv, timeout)
        idle1, all1 = memory.machine_ticks()
        at_end = memory.cpu_used(cpu0, memory.server_cpu(server.pid))
        reaped = _reaped(server.pid)
        reaped_too = memory.cpu_used(cpu0, memory.server_cpu(server.pid))
        elapsed = float(result["elapsed"])
        mib = size / MIB
        sample: Sample = {
            "mbps": size / elapsed / 1e6 if elapsed > 0 else 0.0,
            "seconds": elapsed,
            "errors": int(result["errors"]),
            "client_cpu": _share(result),
            "client_cpu_us_per_mib": float(result["cpu"]) / mib * 1e6,
            # Whether the machine had CPU to spare: this much of it stayed idle.
            "machine_idle_pct": 100 * (idle1 - idle0) / max(all1 - all0, 1),
            "protocol": result["protocol"],
            "cipher": result["cipher"],
        }
        # socat and tcpserver relay in per-connection forks, and socat's reap the progs
        if at_end and kind.name not in ("socat", "tcpserver"):
            sample["server_cpu_us_per_mib"] = at_end[0] / mib * 1e6
        if reaped_too and reaped and kind.name != "socat":
            sample["prog_cpu_us_per_mib"] = reaped_too[1] / mib * 1e6
        self.results.add(workload, kind.name, sample)
        self.say(f"  {workload:14} {kind.label:10} {sample['mbps']:8.1f} MB/s", verbose=True)

    def _idle(self, kind: Kind, run: int) -> None:
        n = self.plan.idle
        server = self._start(kind, f"idle{run}")
        try:
            # A few sessions first, so what is set up once (imports, caches) is in the baseline.
            version = self.plan.versions[0]
            warm = self.client.argv(
                "idle", server.port, kind.tls, "--count", "10", "--conc", "2", version=version
            )
            self.client.run(warm, timeout=60)
            time.sleep(0.3)
            # The idle server, ready to serve: what one more service costs a machine.
            baseline, baseline_rss, _ = memory.server_memory_kib(server.pid)
            argv = self.client.argv(
                "idle", server.port, kind.tls, "--count", str(n), "--conc", "8", version=version
            )
            holder = self.procs.start(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            try:
                assert holder.stdout is not None and holder.stdin is not None
                ready_in = select.select([holder.stdout], [], [], 60 + n / 10)[0]
                line = holder.stdout.readline() if ready_in else ""
                if not line:
                    raise ClientError(f"{kind.label}: the idle sessions were not set up in time")
                ready = json.loads(line)
                time.sleep(0.5)
                loaded, processes = memory.server_pss_kib(server.pid)
                holder.stdin.close()
                holder.wait(timeout=60)
            finally:
                self.procs.stop(holder)
        finally:
            self.procs.stop(server.proc)
        held = int(ready["ready"])
        sample: Sample = {
            "kib_per_session": (loaded - baseline) / held if held else 0.0,
            "baseline_kib": baseline,
            "idle_pss_mib": baseline / 1024,
            "idle_rss_mib": baseline_rss / 1024,
            "loaded_kib": loaded,
            "sessions": held,
            "server_processes": processes,
            "errors": int(ready["errors"]),
        }
        self.results.add("idle", kind.name, sample)
        self.say(
            f"  idle {kind.label:10} {sample['kib_per_session']:8.1f} KiB/session", verbose=True
        )

    def _quiet(self, kinds: list[Kind]) -> None:
        """Each server after a burst of full handshakes (at concurrency 64) and
        QUIET seconds without a connection: how many processes, what memory."""
        plan = self.plan
        servers = [(kind, self._start(kind, "line")) for kind in kinds]
        try:
            most: dict[str, int] = {}
            for kind, server in servers:
                options = ["--conc", "64", "--seconds", str(plan.quiet_load), "--warmup", "0"]
                argv = self.client.argv(
                    "sessions", server.port, True, *options, version=plan.versions[0]
                )
                proc = self.procs.start(argv, stdout=subprocess.PIPE, text=True)
                most[kind.name] = 1
                deadline = time.monotonic() + plan.quiet_load + 60
                while proc.poll() is None and time.monotonic() < deadline:
                    count = len(memory.server_pids(server.pid))
                    most[kind.name] = max(most[kind.name], count)
                    time.sleep(0.1)
                out, _ = proc.communicate(timeout=60)
                self.procs.stop(proc)
                if not out.strip() or json.loads(out.strip().splitlines()[-1])["errors"]:
                    raise ClientError(f"{kind.label}: the load before the quiet time failed")
            time.sleep(plan.quiet)
            for kind, server in servers:
                pss, rss, processes = memory.server_memory_kib(server.pid)
                sample: Sample = {
                    "most_processes": most[kind.name],
                    "processes": processes,
                    "pss_mib": pss / 1024,
                    "rss_mib": rss / 1024,
                    "errors": 0,
                }
                self.results.add("quiet", kind.name, sample)
        finally:
            for _, server in servers:
                self.procs.stop(server.proc)


def main_concurrency(plan: Plan) -> int:
    """The concurrency of the main targets: 16, or the highest measured."""
    return 16 if 16 in plan.concurrencies else plan.concurrencies[-1]


def point_key(resume: bool, conc: int, version: str) -> str:
    """What a sessions measurement is saved under, e.g. ``full c=16 TLS 1.3``."""
    return f"{'resumed' if resume else 'full'} c={conc} TLS {version}"


UP_DONE = "done\n"


def _progs(workdir: Path, plan: Plan) -> dict[str, tuple[str, ...]]:
    """The prog of each workload, as absolute paths and plain words (stunnel's execArgs)."""

    def which(name: str) -> str:
        path = shutil.which(name)
        if path is None:
            sys.exit(f"tools/bench: {name} not found")
        return path

    # Up: read everything, then say so, so that every server's clock runs to
    # prog's end of input (a bare `cat >/dev/null` closes its stdout at once).
    sink = workdir / "sink"
    sink.write_text(f"#!/bin/sh\ncat >/dev/null\nprintf '{UP_DONE.strip()}\\n'\n")
    sink.chmod(0o755)
    cat, head = which("cat"), which("head")
    return {
        "line": (head, "-n1"),
        "down": (head, "-c", str(plan.down), "/dev/zero"),
        "up": (str(sink),),
        "echo": (cat,),
        **{f"idle{r}": (cat,) for r in range(plan.memory_runs)},
    }
