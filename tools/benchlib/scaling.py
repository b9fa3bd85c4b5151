"""``tools/bench --workers 1,2,4,8``: how s6-tlsserver scales with its worker processes.

For each S6TLS_WORKERS=N (and ``default``, unset), servers alternating run by
run: full handshakes with one load client per worker (for the default, as
many as for the largest N), 16 sessions in flight each, after the same load
has run a while (the default adds its workers as it goes), then one session
at a time. For both: sessions/s, the server's CPU and
voluntary context switches (times a process went to sleep) per session, and
the client's CPU per session. Switches per session at one session at a time
show how many processes each connection wakes.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

from benchlib import memory
from benchlib.client import Client
from benchlib.procs import Processes
from benchlib.report import align, cell
from benchlib.servers import Kind, Running, Setup, ours_with, start
from benchlib.workloads import Results, Sample, rotated


def parse_counts(text: str) -> list[int | None]:
    """``1,2,4,default`` -> [1, 2, 4, None]."""
    counts: list[int | None] = []
    for word in text.split(","):
        if word == "default":
            counts.append(None)
        elif word.isdigit() and 1 <= int(word) <= 64:
            counts.append(int(word))
        else:
            raise ValueError(f"--workers: {word!r} is not a count from 1 to 64 or 'default'")
    return counts


def _measure(client: Client, server: Running, clients: int, conc: int, seconds: float) -> Sample:
    options = ["--conc", str(conc), "--seconds", str(seconds), "--warmup", "0.5"]
    argv = client.argv("sessions", server.port, True, *options)
    cpu0 = memory.server_cpu(server.pid)
    switches0 = memory.switches(list(cpu0))
    results = client.run_many([argv] * clients, timeout=seconds + 90)
    cpu1 = memory.server_cpu(server.pid)
    used = memory.cpu_used(cpu0, cpu1)
    after = list(cpu1)
    switches1 = memory.switches(after)
    total = sum(int(r["total"]) for r in results)
    sessions = sum(int(r["sessions"]) for r in results)
    sample: Sample = {
        "rate": sum(float(r["rate"]) for r in results),
        "clients": clients,
        "processes": len(after),
        "errors": sum(int(r["errors"]) for r in results),
        "protocol": results[0]["protocol"],
    }
    if total and used:  # (no process ended meanwhile)
        slept = sum(switches1.values()) - sum(switches0.get(p, 0) for p in after)
        sample["server_cpu_us"] = used[0] / total * 1e6
        sample["switches"] = slept / total
    if sessions:
        sample["client_cpu_us"] = sum(float(r["cpu"]) for r in results) / sessions * 1e6
    return sample


def measure_workers(
    counts: list[int | None],
    setup: Setup,
    client: Client,
    procs: Processes,
    say: Callable[..., None],
    runs: int,
    seconds: float,
) -> tuple[list[Kind], Results]:
    """Every count, alternating run by run; the kinds measured and the samples."""
    kinds = [ours_with(n) for n in counts]
    most = max([n for n in counts if n is not None] or [len(os.sched_getaffinity(0))])
    prog = (shutil.which("head") or "/usr/bin/head", "-n1")
    results = Results()
    for run in range(runs):
        say(f"run {run + 1}/{runs}: workers")
        for kind, count in rotated(list(zip(kinds, counts, strict=True)), run):
            server = start(kind, setup, prog, procs, f"workers{run}")
            try:
                clients = count or most
                # The default forks its workers as the load goes on: let it grow first.
                _measure(client, server, clients, 16, seconds if count else 6.0)
                heavy = _measure(client, server, clients, 16, seconds)
                results.add("heavy", kind.name, heavy)
                light = _measure(client, server, 1, 1, seconds)
                results.add("light", kind.name, light)
                say(f"  {kind.label:8} {heavy['rate']:8.1f}/s ({clients}x16)", verbose=True)
            finally:
                procs.stop(server.proc)
    return kinds, results


def table(kinds: list[Kind], results: Results) -> str:
    """One row per worker count: medians (min-max) over the runs."""

    columns: list[tuple[str, str, str]] = [
        ("clients x16", "heavy", "clients"),
        ("processes", "heavy", "processes"),
        ("sessions/s", "heavy", "rate"),
        ("server CPU µs/sess", "heavy", "server_cpu_us"),
        ("switches/sess", "heavy", "switches"),
        ("client CPU µs/sess", "heavy", "client_cpu_us"),
        ("c=1: sessions/s", "light", "rate"),
        ("c=1: server CPU µs/sess", "light", "server_cpu_us"),
        ("c=1: switches/sess", "light", "switches"),
    ]
    rows = [["workers", *(c[0] for c in columns)]]
    for kind in kinds:
        rows.append(
            [kind.label, *(cell(results, key, field, kind.name) for _, key, field in columns)]
        )
    return align(rows)


def document(kinds: list[Kind], results: Results) -> dict[str, Any]:
    return {"workers": [k.name for k in kinds], "samples": results.samples}
