"""``tools/bench``: the command line, the run, the printed report."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import report, scaling
from benchlib.certrules import RuleFiles, make_rules
from benchlib.certs import KeyPair, make_pair
from benchlib.client import Client, ClientError, build
from benchlib.procs import Interrupted, supervised
from benchlib.servers import ALPN, KINDS, OURS, Kind, ServerError, Setup
from benchlib.workloads import PLANS, Bench, Plan, main_concurrency

DESCRIPTION = """\
Benchmark s6-tlsserver against stunnel4 (exec mode), socat (OPENSSL-LISTEN,fork
EXEC) and tcpserver (ucspi-tcp, plain TCP: the ceiling without TLS), all on
127.0.0.1 with the same certificate and the same prog per connection:
sessions/s and latency with full and resumed handshakes at several
concurrencies (prog: head -n1), one-session MB/s down, up and echo, and
server-side memory per idle session (PSS). Servers alternate run by run.

What a TLS feature of ours costs, each server against the same without it
(not measured unless named; a run that names one has the load client offer
ALPN h2,http/1.1, or present a client certificate, to every server of it):
ours-alpn (ALPN=h2,http/1.1) against ours-1; ours-mtls-rules (-y, CAFILE, -x
with 10,000 certhash/ rules, the client's among them) against ours-mtls (the
same with only the IP rule). For example

  tools/bench --servers ours-1,ours-alpn --only handshakes
  tools/bench --servers ours-mtls,ours-mtls-rules --only handshakes

print each such pair's ratios run by run, and their median.
"""

NEEDS = {"stunnel": "stunnel4", "socat": "socat", "tcpserver": "tcpserver"}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="tools/bench",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="3 short runs (about two minutes)")
    size.add_argument("--smoke", action="store_true", help="a tiny run that checks the bench")
    p.add_argument("--rsa", action="store_true", help="RSA-2048 instead of ECDSA P-256")
    p.add_argument("--tls-version", choices=("1.2", "1.3"), help="force this TLS version")
    p.add_argument(
        "--servers",
        help=f"comma-separated, from {','.join(KINDS)} (default: all but ours-uid and "
        "ours-uid-open, which need root and measure what confining the TLS engine costs, "
        "and ours-alpn, ours-mtls and ours-mtls-rules; --smoke: ours,stunnel)",
    )
    p.add_argument("--runs", type=int, help="runs of the sessions and transfer workloads")
    p.add_argument(
        "--only",
        choices=("handshakes",),
        help="handshakes: only full handshakes, at c=16 (--smoke: c=4), in each TLS version "
        "(or --tls-version's): no resumption, transfers, memory or quiet time",
    )
    p.add_argument(
        "--workers",
        metavar="LIST",
        help="instead: how ours scales with S6TLS_WORKERS, for each count of LIST "
        "(e.g. 1,2,4,8,default): full handshakes/s, server CPU and context switches "
        "per session, with one load client per worker and with one session at a time",
    )
    p.add_argument(
        "--ours", metavar="COMMAND", default=OURS, help=f"the s6-tlsserver to test (default {OURS})"
    )
    p.add_argument("--json", metavar="FILE", help="also save every sample and the summary here")
    p.add_argument("-v", "--verbose", action="store_true", help="print every measurement")
    return p.parse_args(argv)


def _versions() -> dict[str, str]:
    def first_line(argv: list[str], pick: str) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "?"
        for line in (done.stdout + done.stderr).splitlines():
            if pick in line:
                return line.strip()
        return "?"

    try:
        ours = importlib.metadata.version("s6tls")
    except importlib.metadata.PackageNotFoundError:
        ours = "?"
    return {
        "s6tls": ours,
        "python": sys.version.split()[0],
        "stunnel": first_line(["stunnel4", "-version"], "stunnel "),
        "socat": first_line(["socat", "-V"], "socat version"),
        "openssl": first_line(["openssl", "version"], "OpenSSL"),
    }


def _raise_fd_limit() -> None:
    """Soft fd limit up to the hard one, for the bench and every server alike."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> None:
    """Run the bench; on Ctrl-C, SIGTERM or SIGHUP stop everything it started and exit."""
    try:
        bench(parse(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        sys.exit("tools/bench: stopped by SIGINT")
    except Interrupted as e:
        sys.exit(f"tools/bench: stopped by {e}")


def bench(args: argparse.Namespace) -> None:
    """Start, measure and stop every server, then print (and save) the report."""
    plan = PLANS["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.runs:
        plan = dataclasses.replace(plan, runs=args.runs)
    if args.tls_version:
        plan = dataclasses.replace(plan, versions=(args.tls_version,))
    if args.only == "handshakes":
        concurrencies = (main_concurrency(plan),)
        plan = dataclasses.replace(plan, concurrencies=concurrencies, handshakes_only=True)
    everyday = ",".join(k.name for k in KINDS.values() if k.by_default)
    names = (args.servers or ("ours,stunnel" if args.smoke else everyday)).split(",")
    unknown = [n for n in names if n not in KINDS]
    if unknown:
        sys.exit(
            f"tools/bench: unknown server {', '.join(unknown)}; choose from {', '.join(KINDS)}"
        )
    missing = [NEEDS[n] for n in names if n in NEEDS and shutil.which(NEEDS[n]) is None]
    if missing:
        sys.exit(f"tools/bench: {', '.join(missing)} not installed: run tools/install --test")
    kinds = [KINDS[n] for n in KINDS if n in names]
    _raise_fd_limit()
    if args.workers:
        try:
            counts = scaling.parse_counts(args.workers)
        except ValueError as e:
            sys.exit(f"tools/bench: {e}")
        workers(args, plan, counts)
        return
    say = _Progress(args.verbose)
    began = time.monotonic()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="s6tls-bench-") as tmp, supervised() as procs:
        workdir = Path(tmp)
        mtls = any(k.client_cert for k in kinds)
        pair = make_pair(workdir, rsa=args.rsa, client=mtls)
        rules = make_rules(workdir, pair.client.cert) if pair.client else None
        maxconn = max(plan.idle + 100, 200)
        setup = Setup(pair, workdir, maxconn=maxconn, ours=args.ours, rules=rules)
        try:
            client = Client(build(procs), procs, client_options(kinds, pair))
            results = Bench(plan, kinds, setup, client, procs, say).run()
        except (ClientError, ServerError) as e:
            sys.exit(f"tools/bench: {e}")
        started = list(procs.started)
    elapsed = time.monotonic() - began
    load_after = os.getloadavg()
    versions = _versions()
    entries = report.verdicts(results, plan)
    print(_header(plan, pair.kind, versions, load_before, load_after, elapsed, kinds))
    if pair.client is not None or any(k.alpn for k in kinds):
        print(f"the load client, for every server: {client_text(kinds, pair, rules)}")
    print()
    print(report.table(results, kinds, plan))
    print()
    pairs = report.pairs_text(results, kinds, plan)
    if pairs:
        print(pairs)
        print()
    print(report.targets_text(entries))
    if args.json:
        document: dict[str, Any] = {
            "plan": dataclasses.asdict(plan),
            "certificate": pair.kind,
            "tls_versions": list(plan.versions),
            "servers": {k.name: k.note for k in kinds},
            "environment": {
                "cpus": os.cpu_count(),
                "loadavg_before": load_before,
                "loadavg_after": load_after,
                "seconds": elapsed,
                **versions,
            },
            "samples": results.samples,
            "summary": report.summarize(results),
            "pairs": report.pairs(results, kinds, plan),
            "targets": entries,
            "client": client_text(kinds, pair, rules),
            "pids": started,
        }
        Path(args.json).write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n")


def client_options(kinds: list[Kind], pair: KeyPair) -> list[str]:
    """What the load client does for every server of the run, because one of them needs it."""
    options = []
    if any(k.alpn for k in kinds):
        options += ["--alpn", ALPN]
    if pair.client is not None:
        options += ["--cert", str(pair.client.cert), "--key", str(pair.client.key)]
    return options


def client_text(kinds: list[Kind], pair: KeyPair, rules: RuleFiles | None) -> str:
    """The load client as every server of the run sees it, in words."""
    said = []
    if any(k.alpn for k in kinds):
        said.append(f"offers ALPN {ALPN}")
    if pair.client is not None:
        said.append(
            f"presents a client certificate (CN={pair.client.subject}, {pair.kind}, "
            "signed by the servers' CAFILE)"
        )
    if rules is not None:
        family = rules.matching_key.split("/")[0]
        said.append(
            f"which the {rules.rules:,}-rule cdb matches by its {family}/ key (USER={rules.user})"
        )
    return ", ".join(said) if said else "no ALPN, no client certificate"


def workers(args: argparse.Namespace, plan: Plan, counts: list[int | None]) -> None:
    """The --workers measurement, printed (and saved)."""
    say = _Progress(args.verbose)
    runs = args.runs or (1 if args.smoke else 3)
    seconds = 0.5 if args.smoke else 2.0
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="s6tls-bench-") as tmp, supervised() as procs:
        workdir = Path(tmp)
        pair = make_pair(workdir, rsa=args.rsa)
        setup = Setup(pair, workdir, maxconn=4096, ours=args.ours)
        try:
            client = Client(build(procs), procs)
            kinds, results = scaling.measure_workers(
                counts, setup, client, procs, say, runs, seconds
            )
        except (ClientError, ServerError) as e:
            sys.exit(f"tools/bench: {e}")
    print(
        f"tools/bench --workers: {pair.kind}, TLS as negotiated, prog head -n1, "
        f"{runs} runs alternating, {seconds:g} s per point, {time.monotonic() - began:.0f} s; "
        f"machine: {len(os.sched_getaffinity(0))} CPUs usable, load average "
        f"{os.getloadavg()[0]:.2f}"
    )
    print(
        "cells: median (min-max) over runs; switches = voluntary context switches of the "
        "server's processes; c=1: one client, one session at a time"
    )
    print()
    print(scaling.table(kinds, results))
    if args.json:
        Path(args.json).write_text(
            json.dumps(scaling.document(kinds, results), indent=1, ensure_ascii=False) + "\n"
        )


class _Progress:
    """Progress lines on stderr; per-measurement lines only with -v."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.began = time.monotonic()

    def __call__(self, text: str, verbose: bool = False) -> None:
        if self.verbose or not verbose:
            print(f"[{time.monotonic() - self.began:4.0f} s] {text}", file=sys.stderr, flush=True)


def _header(
    plan: Plan,
    certificate: str,
    versions: dict[str, str],
    before: tuple[float, float, float],
    after: tuple[float, float, float],
    elapsed: float,
    kinds: list[Kind],
) -> str:
    per_point = f"{plan.count} sessions" if plan.count else f"{plan.seconds:g} s"
    if plan.handshakes_only:
        what = (
            f"only full handshakes (--only handshakes), c={plan.concurrencies[0]}, in TLS "
            f"{' and '.join(plan.versions)}"
        )
    else:
        what = (
            f"full handshakes in TLS {' and '.join(plan.versions)}, "
            f"the rest in TLS {plan.versions[0]}"
        )
    return "\n".join(
        [
            f"tools/bench ({plan.name}): {certificate}, {what}; "
            f"{plan.runs} runs alternating servers, {per_point} per sessions point, "
            f"{elapsed:.0f} s in all",
            f"machine: {os.cpu_count()} CPUs, load average {before[0]:.2f} before, "
            f"{after[0]:.2f} after (a shared machine moves absolute numbers; "
            "servers alternate, so compare within a row)",
            f"ours = s6tls {versions['s6tls']} (Python {versions['python']}) with default flags "
            "and S6TLS_WORKERS unset (workers as the load needs); ours N=1, N=2 = "
            f"S6TLS_WORKERS=1, 2; ours -D = with TCP_NODELAY; "
            f"{versions['stunnel']} (exec mode, debug = err); "
            f"{versions['socat']} (fork, EXEC); tcpserver = ucspi-tcp, plain TCP; "
            f"{versions['openssl']}",
            *(f"{k.label} = {k.note}" for k in kinds if k.alpn or k.client_cert),
            "cells: median (min-max) over runs; ! = some session failed; "
            "client CPU µs = the load client's (one event-driven process) per session or "
            "per MiB, lowest-highest median over the servers",
            *(
                [
                    "note: other load ran: the kernel shares CPU per thread, and stunnel runs "
                    "a thread per connection where ours is one process; CPU µs/session and "
                    "µs/MiB are the steadier comparison"
                ]
                if max(before[0], after[0]) > 1.0
                else []
            ),
        ]
    )
