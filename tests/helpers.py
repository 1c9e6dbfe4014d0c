"""Helpers shared by several test modules: hostile keys, draining a policy, the files a Chest spilled,
damaging a record on disk, standing in for a crash while the Chest object lives on."""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from pathlib import Path
from typing import Any

import spillkit.chest
import spillkit.compaction
import spillkit.filereads
import spillkit.filesync
import spillkit.manifest
import spillkit.reopen
import spillkit.reserve
import spillkit.segfiles
import spillkit.segments
import spillkit.spares
import spillkit.spillfile
import spillkit.storage
from spillkit import LRU, Chest
from spillkit.policies import Policy
from spillkit.segfiles import is_segment_name

# Every module that calls ``os`` or ``open`` for spill data: a module missing here is I/O no injected
# fault reaches (tests/test_resource_faults.py checks that none is missing; tests/test_soak.py uses it too).
DISK_IO_MODULES = (
    spillkit.storage,
    spillkit.filesync,
    spillkit.filereads,
    spillkit.manifest,
    spillkit.chest,
    spillkit.segments,
    spillkit.segfiles,
    spillkit.compaction,
    spillkit.reopen,
    spillkit.reserve,
    spillkit.spares,
    spillkit.spillfile,
)


class ConstRepr:
    """Distinct keys whose repr is identical (and whose hashes differ)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return "ConstRepr()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConstRepr) and other.n == self.n

    def __hash__(self) -> int:
        return hash(("ConstRepr", self.n))


class MutableKey:
    """A key whose hash follows a field the caller changes after storing it (a dict loses it too)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        return hash(self.n)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MutableKey) and self.n == other.n

    def __repr__(self) -> str:
        return f"MutableKey({self.n})"


class ReprRaises:
    """A key a dict accepts whose ``__repr__`` raises; equal to itself only."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")

    def __hash__(self) -> int:
        return 7

    def __eq__(self, other: object) -> bool:
        return self is other


def drain(policy: Policy) -> list[Hashable]:
    """Spill every key the policy holds, in the order it offers them."""
    order = []
    while len(policy):
        order.append(policy.victim())
        policy.evicted(order[-1])
    return order


def disk_files(path: str | os.PathLike[str]) -> dict[str, int]:
    """Every file a Chest spills into under ``path``, with its size: one per value that has a
    file of its own (names never start with '.'), plus the segment files packed values share."""
    return {
        name: os.path.getsize(os.path.join(path, name))
        for name in os.listdir(path)
        if not name.startswith(".") or is_segment_name(name)
    }


def is_spare_name(name: str) -> bool:
    """True for the name of a deleted value's file kept for reuse (spillkit.spares)."""
    return re.fullmatch(r"\.tmp-\d+-s[0-9a-f]+-\d+", name) is not None


def spare_files(path: str | os.PathLike[str]) -> list[str]:
    """The deleted values' files kept for reuse (spillkit.spares) under ``path``."""
    return sorted(name for name in os.listdir(path) if is_spare_name(name))


def assert_disk_files(chest: Chest) -> None:
    """``disk_bytes`` is exactly the size of those files; each key not packed has a file (and the files
    the last flush's manifest still needs stay), and the segment files on disk are exactly the ones the store keeps."""
    files = disk_files(chest.path)
    store = chest._store
    # plus files gone from the directory whose blocks a loaded value still maps (map_loads)
    pool = store.inner._spares
    with pool._lock:  # a background write's prepare takes spares without the engine's lock: a still picture
        on_disk = chest.disk_bytes  # first: it tallies the values freed since, which changes held_bytes
        spares = {spare.path: spare.size for spare in pool._spares}
    held = store.inner.held_bytes
    # plus the deleted values' files kept for reuse (a spare taken by a write in progress is that write's)
    assert all(os.path.getsize(path) == size for path, size in spares.items())
    assert set(map(os.path.basename, spares)) <= set(spare_files(chest.path))
    assert on_disk == sum(files.values()) + held + sum(spares.values()), (on_disk, sum(files.values()), held, spares)
    segments = {name for name in files if is_segment_name(name)}
    assert segments == set(store.segment_files())
    own = sum(store.location(key)[0] is None for key in store)
    assert len(files) - len(segments) == own + len(store.inner.retained)
    # every other file is a key's, or one the last flush's manifest still needs (copy-on-write)
    assert set(files) - segments == set(store.inner.names().values()) | store.inner.retained


def abandon(chest: Chest) -> None:
    """Let go of ``chest``'s directory as a killed process would: the kernel drops its lock; nothing is
    flushed or closed. For a test that re-opens the directory and never uses ``chest`` on it again."""
    blanks = chest._store.inner._spares.blanks
    with blanks._making, blanks._lock:  # its threads die with it: no blank file (spillkit.blanks) is made after
        blanks._closed = True
    chest._dir_lock.release()


_copies = itertools.count(1)


def crash_copy(chest: Chest) -> str:
    """A copy of ``chest``'s directory as it is now, beside it: what a restart would find had the process
    died at this moment. For a test that goes on using ``chest``: its directory stays locked meanwhile."""
    chest.wait_for_writes()  # no background write half-copied
    copy = f"{chest.path}-crash-copy-{next(_copies)}"
    shutil.copytree(chest.path, copy, symlinks=True)
    return copy


def flip_last_byte(chest: Chest, key: Hashable) -> None:
    """Damage the key's record (its last byte, in its own file or its segment) on disk, as a lost write would."""
    store = chest._store
    segment, offset = store.location(key)
    end = offset + store.file_bytes(key) if segment is not None else store.file_bytes(key)
    with open(store.filename(key), "r+b") as file:
        file.seek(end - 1)
        byte = file.read(1)
        file.seek(end - 1)
        file.write(bytes([byte[0] ^ 0xFF]))


def fill(where: Path) -> None:
    """Take every free block of the file system at ``where``."""
    fd = os.open(where / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError as error:
        assert error.errno == errno.ENOSPC
    finally:
        os.close(fd)


def child_exit_code(pid: int, *fds: int) -> int:
    """Wait for the forked child ``pid``; close the pipe ends ``fds``; return its exit code."""
    _, status = os.waitpid(pid, 0)
    for fd in fds:
        os.close(fd)
    return os.waitstatus_to_exitcode(status)


class FailsOnBad(LRU):
    """An LRU that fails when told key "bad" left memory (a user's policy with a bug)."""

    def removed(self, key: Hashable) -> None:
        super().removed(key)
        if key == "bad":
            raise RuntimeError("policy bug")


def keep_crc(data: bytearray, at: int, start: int, end: int, want: int) -> None:
    """Change the 4 bytes of ``data`` at ``at`` so that the CRC-32 of ``data[start:end]`` is ``want`` again
    (what it was before the caller's other changes): an attacker's fix-up, since CRC-32 is affine over
    GF(2) and 32 bits solve it. ``at`` must be inside ``[start, end)``."""
    from spillkit.spillfile import crc32 as file_crc

    assert start <= at and at + 4 <= end
    body = bytearray(data[start:end])
    offset = at - start
    zero = file_crc(bytes(len(body)))

    def effect(bit: int) -> int:  # what flipping this bit of the 4 bytes does to the CRC
        probe = bytearray(len(body))
        probe[offset + bit // 8] = 1 << (bit % 8)
        return file_crc(bytes(probe)) ^ zero

    rows = [(effect(bit), 1 << bit) for bit in range(32)]  # solve sum(flip_i * effect_i) = current ^ want
    target, flips = file_crc(bytes(body)) ^ want, 0
    for pivot in range(32):
        row = next(i for i in range(pivot, 32) if rows[i][0] >> pivot & 1)
        rows[pivot], rows[row] = rows[row], rows[pivot]
        for i in range(32):
            if i != pivot and rows[i][0] >> pivot & 1:
                rows[i] = (rows[i][0] ^ rows[pivot][0], rows[i][1] ^ rows[pivot][1])
    for pivot in range(32):
        if target >> pivot & 1:
            flips ^= rows[pivot][1]
    for bit in range(32):
        if flips >> bit & 1:
            data[at + bit // 8] ^= 1 << (bit % 8)
    assert file_crc(bytes(data[start:end])) == want


def join_frames(frames: Iterable[Any]) -> bytearray:
    """Concatenate a codec's frames into one writable buffer, as the disk store's read does."""
    out = bytearray()
    for frame in frames:
        out += memoryview(frame).cast("B")
    return out


def run_threads(target: Callable[[int], None], count: int, timeout: float = 240) -> None:
    """Run ``target(i)`` in ``count`` threads; re-raise the first exception any of them raised."""
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            target(i)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=guarded, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    if errors:
        raise errors[0]


@contextlib.contextmanager
def held_in_another_thread(lock: Any, wait: float = 30.0) -> Iterator[None]:
    """Hold ``lock`` in another thread for the block, as another thread's operation would."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            release.wait(wait)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(wait)
        yield
    finally:
        release.set()
        holder.join(wait)
