"""SegmentUpkeep (spillkit.upkeep): when a packed store compacts, on a real PackedStore in tmp_path.

After a change: empty segments dropped, sealed ones compacted once more than ``compact_ratio`` dead,
the active one sealed only once enough of it is dead, a pinned one never. At a flush (``sync``): pinned
mostly dead segments compacted, small adopted segments merged. Under ``available_disk`` pressure: every
unpinned segment with dead records. A failed compaction only warns and leaves the records where they were;
on a full disk holes are punched over the dead records. The only fake is ``os.pwrite`` failing, to inject
a disk fault.
"""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import pytest

from spillkit import Chest, DiskQuotaExceeded, SpillWarning
from spillkit.codecs import PickleCodec
from spillkit.holes import hole_support
from spillkit.segfiles import is_segment_name
from spillkit.segments import PackedStore

SEG1, SEG2 = ".spillkit-seg-000001", ".spillkit-seg-000002"


def store_in(path: Path, **kwargs: Any) -> PackedStore:
    kwargs.setdefault("segment_bytes", 4096)
    return PackedStore(str(path), PickleCodec(), **kwargs)


def segments_in(path: Path) -> set[str]:
    return {name for name in os.listdir(path) if is_segment_name(name)}


def assert_readable(store: PackedStore, expected: dict[Hashable, bytes]) -> None:
    assert set(store) == set(expected)
    for key, value in expected.items():
        assert store.read(key) == value, key


def assert_counted(store: PackedStore, path: Path) -> None:
    """total_bytes is the bytes of the files really on disk (the upkeep recounts whatever happened)."""
    assert store.total_bytes == sum(os.path.getsize(path / name) for name in os.listdir(path))


def two_segments(path: Path, **kwargs: Any) -> tuple[PackedStore, dict[Hashable, bytes]]:
    """Ten 394-byte records fill SEG1 (3940 bytes, sealed); two more start SEG2, the active one."""
    store = store_in(path, **kwargs)
    expected: dict[Hashable, bytes] = {}
    for i in range(12):
        expected[f"k{i}"] = bytes([i]) * 300
        store.write(f"k{i}", expected[f"k{i}"])
    assert [store.location(f"k{i}")[0] for i in (0, 9, 10)] == [SEG1, SEG1, SEG2]
    assert store.file_bytes("k0") == 394
    return store, expected


def delete(store: PackedStore, expected: dict[Hashable, bytes], *keys: Hashable) -> None:
    for key in keys:
        store.delete(key)
        del expected[key]


# ---- after a change -------------------------------------------------------------------------------


def test_a_sealed_segment_is_compacted_exactly_once_more_than_half_of_it_is_dead(tmp_path: Path) -> None:
    # Catches: a wrong threshold (>= instead of >, or the ratio ignored), no compaction at all, or a
    # compaction that loses or misplaces the live records it moves.
    store, expected = two_segments(tmp_path)
    delete(store, expected, "k0", "k1", "k2", "k3", "k4")  # 1970 of 3940 bytes dead: exactly half, not more
    assert segments_in(tmp_path) == {SEG1, SEG2}
    assert store.compactions == 0
    delete(store, expected, "k5")
    assert segments_in(tmp_path) == {SEG2}  # its four live records were copied to the active segment
    assert store.compactions == 1
    assert {store.location(f"k{i}")[0] for i in range(6, 12)} == {SEG2}
    assert_readable(store, expected)
    assert_counted(store, tmp_path)
    store.close()


def test_a_segment_with_nothing_live_is_dropped_without_copying(tmp_path: Path) -> None:
    # Catches: an emptied segment kept on disk, or "compacted" (a needless read and compaction count).
    store, expected = two_segments(tmp_path, compact_ratio=0.99)  # so that only the drop rule applies
    delete(store, expected, *(f"k{i}" for i in range(10)))
    assert segments_in(tmp_path) == {SEG2}
    assert store.compactions == 0
    assert store.compaction_read_bytes == 0
    assert_readable(store, expected)
    assert_counted(store, tmp_path)
    store.close()


def test_the_active_segment_is_sealed_and_compacted_only_once_256_kib_of_it_are_dead(tmp_path: Path) -> None:
    # Catches: the active segment never compacted (its dead records stay while no append rotates it), or
    # compacted as soon as it is mostly dead (an overwrite-heavy workload would make a file every few records).
    store = store_in(tmp_path, segment_bytes=1 << 20, pack_threshold=1 << 20)
    expected: dict[Hashable, bytes] = {f"k{i}": bytes([i]) * 40_000 for i in range(10)}
    for key, value in expected.items():
        store.write(key, value)
    record = store.file_bytes("k0")
    assert segments_in(tmp_path) == {SEG1}
    delete(store, expected, *(f"k{i}" for i in range(6)))
    assert 6 * record < 256 * 1024 and 6 * record > 0.5 * 10 * record  # mostly dead, but not enough dead bytes
    assert segments_in(tmp_path) == {SEG1}
    assert store.compactions == 0
    delete(store, expected, "k6")
    assert 7 * record >= 256 * 1024
    assert segments_in(tmp_path) == {SEG2}  # sealed, then its three live records copied to a new segment
    assert store.compactions == 1
    assert_readable(store, expected)
    assert_counted(store, tmp_path)
    store.close()


def test_a_pinned_segment_waits_for_the_flush_and_is_unlinked_at_the_checkpoint(tmp_path: Path) -> None:
    # Catches: a segment the last manifest points into compacted (and unlinked) between flushes, which a
    # crash would turn into lost values; or one never compacted at the flush; or unlinked before the checkpoint.
    store, expected = two_segments(tmp_path)
    store.sync()
    store.checkpoint()  # a manifest naming every record is durable: both segments pinned
    delete(store, expected, *(f"k{i}" for i in range(8)))  # SEG1 80% dead
    assert segments_in(tmp_path) == {SEG1, SEG2}
    assert store.compactions == 0
    store.sync()  # the flush compacts it; the manifest on disk still needs it
    assert store.compactions == 1
    assert {store.location(key)[0] for key in expected} != {SEG1}
    assert SEG1 in store.retained
    assert segments_in(tmp_path) >= {SEG1}
    assert_readable(store, expected)
    store.checkpoint()  # the new manifest is durable
    assert SEG1 not in segments_in(tmp_path)
    assert store.retained == frozenset()
    assert_readable(store, expected)
    assert_counted(store, tmp_path)
    store.close()


def test_a_pinned_active_segment_is_sealed_once_the_records_appended_since_the_pin_are_mostly_dead(
    tmp_path: Path,
) -> None:
    # Catches: later appends piling more dead records into a pinned segment no compaction may touch until
    # the next flush (the _piling_up rule), or such a segment compacted before the flush.
    store = store_in(tmp_path, segment_bytes=1 << 20, pack_threshold=1 << 20)
    expected: dict[Hashable, bytes] = {"base": b"b" * 100}
    store.write("base", expected["base"])
    store.sync()
    store.checkpoint()  # the active segment is pinned now, and still takes appends
    for i in range(10):
        expected[f"k{i}"] = bytes([i]) * 40_000
        store.write(f"k{i}", expected[f"k{i}"])
    delete(store, expected, *(f"k{i}" for i in range(6)))  # about 240 KB dead since the pin: not yet
    expected["probe1"] = b"1" * 40_000
    store.write("probe1", expected["probe1"])
    assert store.location("probe1")[0] == SEG1
    delete(store, expected, "k6")  # about 280 KB dead since the pin: sealed
    expected["probe2"] = b"2" * 40_000
    store.write("probe2", expected["probe2"])
    assert store.location("probe2")[0] == SEG2
    assert store.compactions == 0  # sealed only: the manifest on disk may name its records
    assert segments_in(tmp_path) == {SEG1, SEG2}
    assert_readable(store, expected)
    store.sync()  # at the flush it is compacted like any pinned segment
    assert store.compactions == 1
    store.checkpoint()
    assert segments_in(tmp_path) == {SEG2}
    assert_readable(store, expected)
    assert_counted(store, tmp_path)
    store.close()


# ---- under quota pressure -------------------------------------------------------------------------


def test_quota_pressure_compacts_a_segment_the_ratio_alone_would_not(tmp_path: Path) -> None:
    # Catches: a write refused for the quota while dead records in unpinned segments could make room.
    store, expected = two_segments(tmp_path)
    delete(store, expected, "k0", "k1", "k2", "k3")  # 40% dead: no compaction by the ratio
    assert store.compactions == 0
    store.available_disk = store.total_bytes  # full: a new record fits only once dead bytes are given back
    expected["new"] = b"n" * 300
    store.write("new", expected["new"])
    assert store.compactions >= 1
    assert SEG1 not in segments_in(tmp_path)
    assert store.total_bytes <= store.available_disk
    assert_readable(store, expected)
    assert_counted(store, tmp_path)
    store.close()


def test_quota_pressure_leaves_pinned_segments_and_refuses_the_write(tmp_path: Path) -> None:
    # Catches: the reclaim compacting (and unlinking) a segment the last manifest needs.
    store, expected = two_segments(tmp_path)
    store.sync()
    store.checkpoint()
    delete(store, expected, "k0", "k1", "k2", "k3")
    store.available_disk = store.total_bytes
    with pytest.raises(DiskQuotaExceeded):
        store.write("new", b"n" * 300)
    assert store.compactions == 0
    assert segments_in(tmp_path) == {SEG1, SEG2}
    assert_readable(store, expected)
    assert_counted(store, tmp_path)
    store.close()


# ---- failures -------------------------------------------------------------------------------------


class FailingPwrite:
    """``os.pwrite`` refusing every write with ``errno`` while armed (the injected fault)."""

    def __init__(self, error: int) -> None:
        self.real = os.pwrite
        self.error = error
        self.armed = False
        self.failures = 0

    def __call__(self, fd: int, data: Any, offset: int) -> int:
        if self.armed:
            self.failures += 1
            raise OSError(self.error, os.strerror(self.error))
        return self.real(fd, data, offset)


def test_a_failed_compaction_warns_and_leaves_every_record_where_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Catches: an OSError from compaction raised out of a delete (the delete did happen), records lost or
    # repointed at a copy that was never written, or counts left stale after the failure.
    store, expected = two_segments(tmp_path)
    fault = FailingPwrite(errno.EIO)
    monkeypatch.setattr(os, "pwrite", fault)
    delete(store, expected, "k0", "k1", "k2", "k3", "k4")
    fault.armed = True
    with pytest.warns(SpillWarning, match="compaction failed"):
        delete(store, expected, "k5")
    assert fault.failures > 0
    assert "k5" not in store
    assert store.compactions == 0
    assert {store.location(f"k{i}")[0] for i in range(6, 10)} == {SEG1}
    assert segments_in(tmp_path) == {SEG1, SEG2}
    assert_readable(store, expected)
    assert_counted(store, tmp_path)
    fault.armed = False
    delete(store, expected, "k6")  # the next change to the segment tries again
    assert store.compactions == 1
    assert segments_in(tmp_path) == {SEG2}
    assert_readable(store, expected)
    store.close()


@pytest.mark.skipif(not hole_support(), reason="the file system cannot punch holes")
def test_on_a_full_disk_holes_are_punched_over_the_dead_records_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Catches: a full disk leaving every dead byte allocated (no copy can be made, so only holes help),
    # or holes punched over live records.
    store = store_in(tmp_path, segment_bytes=1 << 16)
    expected: dict[Hashable, bytes] = {f"k{i}": bytes([i]) * 4000 for i in range(20)}
    for key, value in expected.items():
        store.write(key, value)
    in_first = sorted((k for k in expected if store.location(k)[0] == SEG1), key=lambda k: store.location(k)[1])
    assert len(in_first) >= 12
    half = len(in_first) // 2
    delete(store, expected, *in_first[: half - 1])  # not yet more than half dead
    assert store.compactions == 0 and store.hole_bytes == 0
    fault = FailingPwrite(errno.ENOSPC)
    monkeypatch.setattr(os, "pwrite", fault)
    fault.armed = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        delete(store, expected, in_first[half - 1], in_first[half])
    assert any("compaction failed" in str(w.message) for w in caught)
    assert fault.failures > 0
    assert store.compactions == 0
    assert store.hole_bytes > 0
    assert_readable(store, expected)
    store.close()


# ---- at a flush: small adopted segments merged ----------------------------------------------------


def session(path: Path, values: dict[str, bytes]) -> set[str]:
    """Open the Chest at ``path``, add ``values`` (straight to disk), close it; the segment files left."""
    chest = Chest(path=path, available_memory=0)
    chest.update(values)
    chest.close()
    return segments_in(path)


def test_small_segments_of_earlier_sessions_are_merged_at_a_flush(tmp_path: Path) -> None:
    # Catches: a path re-opened many times gathering a segment per session (the merge rule of _compact_pinned).
    path = tmp_path / "c"
    expected: dict[str, bytes] = {}
    for n in range(4):
        values = {f"s{n}-{i}": bytes([n, i]) * 200 for i in range(5)}
        expected.update(values)
        assert len(session(path, values)) == 1, n
    chest = Chest(path=path, available_memory=0)
    assert dict(chest.items()) == expected
    chest.drop()


def test_an_adopted_segment_with_many_live_bytes_is_not_merged(tmp_path: Path) -> None:
    # Catches: a merge that copies big segments at every flush (only those of at most segment_bytes // 4
    # live bytes are small).
    path = tmp_path / "c"
    chest = Chest(path=path, available_memory=0)
    chest._store.segment_bytes = 8192
    chest.update({f"big{i}": bytes([i]) * 1000 for i in range(4)})  # over 2048 live bytes
    chest.close()
    (first,) = segments_in(path)
    chest = Chest(path=path, available_memory=0)
    chest._store.segment_bytes = 8192
    chest["small"] = b"s" * 100
    chest.close()
    assert first in segments_in(path)
    assert len(segments_in(path)) == 2
    chest = Chest(path=path, available_memory=0)
    assert chest["small"] == b"s" * 100 and chest["big3"] == bytes([3]) * 1000
    chest.drop()
