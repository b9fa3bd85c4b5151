"""``-c`` and ``-C``: connection slots and per-IP counts, exact across processes.

Every process that accepts (the server itself, or each of its workers) uses
one shared table, so the limits hold however many processes accept:

- A connection needs a slot before it is accepted. Free slot numbers wait in
  a pipe: at ``-c`` sessions every acceptor sleeps on that pipe, extra
  clients wait in the kernel's backlog, and the end of a session writes its
  slot back, waking one acceptor.
- Each slot's record, in shared memory, names the client's IP; counting one
  IP's sessions is a search of the records. A POSIX record lock, which the
  kernel releases if its holder dies, makes "count, then take" one step.
- Each slot also names the process that holds it, so the slots of a worker
  that died can be given back.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager

from gevent.socket import wait_read

# "\n", the IP's text padded to the longest IPv6 text, "\n": a record matches
# only a whole record, whatever the IPs around it.
_IP_WIDTH = 39
RECORD = _IP_WIDTH + 2
_FREE = b"\n" + b" " * _IP_WIDTH + b"\n"
_SLOT_BYTES = 2  # a slot number in the pipe; pipe writes this small are atomic


def _record(ip: str) -> bytes:
    return b"\n" + ip.encode("ascii").ljust(_IP_WIDTH) + b"\n"


class Limits:
    """Slots for at most maxconn sessions, at most localmax of them per IP."""

    def __init__(self, maxconn: int, localmax: int) -> None:
        self.maxconn = maxconn
        self.localmax = localmax
        self._records_end = maxconn * RECORD
        # Anonymous shared memory, inherited by the workers; the lock is
        # taken on a descriptor of its own.
        self._map = mmap.mmap(-1, self._records_end + 4 * maxconn)
        self._fd = os.memfd_create("s6tls-lock", os.MFD_CLOEXEC)
        self._map[: self._records_end] = _FREE * maxconn
        self._owners = memoryview(self._map)[self._records_end :].cast("i")
        self._free_r, self._free_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self._free_r, False)
        # 16384 slots at most (options.MAXCONN_MAX): 32 KiB fits a pipe.
        os.write(self._free_w, b"".join(self._number(slot) for slot in range(maxconn)))

    def fds(self) -> list[int]:
        """Descriptors a process that never accepts (the root helper) may close."""
        return [self._fd, self._free_r, self._free_w]

    @staticmethod
    def _number(slot: int) -> bytes:
        return slot.to_bytes(_SLOT_BYTES, "little")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def _count(self, record: bytes) -> int:
        return self._map[: self._records_end].count(record)

    def take(self) -> int:
        """A free slot, waiting cooperatively while there is none."""
        while True:
            try:
                data = os.read(self._free_r, _SLOT_BYTES)
            except BlockingIOError:
                wait_read(self._free_r)
                continue
            slot = int.from_bytes(data, "little")
            self._owners[slot] = os.getpid()
            return slot

    def give_back(self, slot: int) -> None:
        """Return a slot that holds no session (its accept failed or was refused)."""
        self._owners[slot] = 0
        os.write(self._free_w, self._number(slot))

    def admit(self, slot: int, ip: str) -> tuple[bool, int]:
        """Let ip's session have slot, unless ip has localmax already.

        Returns whether it may, and how many sessions ip had before it.
        """
        record = _record(ip)
        with self._locked():
            count = self._count(record)
            if count >= self.localmax:
                return False, count
            start = slot * RECORD
            self._map[start : start + RECORD] = record
        return True, count

    def release(self, slot: int) -> None:
        """A session ended: its slot is free again."""
        start = slot * RECORD
        with self._locked():
            self._map[start : start + RECORD] = _FREE
        self.give_back(slot)

    def counts(self, ip: str) -> tuple[int, int]:
        """ip's sessions, and all sessions, for the log."""
        with self._locked():
            return self._count(_record(ip)), self.maxconn - self._count(_FREE)

    def reclaim(self, pid: int) -> int:
        """Free every slot of process pid, which is gone; how many there were."""
        freed = 0
        with self._locked():
            for slot, owner in enumerate(self._owners):
                if owner == pid:
                    start = slot * RECORD
                    self._map[start : start + RECORD] = _FREE
                    self.give_back(slot)
                    freed += 1
        return freed
