"""The shared slot table behind -c, -C and TCPCONNNUM (s6tls.shell.limits),
driven in one process against a plain model: every answer and count must
match, however IPs collide in its hash table and wherever sessions end."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s6tls.shell.limits import Limits

# Few buckets and many IPs, so that probing wraps and deletions shift entries.
IPS = [f"10.0.0.{i}" for i in range(12)] + ["::1", "2001:db8::ffff:ffff:ffff:ffff"]
Op = tuple[str, int]  # ("admit", ip index) or ("end", index of a running session)
OPS = st.lists(
    st.tuples(st.sampled_from(["admit", "end"]), st.integers(0, len(IPS) - 1)), max_size=200
)


@settings(max_examples=300, deadline=None)
@given(maxconn=st.integers(1, 9), localmax=st.integers(1, 4), ops=OPS)
def test_counts_match_a_model(maxconn: int, localmax: int, ops: list[Op]) -> None:
    limits = Limits(maxconn, localmax)
    running: list[tuple[int, str]] = []  # (slot, ip)
    model: Counter[str] = Counter()
    for op, n in ops:
        if op == "admit":
            if len(running) == maxconn:
                continue  # at -c, nobody takes a slot: the acceptors wait
            ip = IPS[n]
            slot = limits.take()
            admitted, count = limits.admit(slot, ip)
            assert count == model[ip]
            assert admitted == (model[ip] < localmax)
            if admitted:
                running.append((slot, ip))
                model[ip] += 1
            else:
                limits.give_back(slot)
        elif running:
            slot, ip = running.pop(n % len(running))
            limits.release(slot)
            model[ip] -= 1
        for ip in IPS:
            assert limits.counts(ip) == (model[ip], len(running))


def test_a_gone_process_gives_its_slots_back() -> None:
    limits = Limits(3, 3)
    for ip in ("10.0.0.1", "10.0.0.1", "10.0.0.2"):
        assert limits.admit(limits.take(), ip)[0]
    assert limits.counts("10.0.0.1") == (2, 3)
    assert limits.reclaim(os.getpid()) == 3
    assert limits.counts("10.0.0.1") == (0, 0)
    slots = {limits.take() for _ in range(3)}  # all three are free again
    assert slots == {0, 1, 2}


@pytest.mark.timeout(30)
def test_giving_slots_back_never_blocks_at_the_largest_c() -> None:
    # Slot numbers are read two bytes at a time, but the pipe frees a page only
    # once all of it is read: a slot given back must still find room.
    limits = Limits(16384, 16384)
    for rounds in (1, 3000, 16384):
        taken = [limits.take() for _ in range(rounds)]
        for slot in taken:
            assert limits.admit(slot, "10.0.0.1")[0]
        for slot in taken:
            limits.release(slot)
    assert limits.counts("10.0.0.1") == (0, 0)
