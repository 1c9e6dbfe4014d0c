"""Packed segments on a full disk, across many sessions, and what compaction reads and writes.

* A real full disk (a 1 MiB tmpfs, mounted where this machine allows, as in tests/test_resource_faults.py
  and tests/test_reserve.py): deleting keys makes room again. Compaction cannot copy live records on a
  disk without a free block, so holes are punched over the dead ones (spillkit/holes.py) -- never over
  a record the last committed manifest may name.
* A path re-opened and closed many times keeps a bounded number of segment files (and descriptors).
* ``compaction_read_bytes`` and ``compaction_written_bytes`` are the bytes compaction really moves.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_disk_files, crash_copy, fill
from test_resource_faults import assert_accounting, mounted_tmpfs, spill_warnings

import spillkit.segfiles
from spillkit import Chest, SpillWarning
from spillkit.holes import dead_blocks, hole_support
from spillkit.segfiles import is_segment_name

needs_holes = pytest.mark.skipif(not hole_support(), reason="holes are punched on Linux only")


def blob(seed: Hashable, size: int) -> bytes:
    digest = repr(seed).encode().ljust(16, b".")
    return (digest * (size // len(digest) + 1))[:size]


def segments_in(path: str | Path) -> list[str]:
    return sorted(name for name in os.listdir(path) if is_segment_name(name))


def reopened(path: str | Path) -> dict[Hashable, Any]:
    again = Chest(path=path, available_memory=0)
    try:
        return {key: again[key] for key in again}
    finally:
        again.close()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "mnt", "size=1m") as mnt:
        yield mnt


def drop(chest: Chest) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chest.drop()


# ---- holes -----------------------------------------------------------------------------------


def test_dead_blocks_are_whole_blocks_no_live_record_touches() -> None:
    assert dead_blocks(8192, [], 4096) == [(0, 8192)]
    assert dead_blocks(20000, [(12300, 50), (0, 100)], 4096) == [(4096, 8192)]  # the partial tail block stays
    assert dead_blocks(10000, [(0, 100), (5000, 100)], 4096) == []  # no dead block is whole
    assert dead_blocks(16384, [(4000, 200)], 4096) == [(8192, 8192)]  # a record across a boundary keeps both


@pytest.mark.parametrize("write_behind", [False, True], ids=["sync", "write-behind"])
def test_deleting_keys_on_a_real_full_disk_lets_packed_spills_and_the_flush_go_on(
    tmpfs: Path, write_behind: bool
) -> None:
    """Small values fill the disk through one active segment; deleting 90% of the keys makes room.

    Before: the active segment, never compacted while it held a live record, kept every dead byte,
    so every later spill failed with ENOSPC (memory grew past the budget) and so did the flush.
    """
    chest = Chest(path=tmpfs / "c", available_memory=20_000, sizeof=len, write_behind=write_behind)
    try:
        expected: dict[Hashable, Any] = {}
        with spill_warnings():
            i = 0
            while chest.stats.spill_failures == 0:
                chest[i] = expected[i] = blob(i, 2000)
                i += 1
            chest.wait_for_writes()
        failures = chest.stats.spill_failures
        assert len(segments_in(chest.path)) == 1 and os.statvfs(tmpfs).f_bfree == 0
        with spill_warnings() as messages:  # the first compactions find no room to copy into: holes instead
            for key in list(expected)[: len(expected) * 9 // 10]:
                del chest[key]
                del expected[key]
        assert all("compaction failed" in m and "No space left" in m for m in messages), messages
        with spill_warnings() as messages:
            for j in range(100):
                chest["new", j] = expected["new", j] = blob(("new", j), 2000)
            chest.wait_for_writes()
            assert chest.stats.spill_failures == failures
            assert chest.memory_bytes <= chest.available_memory
            chest.flush()
        assert all("holes punched" in m for m in messages), messages  # room made, and said so
        assert_accounting(chest)
        assert {key: chest[key] for key in chest} == expected
        chest.close()
        assert reopened(chest.path) == expected
    finally:
        drop(chest)


@needs_holes
def test_a_put_on_a_full_disk_punches_holes_over_dead_records_and_lands(tmpfs: Path) -> None:
    """40% of the segment is dead (not enough to compact) and the disk has no free block: the append
    fails, holes are punched over the dead records, and the append is tried once more and lands."""
    chest = Chest(path=tmpfs / "c", available_memory=0, sizeof=len)
    try:
        expected: dict[Hashable, Any] = {f"k{i}": blob(i, 3000) for i in range(150)}
        chest.update(expected)
        for i in range(60):  # contiguous, so that whole pages die
            del chest[f"k{i}"]
            del expected[f"k{i}"]
        (segment,) = segments_in(chest.path)
        fill(tmpfs)
        store = chest._store
        assert store.hole_bytes == 0
        with spill_warnings() as messages:
            for i in range(20):
                chest[f"new{i}"] = expected[f"new{i}"] = blob(("new", i), 3000)
        assert len(messages) == 1 and "No space left on device" in messages[0], messages
        assert "holes punched over" in messages[0]  # the full disk is news: told, though the write landed
        assert not chest.inmem and chest.stats.spill_failures == 0
        assert segments_in(chest.path) == [segment]  # room made in place: nothing was copied
        info = os.stat(os.path.join(chest.path, segment))
        assert store.hole_bytes >= 40 * 4096
        assert info.st_blocks * 512 <= info.st_size - store.hole_bytes + 4096  # the blocks really are free
        assert_accounting(chest)  # disk_bytes: the files' lengths (holes included), as documented
        assert chest.disk_bytes == info.st_size
        chest.flush()
        os.unlink(tmpfs / "filler")
        chest.close()
        assert reopened(chest.path) == expected
    finally:
        drop(chest)


@needs_holes
def test_holes_spare_records_the_last_flush_names_until_a_newer_flush_commits(tmp_path: Path, tmpfs: Path) -> None:
    """Records deleted since the last flush are still named by its manifest: no hole goes over them
    (a crash must give that flush back) until the next flush commits. The segment is an adopted one
    (opened read-only at the reopen): its holes are punched through a descriptor opened for them."""
    path = tmpfs / "c"
    flushed: dict[Hashable, Any] = {f"k{i}": blob(i, 3000) for i in range(150)}
    chest = Chest(path=path, available_memory=0, sizeof=len)
    chest.update(flushed)
    chest.close()
    chest = Chest(path=path, available_memory=4000, sizeof=len)  # one value in memory
    try:
        store = chest._store
        expected = dict(flushed)
        for i in range(60):
            del chest[f"k{i}"]
            del expected[f"k{i}"]
        fill(tmpfs)
        with spill_warnings() as messages:
            for i in range(2):
                chest[f"new{i}"] = expected[f"new{i}"] = blob(("new", i), 3000)
        assert messages and all("No space left on device" in m for m in messages)
        assert set(chest.inmem) == {"new0", "new1"} and store.hole_bytes == 0
        crashed = tmp_path / "crashed"  # what a crash now leaves: the last flush, whole
        shutil.copytree(path, crashed, ignore=shutil.ignore_patterns("filler"))
        assert reopened(crashed) == flushed

        # The flush writes what it can, then commits early (into the reserve's room): from then on the
        # deleted records are named by no manifest, holes are punched over them, and the new values
        # are written in the same flush (before helper-117's case: only the next flush wrote them).
        with spill_warnings() as messages:
            chest.flush()
        assert len(messages) == 2 and "holes punched over" in messages[0], messages
        assert "compaction failed" in messages[1] and "No space left" in messages[1], messages  # merging finds none
        assert store.hole_bytes > 0
        with spill_warnings() as messages:
            chest["new2"] = expected["new2"] = blob(("new", 2), 3000)
        assert not messages and set(chest.inmem) == {"new2"}  # new0 and new1 have their records
        with spill_warnings() as messages:
            chest.flush()
        assert all("compaction failed" in m and "No space left" in m for m in messages), messages
        os.unlink(tmpfs / "filler")
        chest.close()
        assert reopened(path) == expected
    finally:
        drop(chest)


def test_a_mostly_dead_active_segment_is_compacted(tmp_path: Path) -> None:
    """Before: the active segment was never compacted while it held a live record, so deleting most
    keys freed nothing until more appends rotated it (64 MiB later, by default)."""
    chest = Chest(path=tmp_path / "c", available_memory=0)
    try:
        expected: dict[Hashable, Any] = {f"k{i}": blob(i, 2000) for i in range(300)}
        chest.update(expected)
        full = chest.disk_bytes
        for i in range(240):
            del chest[f"k{i}"]
            del expected[f"k{i}"]
        assert chest._store.compactions >= 1
        assert chest.disk_bytes < 0.6 * full
        assert {key: chest[key] for key in chest} == expected
        chest.close()
        assert reopened(chest.path) == expected
    finally:
        drop(chest)


def test_overwrites_after_a_flush_do_not_pile_up_in_the_segment_the_flush_pinned(tmp_path: Path) -> None:
    """Before: the active segment, pinned by the flush, took every later append and was never sealed nor
    compacted until the next flush: 20,000 overwrites of one 1 KB key left 21.9 MB on disk, and
    available_disk="1 MiB" refused a put while the Chest held two small keys."""
    chest = Chest(path=tmp_path / "c", available_memory=0, available_disk="1 MiB")
    try:
        chest["keep"] = b"k" * 100
        chest.flush()
        flushed = {"keep": b"k" * 100}
        for i in range(5000):  # 5.5 MB of records, each dead once the next is written
            chest["hot"] = bytes([i % 256]) * 1000
        assert chest.disk_bytes < 700_000  # the pinned segment's dead records stop at about 256 KiB
        assert_disk_files(chest)
        expected = {"keep": b"k" * 100, "hot": bytes([4999 % 256]) * 1000}
        assert {key: chest[key] for key in chest} == expected
        assert reopened(crash_copy(chest)) == flushed  # as if killed now: the flushed records are all there
        chest.flush()  # compacts the sealed segment the first flush pinned, then unlinks it
        assert chest.disk_bytes < 300_000
        assert len(segments_in(chest.path)) == 1
        chest.close()
        assert reopened(chest.path) == expected
    finally:
        drop(chest)


def test_a_flush_after_each_small_write_keeps_one_segment(tmp_path: Path) -> None:
    """A commit does not seal the active segment: writes each followed by a flush share one file."""
    chest = Chest(path=tmp_path / "c", available_memory=0)
    try:
        for i in range(200):
            chest[f"k{i % 50}"] = blob(i, 300)
            chest.flush()
        assert len(segments_in(chest.path)) == 1
    finally:
        drop(chest)


# ---- many sessions ------------------------------------------------------------------------------


def test_a_path_reopened_many_times_keeps_one_segment_file(tmp_path: Path) -> None:
    """Before: each session started a segment and adopted (and held open) every earlier one."""
    path = tmp_path / "c"
    expected: dict[Hashable, Any] = {}
    for session in range(60):
        chest = Chest(path=path, available_memory=100, sizeof=len)
        for tag in "st":
            chest[tag, session] = expected[tag, session] = blob((tag, session), 200)
        chest.close()
        assert len(segments_in(path)) == 1, session
    (segment,) = segments_in(path)
    inode = os.stat(path / segment).st_ino
    chest = Chest(path=path, available_memory=100, sizeof=len)  # a session that only reads copies nothing
    assert {key: chest[key] for key in chest} == expected
    assert len(chest._store._segments) == 1
    chest.close()
    assert segments_in(path) == [segment] and os.stat(path / segment).st_ino == inode
    assert reopened(path) == expected


def test_many_sessions_under_a_low_descriptor_limit(tmp_path: Path) -> None:
    """Before: the reopen failed with EMFILE once the sessions outnumbered the descriptors allowed."""
    script = textwrap.dedent(
        """
        import os, resource, sys
        from spillkit import Chest
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        for session in range(100):
            chest = Chest(path=sys.argv[1], available_memory=100, sizeof=len)
            chest["s", session] = os.urandom(200)
            chest["t", session] = os.urandom(200)
            chest.close()
        chest = Chest(path=sys.argv[1], available_memory=100, sizeof=len)
        assert len(chest) == 200 and all(len(chest[key]) == 200 for key in chest)
        chest.close()
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "c")], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


# ---- compaction's byte counters ---------------------------------------------------------------


class CountingOS:
    """``os`` as spillkit.segfiles sees it, counting the bytes ``pread`` returns and ``pwrite`` writes."""

    def __init__(self) -> None:
        self.read = 0
        self.written = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        data = os.pread(fd, length, offset)
        self.read += len(data)
        return data

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        done = os.pwrite(fd, data, offset)
        self.written += done
        return done


def test_compaction_byte_counters_are_the_bytes_compaction_reads_and_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chest = Chest(path=tmp_path / "c", available_memory=0)
    store = chest._store
    store.segment_bytes = 4096  # a few records a segment: deletes make segments mostly dead
    try:
        expected: dict[Hashable, Any] = {f"k{i}": blob(i, 600) for i in range(40)}
        chest.update(expected)
        assert store.compaction_read_bytes == store.compaction_written_bytes == 0
        before = {key: store.location(key) for key in expected}
        counting = CountingOS()
        monkeypatch.setattr(spillkit.segfiles, "os", counting)
        for i in range(0, 40, 3):  # deletes only: compaction is the only I/O on segments here
            for key in (f"k{i}", f"k{i + 1}"):
                if key in expected:
                    del chest[key]
                    del expected[key]
        monkeypatch.undo()
        assert store.compactions > 0
        assert isinstance(store.compaction_read_bytes, int) and isinstance(store.compaction_written_bytes, int)
        assert store.compaction_read_bytes == counting.read > 0
        assert store.compaction_written_bytes == counting.written > 0
        moved = sum(store.file_bytes(key) for key in expected if store.location(key) != before[key])
        assert counting.written >= moved > 0  # each moved record was written once at least
        assert counting.read >= moved
        assert {key: chest[key] for key in chest} == expected
    finally:
        drop(chest)


@needs_holes
def test_a_full_disk_commit_that_fails_leaves_the_manifest_on_disk_whole(tmp_path: Path) -> None:
    # A commit on a full disk whose manifest outgrew the reserve frees the previous flush's kept
    # files first (documented), which also let go of that manifest's records in the segments: when
    # the commit then failed, holes were punched over records the manifest on disk still named, and
    # a crash afterwards gave back 49 keys that read as corrupt.
    with mounted_tmpfs(tmp_path / "mnt", "size=2m") as mnt:
        path = mnt / "fb"
        chest = Chest(path=path, available_memory=1000)
        try:
            flushed: dict[Hashable, Any] = {f"k{i}": bytes([i]) * 2000 for i in range(100)}
            chest["big"] = bytes(150_000)  # a file of its own, kept for the manifest once deleted
            chest.update(flushed)
            chest.flush()
            del chest["big"]
            for i in range(50):
                del chest[f"k{i}"]
            for i in range(300):  # long keys: the next manifest outgrows the reserve and the kept file
                chest["x" * 900 + str(i)] = b"v" * 1200
            fill(mnt)
            with spill_warnings(), pytest.raises(OSError):
                chest.flush()
            os.unlink(mnt / "filler")
            fill(mnt)
            with spill_warnings(), pytest.raises(OSError):
                chest["new"] = bytes(3000)  # no room: it would punch holes if it could
            crashed = tmp_path / "crashed"  # what a crash now leaves
            shutil.copytree(path, crashed, ignore=shutil.ignore_patterns("filler"))
            with pytest.warns(SpillWarning, match="'big' is missing"):  # the documented loss of that window
                got = reopened(crashed)
            assert {key: got[key] for key in flushed} == flushed  # before: 49 CorruptSpillFile
        finally:
            drop(chest)
