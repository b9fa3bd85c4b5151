"""The C load client: built once per source version, run once per measurement."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchlib.procs import Processes

SOURCE = Path(__file__).resolve().parent.parent / "bench_client.c"


class ClientError(Exception):
    """The load client could not be built, or a measurement failed."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "s6tls-bench"


def build(procs: Processes) -> Path:
    """Compile bench_client.c (gcc -O2, OpenSSL) unless this version is built already."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    binary = cache_dir() / f"bench_client-{digest}"
    if binary.exists():
        return binary
    if shutil.which("gcc") is None:
        raise ClientError("gcc not found: run tools/install --test")
    binary.parent.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f"{binary.name}.{os.getpid()}.tmp")
    argv = ["gcc", "-O2", "-pthread", "-o", str(partial), str(SOURCE), "-lssl", "-lcrypto"]
    gcc = procs.start(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = gcc.communicate(timeout=300)
    finally:
        procs.stop(gcc)
    if gcc.returncode != 0:
        partial.unlink(missing_ok=True)
        raise ClientError(f"cannot build the load client (libssl-dev missing?):\n{output}")
    partial.rename(binary)  # atomic: a concurrent bench sees a whole binary or none
    for old in binary.parent.glob("bench_client-*"):
        if old != binary and not old.name.endswith(".tmp"):
            old.unlink(missing_ok=True)  # built from an older bench_client.c
    return binary


class Client:
    """Runs the built client against one port; every run is a registered process."""

    def __init__(self, binary: Path, procs: Processes, tls_options: Sequence[str] = ()) -> None:
        """tls_options: given to every TLS run (--alpn, --cert and --key), so that
        every server of a bench run sees the same client."""
        self.binary = binary
        self.procs = procs
        self.tls_options = list(tls_options)

    def argv(
        self, mode: str, port: int, tls: bool, *options: str, version: str | None = None
    ) -> list[str]:
        """The client's command line; version: the TLS version to force (None: negotiate)."""
        argv = [str(self.binary), mode, "127.0.0.1", str(port), *options]
        if not tls:
            argv.append("--plain")
        else:
            argv += self.tls_options
            if version:
                argv += ["--tls-version", version]
        return argv

    def run(self, argv: list[str], timeout: float) -> dict[str, Any]:
        """Run to completion; its one JSON line, parsed."""
        return self.run_many([argv], timeout)[0]

    def run_many(self, argvs: list[list[str]], timeout: float) -> list[dict[str, Any]]:
        """Run several clients side by side to completion; the JSON line of each."""
        procs = [
            self.procs.start(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for argv in argvs
        ]
        results = []
        try:
            for proc in procs:
                try:
                    out, err = proc.communicate(timeout=timeout)
                except subprocess.TimeoutExpired:
                    raise ClientError(f"load client still running after {timeout:.0f} s") from None
                if proc.returncode != 0 or not out.strip():
                    raise ClientError(f"load client failed (exit {proc.returncode}): {err.strip()}")
                results.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for proc in procs:
                self.procs.stop(proc)
        return results
