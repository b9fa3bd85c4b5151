"""The soak: many echo sessions at high concurrency, then proof that nothing leaked.

After a warm-up the server's descriptors (by type), children and RSS are
recorded; after the soak every session must have verified byte for byte,
descriptors and children must be back to the idle baseline with no zombie,
and RSS within 10% of the warm baseline. ``tests/reliability/test_soak.py``
runs a short one; ``tools/soak`` runs this module for the long one.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.reliability import observe
from tests.support.certs import Authority
from tests.support.server import Running, start
from tests.support.traffic import Tally, run_sessions

CONCURRENCY = 64
WARMUP = 1000
RSS_TOLERANCE = 0.10
NOBODY = "65534"
# -c and -C at the soak's concurrency: a client that reconnects before its last
# session's slot is released waits in the backlog, as the limit says.
SERVER_ARGS = ("-H", "-c", str(CONCURRENCY), "-C", str(CONCURRENCY), "127.0.0.1", "0", "/bin/cat")


@dataclass
class SoakResult:
    tally: Tally
    idle: observe.Snapshot
    warm: observe.Snapshot
    end: observe.Snapshot
    seconds: float
    log: str

    def summary(self) -> str:
        t = self.tally
        growth = (self.end.rss_kib - self.warm.rss_kib) / self.warm.rss_kib * 100
        return (
            f"soak: {t.sessions} sessions ({t.verified} verified, {len(t.failures)} failed), "
            f"{t.bytes / 1e6:.1f} MB echoed byte for byte in {self.seconds:.1f} s; "
            f"idle: {self.idle.describe()}; end: {self.end.describe()}; "
            f"RSS warm {self.warm.rss_kib / 1024:.1f} MiB -> end "
            f"{self.end.rss_kib / 1024:.1f} MiB ({growth:+.1f}%)"
        )

    def problems(self) -> list[str]:
        """Every check that failed, in words; empty when the soak passed."""
        found = [f"session failed: {f}" for f in self.tally.failures[:10]]
        if self.end.fds != self.idle.fds:
            found.append(f"descriptors {dict(self.end.fds)} != idle {dict(self.idle.fds)}")
        if self.end.children != self.idle.children:
            found.append(f"{self.end.children} children left, {self.idle.children} at idle")
        if self.end.zombies:
            found.append(f"{self.end.zombies} zombies")
        if self.end.rss_kib > self.warm.rss_kib * (1 + RSS_TOLERANCE):
            found.append(f"RSS {self.end.rss_kib} KiB > warm {self.warm.rss_kib} KiB + 10%")
        # Good sessions log nothing at the default verbosity.
        found += [f"logged: {line}" for line in self.log.splitlines()[:10]]
        return found


def soak(
    srv: Running,
    sessions: int,
    *,
    concurrency: int = CONCURRENCY,
    warmup: int = WARMUP,
    seed: int = 0,
    report_progress: bool = False,
) -> SoakResult:
    """Warm up, record the baselines, soak, and record where the server ends."""
    idle = observe.idle(srv.pid)
    warm_tally = run_sessions(srv.port, warmup, concurrency, seed + 1)
    assert not warm_tally.failures, warm_tally.failures[:5]
    warm = observe.settle(srv.pid, idle)

    def progress(t: Tally) -> None:
        print(f"soak: {t.sessions}/{sessions} sessions, {len(t.failures)} failed", flush=True)

    began = time.monotonic()
    tally = run_sessions(
        srv.port, sessions, concurrency, seed, progress=progress if report_progress else None
    )
    seconds = time.monotonic() - began
    end = observe.settle(srv.pid, idle)
    return SoakResult(tally, idle, warm, end, seconds, srv.log())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tools/soak", description="Soak s6-tlsserver with echo sessions through /bin/cat."
    )
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--warmup", type=int, default=WARMUP)
    parser.add_argument("--seed", type=int, default=random.randrange(1 << 30))
    parser.add_argument(
        "--privsep",
        action="store_true",
        help="run the server as root with TLS_UID/TLS_GID (privilege separation)",
    )
    args = parser.parse_args(argv)
    if args.privsep and os.geteuid() != 0:
        parser.error("--privsep needs root")
    mode = " (privilege separation)" if args.privsep else ""
    print(f"soak: seed {args.seed}{mode}", flush=True)
    with tempfile.TemporaryDirectory(prefix="s6tls-soak-") as d:
        pair = Authority(Path(d)).issue("ec")
        env = {"KEYFILE": str(pair.key), "CERTFILE": str(pair.cert)}
        if args.privsep:
            env |= {"TLS_UID": NOBODY, "TLS_GID": NOBODY}
        server_args = list(SERVER_ARGS)
        server_args[2] = server_args[4] = str(args.concurrency)
        srv = start(server_args, env, Path(d) / "server.log")
        try:
            result = soak(
                srv,
                args.sessions,
                concurrency=args.concurrency,
                warmup=args.warmup,
                seed=args.seed,
                report_progress=True,
            )
            alive = srv.proc.poll() is None
        finally:
            srv.stop()
    print(result.summary(), flush=True)
    problems = result.problems() + ([] if alive else ["the server died"])
    for problem in problems:
        print(f"soak: FAILED: {problem}", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
