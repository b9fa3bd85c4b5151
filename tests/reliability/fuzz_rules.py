"""Fuzzers for the rules readers: cdb files and values, rules directories, envdirs.

Each fuzzer feeds random and mutated inputs to the readers the server uses
and sorts what happened: a result, a RulesError (failing closed), or
anything else, which is a bug. A per-input alarm turns a hang into a
finding. The test runs this module in a child process (``python -m
tests.reliability.fuzz_rules KIND``) so a crash in an extension or a hang
cannot take pytest down; it prints one JSON report on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import struct
import sys
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from s6tls.rules import DirRules, Rule, RulesError, decode, encode, lookup_dir, read_envdir
from s6tls.rules.cdbfile import CdbRules, read_cdb, write_cdb

# No single input may take longer than this.
ALARM_SECONDS = 5

_KEYS = [
    "ip4/127.0.0.1_32",
    "ip4/10.0.0.0_8",
    "ip4/0.0.0.0_0",
    "ip6/::1_128",
    "ip6/::_0",
    "reversedns/example.com",
    "reversedns/@",
]
_ODD_KEYS = [
    "",
    "..",
    "../..",
    "ip4/..",
    "ip4/../../etc",
    "/etc",
    "ip4//x",
    "ip4/./x",
    "a\0b",
    "reversedns/" + "x" * 300,
    "reversedns/" + "a." * 3000,
    "reversedns/\udcff\udcfe",
    "reversedns/é",
    "reversedns/a\nb",
]


class Hang(Exception):
    """An input took longer than ALARM_SECONDS."""


def _alarm(_signum: int, _frame: object) -> None:
    raise Hang(f"no answer in {ALARM_SECONDS} s")


class Report:
    """Outcome counts, and the first few unexpected exceptions with their inputs saved."""

    def __init__(self, keep: Path) -> None:
        self.outcomes: Counter[str] = Counter()
        self.unexpected: list[str] = []
        self.keep = keep
        self.inputs = 0

    @contextlib.contextmanager
    def case(self, what: str, keep: Callable[[Path], None] | None = None) -> Iterator[None]:
        """Run one input: count its outcome; keep the input of an unexpected one."""
        self.inputs += 1
        signal.alarm(ALARM_SECONDS)
        try:
            yield
            self.outcomes["result"] += 1
        except RulesError as e:
            self.outcomes[type(e).__name__] += 1
        except Exception as e:
            self.outcomes[f"UNEXPECTED {type(e).__name__}"] += 1
            if len(self.unexpected) < 10:
                saved = self.keep / f"input{self.inputs}"
                if keep is not None:
                    keep(saved)
                tb = traceback.format_exception(e)[-3:]
                self.unexpected.append(f"{what} (kept in {saved}): {''.join(tb)}")
        finally:
            signal.alarm(0)

    def json(self) -> str:
        return json.dumps(
            {"inputs": self.inputs, "outcomes": self.outcomes, "unexpected": self.unexpected}
        )


# --- cdb -------------------------------------------------------------------------


def _random_rule(rng: random.Random) -> Rule:
    if rng.random() < 0.3:
        return Rule(allow=False)
    values = [None, "", "x" * rng.randint(0, 50)]
    env = tuple((f"V{i}", rng.choice(values)) for i in range(rng.randint(0, 4)))
    return Rule(allow=True, env=env, exec=rng.choice(["", "cat", "echo hi"]))


def _random_value(rng: random.Random) -> bytes:
    """A rule value: valid, damaged, or not a rule at all."""
    kind = rng.random()
    if kind < 0.5:
        return mutate(rng, encode(_random_rule(rng)))
    if kind < 0.6:
        return b"A" + rng.randbytes(rng.randint(0, 12))
    if kind < 0.7:
        env_len = rng.choice([0, 1, 4096, 4097, 0xFFFF])
        return b"A" + struct.pack(">H", env_len) + rng.randbytes(rng.randint(0, 64))
    return rng.randbytes(rng.randint(0, 200))


def _valid_cdb(rng: random.Random, path: Path) -> bytes:
    records = {key: encode(_random_rule(rng)) for key in rng.sample(_KEYS, rng.randint(0, 5))}
    for _ in range(rng.randint(0, 20)):
        records[f"junk/{rng.randrange(10**6)}"] = _random_value(rng)
    write_cdb(str(path), records)
    return path.read_bytes()


def mutate(rng: random.Random, data: bytes) -> bytes:
    """data with a few random changes: flips, cuts, insertions, big numbers."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        if op == 0 and out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif op == 2:
            del out[rng.randrange(len(out) + 1) :]
        elif op == 3:
            at = rng.randrange(len(out) + 1)
            out[at:at] = rng.randbytes(rng.randint(1, 16))
        elif op == 4 and len(out) >= 4:
            # a 32-bit length or position pushed past the end of the file
            at = rng.randrange(len(out) - 3)
            out[at : at + 4] = struct.pack("<I", rng.choice([len(out), 0x7FFFFFFF, 0xFFFFFFFF]))
        elif op == 5 and out:
            at = rng.randrange(len(out))
            out[at:at] = out[at : at + rng.randint(1, 64)]
    return bytes(out)


def _cdb_input(rng: random.Random, valid: list[bytes]) -> bytes:
    kind = rng.random()
    if kind < 0.55:
        return mutate(rng, rng.choice(valid))
    if kind < 0.7:
        data = rng.choice(valid)
        return data[: rng.randrange(len(data) + 1)]
    if kind < 0.8:
        return rng.randbytes(rng.randint(0, 4096))
    if kind < 0.9:
        # a valid header whose tables point anywhere
        return b"".join(
            struct.pack("<II", rng.randrange(1 << 32), rng.randrange(1 << 32)) for _ in range(256)
        ) + rng.randbytes(rng.randint(0, 256))
    return rng.choice(valid) + rng.randbytes(rng.randint(1, 64))


def _read_all_ways(path: Path) -> None:
    rules = CdbRules(str(path))
    try:
        rules.find(_KEYS + _ODD_KEYS)
        for key in _KEYS:
            rules.get(key)
    finally:
        rules.close()
    read_cdb(str(path))


def _writer(data: bytes) -> Callable[[Path], None]:
    """Keeps an input for the report by writing it to the given path."""

    def write(path: Path) -> None:
        path.write_bytes(data)

    return write


def fuzz_cdb(count: int, seed: int, work: Path, report: Report) -> None:
    rng = random.Random(seed)
    path = work / "rules.cdb"
    # Valid files to damage, written (and synced) by the real writer once.
    valid = [_valid_cdb(rng, work / "valid.cdb") for _ in range(40)]
    for _ in range(count):
        data = _cdb_input(rng, valid)
        path.write_bytes(data)
        with report.case(f"cdb of {len(data)} bytes", _writer(data)):
            _read_all_ways(path)
    for _ in range(count):
        value = _random_value(rng) if rng.random() < 0.8 else mutate(rng, _random_value(rng))
        with report.case(f"value {value[:40]!r}", _writer(value)):
            decode(value)
    # Huge files: a 64 MiB cdb whose tables are all empty, and one of random bytes.
    huge = work / "huge.cdb"
    with open(huge, "wb") as f:
        f.write(struct.pack("<II", 64 << 20, 0) * 256)
        f.truncate(64 << 20)
    with report.case("64 MiB cdb of zeros"):
        _read_all_ways(huge)
    huge.write_bytes(rng.randbytes(16 << 20))
    with report.case("16 MiB of random bytes"):
        _read_all_ways(huge)
    huge.unlink()
    # Not a regular file.
    fifo = work / "fifo.cdb"
    os.mkfifo(fifo)
    with report.case("a FIFO"):
        _read_all_ways(fifo)
    with report.case("a directory"):
        _read_all_ways(work)
    with report.case("/dev/zero"):
        _read_all_ways(Path("/dev/zero"))


# --- rules directories and envdirs -----------------------------------------------


def _odd_name(rng: random.Random) -> bytes:
    """A file name an envdir might hold, from the ordinary to the hostile."""
    makers: list[Callable[[], bytes]] = [
        lambda: b"VAR%d" % rng.randrange(100),
        lambda: bytes(rng.randrange(128, 256) for _ in range(rng.randint(1, 20))),
        lambda: b"L" * 255,  # the longest name a file system allows
        lambda: b"." + rng.randbytes(3).hex().encode(),
        lambda: b"A=B",
        lambda: b"new\nline",
        lambda: b"...",
        lambda: b" ",
        lambda: "é€".encode(),
        lambda: bytes(rng.randrange(1, 256) for _ in range(rng.randint(1, 40))).replace(b"/", b"_"),
    ]
    return rng.choice(makers)()


def _make_node(rng: random.Random, path: bytes, target_dir: bytes) -> None:
    """Create one odd thing at path: a file of any size, a FIFO, a directory, a socket, a link."""
    kind = rng.randrange(14)
    if kind <= 3:
        with open(path, "wb") as f:
            f.write(rng.randbytes(rng.choice([0, 1, 10, 4095, 4096, 4097, 10000])))
    elif kind == 4:
        with open(path, "wb") as f:
            f.truncate(rng.choice([1 << 30, 5 << 30]))  # huge and sparse
    elif kind == 5:
        os.mkfifo(path)
    elif kind == 6:
        os.mkdir(path)
    elif kind == 7:
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.bind(path)
        except OSError:
            with open(path, "wb"):
                pass  # path too long for a socket address
        finally:
            sock.close()
    elif kind == 8:
        os.symlink(path + b".absent", path)  # dangling
    elif kind == 9:
        os.symlink(os.path.basename(path), path)  # a loop onto itself
    elif kind == 10:
        os.symlink(rng.choice([b"/dev/zero", b"/dev/urandom", b"/dev/null", b"/"]), path)
    elif kind == 11:
        fifo = b"%s/fifo%d" % (target_dir, rng.randrange(1 << 30))
        os.mkfifo(fifo)
        os.symlink(fifo, path)
    elif kind == 12:
        os.symlink(target_dir, path)  # a directory elsewhere
    else:
        os.symlink(b"/etc/passwd", path)


def _random_tree(rng: random.Random, root: bytes, key: str) -> None:
    """A rules directory with one odd rule at key."""
    os.mkdir(root)
    elsewhere = root + b"/elsewhere"
    os.mkdir(elsewhere)
    with open(elsewhere + b"/allow", "wb"):
        pass
    keydir = root + b"/" + os.fsencode(key)
    os.makedirs(os.path.dirname(keydir))
    if rng.random() < 0.2:
        _make_node(rng, keydir, elsewhere)
        return
    os.mkdir(keydir)
    for part in (b"allow", b"deny", b"exec"):
        if rng.random() < 0.6:
            _make_node(rng, keydir + b"/" + part, elsewhere)
    if rng.random() < 0.2:
        _make_node(rng, keydir + b"/env", elsewhere)
    elif rng.random() < 0.8:
        env = keydir + b"/env"
        os.mkdir(env)
        for _ in range(rng.randint(0, 6)):
            name = env + b"/" + _odd_name(rng)
            if not os.path.lexists(name):
                _make_node(rng, name, elsewhere)


def fuzz_dirs(count: int, seed: int, work: Path, report: Report) -> None:
    rng = random.Random(seed)
    for n in range(count):
        root = os.fsencode(work / f"t{n}")
        key = rng.choice(_KEYS)
        _random_tree(rng, root, key)
        rulesdir = os.fsdecode(root)

        def keep(saved: Path, tree: bytes = root) -> None:
            shutil.copytree(os.fsdecode(tree), saved, symlinks=True)

        with report.case(f"rule {key} in {rulesdir}", keep):
            DirRules(rulesdir).find([key, *rng.sample(_KEYS, 2)])
        with report.case(f"envdir of {key} in {rulesdir}", keep):
            read_envdir(f"{rulesdir}/{key}/env", missing_ok=True)
        odd = rng.choice(_ODD_KEYS)
        with report.case(f"odd key {odd!r} in {rulesdir}", keep):
            lookup_dir(rulesdir, odd)
        shutil.rmtree(root)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["cdb", "dirs"])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGALRM, _alarm)
    keep = args.work / "kept"
    keep.mkdir()
    report = Report(keep)
    fuzz = fuzz_cdb if args.kind == "cdb" else fuzz_dirs
    fuzz(args.count, args.seed, args.work, report)
    print(report.json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
