"""``-c`` and ``-C``: connection slots and per-IP counts, exact across processes.

Every process that accepts (the server itself, or each of its workers) uses
one shared table, so the limits hold however many processes accept:

- A connection needs a slot before it is accepted. Free slot numbers wait in
  a pipe: at ``-c`` sessions every acceptor sleeps on that pipe, extra
  clients wait in the kernel's backlog, and the end of a session writes its
  slot back, waking one acceptor.
- Shared memory holds, per slot, the client's IP and the process that holds
  it, and the number of sessions per IP in a hash table (open addressing,
  linear probing, deletion by backward shift), so every step costs the same
  whatever ``-c`` is.
- A POSIX record lock, which the kernel releases if its holder dies, makes
  "count this IP's sessions, then take one" a single step. A worker that
  died leaves its slots named: they can be given back.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import zlib

from gevent.socket import wait_read

from s6tls.errors import SystemFailure
from s6tls.shell.fdio import grow_pipe_to

_KEY = 40  # an IP's text, NUL-padded: the longest IPv6 text is 39
_NONE = bytes(_KEY)
_SLOT_BYTES = 2  # a slot number in the pipe; pipe writes this small are atomic
_PAGE = 4096


def _key(ip: str) -> bytes:
    return ip.encode("ascii").ljust(_KEY, b"\0")


class _Region:
    """Fixed-size keys and 32-bit numbers laid out in shared memory."""

    def __init__(self, memory: mmap.mmap, offset: int, count: int) -> None:
        self.keys = memoryview(memory)[offset : offset + count * _KEY]
        numbers = offset + count * _KEY
        self.numbers = memoryview(memory)[numbers : numbers + 4 * count].cast("i")

    @staticmethod
    def size(count: int) -> int:
        return count * (_KEY + 4)

    def key(self, i: int) -> bytes:
        return bytes(self.keys[i * _KEY : (i + 1) * _KEY])

    def set_key(self, i: int, key: bytes) -> None:
        self.keys[i * _KEY : (i + 1) * _KEY] = key


class _Lock:
    """A POSIX record lock on a descriptor of its own: the kernel releases it
    if its holder dies."""

    def __init__(self) -> None:
        self.fd = os.memfd_create("s6tls-lock", os.MFD_CLOEXEC)

    def __enter__(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *_: object) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN)


class Limits:
    """Slots for at most maxconn sessions, at most localmax of them per IP."""

    def __init__(self, maxconn: int, localmax: int) -> None:
        self.maxconn = maxconn
        self.localmax = localmax
        buckets = 1 << (2 * maxconn - 1).bit_length()  # at least twice the IPs there can be
        self._mask = buckets - 1
        self._memory = mmap.mmap(-1, _Region.size(maxconn) + _Region.size(buckets) + 4)
        # per slot: the client's IP, and the pid holding the slot
        self._slots = _Region(self._memory, 0, maxconn)
        # per IP: its sessions
        self._ips = _Region(self._memory, _Region.size(maxconn), buckets)
        total = _Region.size(maxconn) + _Region.size(buckets)
        self._total = memoryview(self._memory)[total : total + 4].cast("i")
        self._lock = _Lock()
        self._free_r, self._free_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._fill_free(b"".join(self._number(slot) for slot in range(maxconn)))
        os.set_blocking(self._free_w, True)

    def _fill_free(self, numbers: bytes) -> None:
        """Put every slot in the pipe: up to 32 KiB (options.MAXCONN_MAX).

        The kernel frees a pipe's page only once all of it is read, and a
        slot given back may need a fresh page: one page of room beyond the
        slots keeps that write from ever blocking. A default pipe holds 64
        KiB, but one made past its user's pipe quota only a page or two.
        """
        try:
            grow_pipe_to(self._free_w, len(numbers) + _PAGE)
            if os.write(self._free_w, numbers) == len(numbers):
                return
            reason = "the pipe is too small"
        except OSError as e:
            reason = e.strerror or str(e)
        raise SystemFailure(f"unable to make room for {self.maxconn} slots: {reason}")

    def fds(self) -> list[int]:
        """Descriptors a process that never accepts (the root helper) may close."""
        return [self._lock.fd, self._free_r, self._free_w]

    @staticmethod
    def _number(slot: int) -> bytes:
        return slot.to_bytes(_SLOT_BYTES, "little")

    # -- the per-IP hash table (called with the lock held)

    def _home(self, key: bytes) -> int:
        return zlib.crc32(key) & self._mask

    def _find(self, key: bytes) -> int:
        """key's bucket, or the empty bucket where it would go."""
        i = self._home(key)
        while (found := self._ips.key(i)) != key and found != _NONE:
            i = (i + 1) & self._mask
        return i

    def _add(self, key: bytes, n: int) -> None:
        i = self._find(key)
        self._ips.set_key(i, key)
        self._ips.numbers[i] += n
        self._total[0] += n
        if self._ips.numbers[i] == 0:
            self._delete(i)

    def _delete(self, hole: int) -> None:
        """Empty bucket hole, moving back what probing would no longer find."""
        mask = self._mask
        j = hole
        while (key := self._ips.key(j := (j + 1) & mask)) != _NONE:
            # key stays unless its home lies cyclically outside (hole, j]
            if (j - self._home(key)) & mask >= (j - hole) & mask:
                self._ips.set_key(hole, key)
                self._ips.numbers[hole] = self._ips.numbers[j]
                hole = j
        self._ips.set_key(hole, _NONE)
        self._ips.numbers[hole] = 0

    def _count(self, key: bytes) -> int:
        return self._ips.numbers[self._find(key)]

    # -- slots

    def take(self) -> int:
        """A free slot, waiting cooperatively while there is none."""
        while True:
            try:
                data = os.read(self._free_r, _SLOT_BYTES)
            except BlockingIOError:
                wait_read(self._free_r)
                continue
            slot = int.from_bytes(data, "little")
            self._slots.numbers[slot] = os.getpid()
            return slot

    def give_back(self, slot: int) -> None:
        """Return a slot that holds no session (its accept failed or was refused)."""
        self._slots.numbers[slot] = 0
        os.write(self._free_w, self._number(slot))

    def admit(self, slot: int, ip: str) -> tuple[bool, int]:
        """Let ip's session have slot, unless ip has localmax already.

        Returns whether it may, and how many sessions ip had before it.
        """
        key = _key(ip)
        with self._lock:
            count = self._count(key)
            if count >= self.localmax:
                return False, count
            self._add(key, 1)
            self._slots.set_key(slot, key)
        return True, count

    def release(self, slot: int) -> None:
        """A session ended: its slot is free again."""
        with self._lock:
            self._free(slot)
        self.give_back(slot)

    def _free(self, slot: int) -> None:
        key = self._slots.key(slot)
        if key != _NONE:
            self._slots.set_key(slot, _NONE)
            self._add(key, -1)

    def total(self) -> int:
        """Sessions running now, in every process (read without the lock: a glance)."""
        return int(self._total[0])

    def counts(self, ip: str) -> tuple[int, int]:
        """ip's sessions, and all sessions, for the log."""
        with self._lock:
            return self._count(_key(ip)), self._total[0]

    def reclaim(self, pid: int) -> int:
        """Free every slot of process pid, which is gone; how many there were."""
        with self._lock:
            slots = [slot for slot, owner in enumerate(self._slots.numbers) if owner == pid]
            for slot in slots:
                self._free(slot)
                self.give_back(slot)
        return len(slots)
