"""What a failed fsync leaves trusted: records an earlier fsync covered, and entries an earlier directory fsync covered.

tests/test_fsync_failure.py checks that a file or segment whose fsync failed is never fsynced again
and that what it held is written anew. These tests check the two limits of that rule:

- a segment remembers how many bytes its last good fsync covered; after a failed fsync only the
  records past that point are untrusted, so a key that an earlier flush made durable stays in the
  next manifest even when the disk then refuses every new write;
- a failed fsync of the directory leaves the names created or renamed since its last good fsync
  unknown on disk: their values are written anew (a new entry) and covered by a later directory
  fsync before a flush reports success. The manifest's own rename is redone by every commit;
- a durable record that compaction copied into a segment whose fsync (or the directory's) then
  failed is still on disk where the committed manifest names it: the key goes back to it, stays
  committed when nothing can be rewritten, and its segment is unlinked only once a copy is fsynced.

Faults are injected as in tests/test_resource_faults.py: ``os`` in the modules that write and fsync
spill data is replaced by a proxy that forwards everything to the real ``os`` and logs, in order,
the directory entries made (``create`` of a segment, ``replace`` of a file or the manifest) and the
fsyncs that succeeded.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import stat
import warnings
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_disk_files, flip_last_byte

import spillkit.filesync
import spillkit.manifest
import spillkit.segfiles
import spillkit.segments
import spillkit.storage
from spillkit import Chest, SpillError, SpillWarning
from spillkit.manifest import MANIFEST_NAME, read_manifest

UNIT = 100
BUDGET = 2.5 * UNIT  # two values in memory
KEYS: list[Hashable] = ["k0", ("t", 1), "k2", ("t", 3), "k4", "k5"]
NEW = ["new0", "new1", "new2"]  # put after the first flush: new0 is spilled, new1 and new2 stay in memory
MODES = [pytest.param(False, id="files"), pytest.param(True, id="packed")]


def unit_sizeof(value: Any) -> int:
    return UNIT


def payload(i: int) -> bytes:
    return bytes([i % 256]) * 50 + str(i).encode()


class Disk:
    """The shared log and switches behind the ``os`` proxies of several spillkit modules.

    ``events`` holds, in order: ``("create", name)`` for a file created with ``O_CREAT``,
    ``("replace", name)`` for a rename onto ``name``, ``("fsync", module, name, inode)`` for each
    fsync that succeeded (a directory under its full path) and ``("failed", module, name)``.
    ``fail`` picks the one fsync that fails with EIO (then it is cleared); while ``full`` is set,
    spill data cannot be written (``pwrite`` and ``writev`` fail with ENOSPC; the manifest, a few
    hundred bytes written with ``os.write``, still fits).
    """

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.fail: Callable[[str, str, bool], bool] | None = None
        self.full = False
        self.kept: list[int] = []  # the failed descriptors: their inode numbers must not be reused

    def failures(self) -> list[tuple[Any, ...]]:
        return [event for event in self.events if event[0] == "failed"]

    def last(self, *event: Any) -> int:
        """Index of the last event equal to ``event`` (-1 if none)."""
        found = [i for i, logged in enumerate(self.events) if logged == event]
        return found[-1] if found else -1


class ModuleOS:
    """``os`` as one spillkit module sees it: every call forwarded, logged through ``disk``."""

    def __init__(self, disk: Disk, module: str) -> None:
        self._disk = disk
        self._module = module

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def open(self, path: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
        fd = os.open(path, flags, mode, **kwargs)
        if flags & os.O_CREAT:
            self._disk.events.append(("create", os.path.basename(path)))
        return fd

    def replace(self, src: Any, dst: Any, **kwargs: Any) -> None:
        os.replace(src, dst, **kwargs)
        self._disk.events.append(("replace", os.path.basename(dst)))

    def fsync(self, fd: int) -> None:
        where = os.readlink(f"/proc/self/fd/{fd}")
        info = os.fstat(fd)
        is_dir = stat.S_ISDIR(info.st_mode)
        name = where if is_dir else os.path.basename(where)
        disk = self._disk
        if disk.fail is not None and disk.fail(self._module, name, is_dir):
            disk.fail = None
            disk.events.append(("failed", self._module, name))
            disk.kept.append(os.dup(fd))
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fsync(fd)
        disk.events.append(("fsync", self._module, name, info.st_ino))

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        self._refuse()
        return os.pwrite(fd, data, offset)

    def writev(self, fd: int, buffers: Any) -> int:
        self._refuse()
        return os.writev(fd, buffers)

    def _refuse(self) -> None:
        if self._disk.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    made = Disk()
    for module in (spillkit.storage, spillkit.filesync, spillkit.segments, spillkit.segfiles, spillkit.manifest):
        monkeypatch.setattr(module, "os", ModuleOS(made, module.__name__.rpartition(".")[2]))
    yield made
    for fd in made.kept:
        os.close(fd)


def make(path: Path, packed: bool = True) -> Chest:
    return Chest(path=path, available_memory=BUDGET, sizeof=unit_sizeof, pack_threshold=None if packed else 0)


def file_of(chest: Chest, key: Hashable) -> str:
    """The name of the file holding the key's record: its own file, or its segment."""
    return os.path.basename(chest._store.filename(key))


def inode_of(chest: Chest, key: Hashable) -> int:
    return os.stat(chest._store.filename(key)).st_ino


def committed(chest: Chest) -> set[Hashable]:
    return {entry.key for entry in read_manifest(chest.path, chest._secret) or []}


def reopened(path: Path, packed: bool = True) -> dict[Hashable, Any]:
    again = make(path, packed)
    try:
        return {key: again[key] for key in again}
    finally:
        again.close()


def flushed_then_more(path: Path, packed: bool = True, segment_bytes: int = 0) -> tuple[Chest, dict[Hashable, Any]]:
    """A Chest whose first flush committed KEYS; then NEW were put (new0 spilled, new1 and new2 in memory).

    ``segment_bytes=1`` makes every record put after the flush open a segment of its own.
    """
    chest = make(path, packed)
    expected: dict[Hashable, Any] = {key: payload(i) for i, key in enumerate(KEYS)}
    chest.update(expected)
    chest.flush()
    if segment_bytes:
        chest._store.segment_bytes = segment_bytes
    for i, key in enumerate(NEW):
        chest[key] = expected[key] = payload(70 + i)
    assert set(chest.inmem) == {"new1", "new2"} and "new0" in chest._store
    return chest, expected


def fail_segment_fsync(tmp_path: Path, disk: Disk) -> tuple[Chest, dict[Hashable, Any], str]:
    """Flush 1 makes KEYS durable in one segment; NEW are appended to it; flush 2's fsync of it fails."""
    chest, expected = flushed_then_more(tmp_path / "chest")
    segment = file_of(chest, "k0")
    store = chest._store
    assert {file_of(chest, key) for key in [*KEYS, "new0"]} == {segment}
    durable_end = max(store.location(key)[1] + store.file_bytes(key) for key in KEYS)
    assert durable_end // mmap.PAGESIZE == store.location("new0")[1] // mmap.PAGESIZE  # a page old and new share
    disk.fail = lambda module, name, is_dir: name == segment
    with pytest.raises(OSError) as info:
        chest.flush()  # writes new1 and new2 into the segment too, then its fsync fails
    assert info.value.errno == errno.EIO
    assert disk.failures() == [("failed", "segments", segment)]
    assert store.unsynced_keys() == ["new0"]  # new1 and new2 lost their records: they are in memory
    assert not ({"new1", "new2"} & set(store))
    for key in KEYS:  # flush 1's fsync covered them: still trusted where they are
        assert store.has_copy(key) and file_of(chest, key) == segment, key
    return chest, expected, segment


@pytest.mark.parametrize("refusal", ["ENOSPC", "quota"])
def test_a_record_made_durable_before_a_failed_segment_fsync_stays_committed(
    tmp_path: Path, disk: Disk, refusal: str
) -> None:
    chest, expected, segment = fail_segment_fsync(tmp_path, disk)
    failed_inode = inode_of(chest, "k0")
    store = chest._store
    if refusal == "ENOSPC":
        disk.full = True
    else:
        store.available_disk = store.total_bytes  # not one byte more
    with pytest.raises(SpillError) as info:
        chest.flush()  # nothing new can be written: the new keys fail, the old ones need no write
    assert {key for key, _ in chest._flush_failures} == set(NEW)
    for key in NEW:
        assert repr(key) in str(info.value)
    assert committed(chest) == set(KEYS)  # flush 1's durable records are still named
    snapshot = tmp_path / "snapshot"  # what a crash now would leave
    shutil.copytree(chest.path, snapshot)
    disk.full = False
    store.available_disk = None
    assert reopened(snapshot) == {key: expected[key] for key in KEYS}

    chest.flush()  # the disk has room again
    assert committed(chest) == set(expected)
    for key in NEW:
        assert inode_of(chest, key) != failed_inode, key
    for key in KEYS:  # left where flush 1 put them (the segment is not mostly dead)
        assert inode_of(chest, key) == failed_inode, key
    assert disk.last("fsync", "segments", segment, failed_inode) < disk.events.index(disk.failures()[0])
    chest.close()
    assert reopened(tmp_path / "chest") == expected


def test_a_failed_segment_is_compacted_like_any_other_once_no_untrusted_record_is_left(
    tmp_path: Path, disk: Disk
) -> None:
    chest, expected, segment = fail_segment_fsync(tmp_path, disk)
    failed_inode = inode_of(chest, "k0")
    store = chest._store
    flip_last_byte(chest, "new0")  # the page cache lost it: its read-back fails the checks, it stays untrusted
    for key in KEYS[:4]:  # mostly dead now (two live records of nine); pinned, so only a flush compacts it
        del chest[key]
        del expected[key]
    with pytest.raises(SpillError, match="'new0'"):
        chest.flush()
    assert store.unsynced_keys() == ["new0"]
    assert committed(chest) == {"k4", "k5", "new1", "new2"}
    for key in ["k4", "k5"]:  # not copied: the segment still holds an untrusted record
        assert file_of(chest, key) == segment, key

    del chest["new0"]
    del expected["new0"]
    chest.flush()  # nothing untrusted is left: compacted like any segment
    assert segment not in store.segment_files()  # and unlinked once the new manifest was committed
    assert not os.path.exists(os.path.join(chest.path, segment))
    for key in ["k4", "k5"]:  # the copies were fsynced before the commit
        assert file_of(chest, key) != segment
        assert disk.last("fsync", "segments", file_of(chest, key), inode_of(chest, key)) >= 0
    assert disk.last("fsync", "segments", segment, failed_inode) < disk.events.index(disk.failures()[0])
    chest.close()
    assert reopened(tmp_path / "chest") == expected


@pytest.mark.parametrize("packed", MODES)
def test_names_made_before_a_failed_directory_fsync_are_made_anew_and_covered_by_a_later_one(
    tmp_path: Path, disk: Disk, packed: bool
) -> None:
    path = tmp_path / "chest"
    chest, expected = flushed_then_more(path, packed, segment_bytes=1)  # packed: a new directory entry per record
    store = chest._store
    disk.fail = lambda module, name, is_dir: module == "filesync" and is_dir
    with pytest.raises(OSError) as info:
        chest.flush()  # new1 and new2 are written, every file and segment fsynced; the directory's fsync fails
    assert info.value.errno == errno.EIO
    directory = os.path.realpath(path)  # as /proc/self/fd shows it
    assert disk.failures() == [("failed", "filesync", directory)]
    failed_at = disk.events.index(disk.failures()[0])
    assert committed(chest) == set(KEYS)  # flush 1's manifest: this flush never got to its own
    assert store.unsynced_keys() == ["new0"]  # new1 and new2 lost their records: they are in memory
    for key in KEYS:  # entries covered by flush 1's directory fsync
        assert store.has_copy(key), key

    chest.flush()
    directory_synced = disk.last("fsync", "filesync", directory, os.stat(path).st_ino)
    for key in NEW:  # a new entry after the failure, fsynced, then covered by a directory fsync
        name = file_of(chest, key)
        made = max(disk.last("create", name), disk.last("replace", name))
        assert made > failed_at, key
        assert made < disk.last("fsync", "segments" if packed else "filesync", name, inode_of(chest, key)), key
        assert disk.last("fsync", "segments" if packed else "filesync", name, inode_of(chest, key)) < directory_synced
    assert committed(chest) == set(expected)
    chest.close()
    assert reopened(path, packed) == expected


@pytest.mark.parametrize("packed", MODES)
def test_a_failed_directory_fsync_after_the_manifest_rename_is_covered_by_the_next_commit(
    tmp_path: Path, disk: Disk, packed: bool
) -> None:
    """Passes without the per-name rule too: it pins down what a flush does after the commit's fsync failed."""
    path = tmp_path / "chest"
    chest, expected = flushed_then_more(path, packed)
    first = read_manifest(chest.path, chest._secret) or []
    chest["k0"] = expected["k0"] = payload(90)  # a new record for a key flush 1 committed
    disk.fail = lambda module, name, is_dir: module == "manifest" and is_dir
    with pytest.raises(OSError) as info:
        chest.flush()  # the new manifest is renamed into place, then the directory's fsync fails
    assert info.value.errno == errno.EIO
    failed_at = disk.events.index(disk.failures()[0])
    assert committed(chest) == set(expected)  # renamed, but not known to be durable: flush 1's may be on disk
    for entry in first:  # so everything flush 1's manifest needs is kept
        assert os.path.exists(os.path.join(path, entry.segment or entry.name)), entry
    chest["k2"] = expected["k2"] = payload(91)
    chest.flush()
    renamed = disk.last("replace", MANIFEST_NAME)
    assert renamed > failed_at  # a new manifest renamed after the failure ...
    assert disk.last("fsync", "manifest", os.path.realpath(path), os.stat(path).st_ino) > renamed  # ... and covered
    chest.close()
    assert reopened(path, packed) == expected


# ---- compaction copies of durable records ------------------------------------------------------


def compaction_ahead(tmp_path: Path, big: bool = False) -> tuple[Chest, dict[Hashable, Any], str, str]:
    """A re-opened Chest whose next flush compacts the segment flush 1 made durable.

    Flush 1 (a close) commits KEYS in one segment; re-opened, that segment is pinned and takes no more
    appends. Deleting four of its six records leaves it mostly dead; NEW are put (new0 opens a new,
    active segment; new1 and new2 stay in memory). The next flush writes new1 and new2 into the active
    segment, then copies k4 and k5 (durable, named by the committed manifest) there too. ``big`` also
    puts a value with a file of its own, spilled. Returns the Chest, the expected state, the names of
    the original segment and of the active one.
    """
    path = tmp_path / "chest"
    first = make(path)
    expected: dict[Hashable, Any] = {key: payload(i) for i, key in enumerate(KEYS)}
    first.update(expected)
    first.close()
    chest = make(path)
    store = chest._store
    original = file_of(chest, "k0")
    assert {file_of(chest, key) for key in KEYS} == {original}
    for key in KEYS[:4]:
        del chest[key]
        del expected[key]
    if big:
        chest["big"] = expected["big"] = b"B" * (2 * spillkit.segments.DEFAULT_PACK_THRESHOLD)
    for i, key in enumerate(NEW):
        chest[key] = expected[key] = payload(70 + i)
    assert set(chest.inmem) == {"new1", "new2"}
    active = file_of(chest, "new0")
    assert active != original and (not big or store.location("big")[0] is None)
    assert {file_of(chest, key) for key in ["k4", "k5"]} == {original}  # not compacted outside a flush
    return chest, expected, original, active


def compaction_then_a_failed_file_fsync(tmp_path: Path, disk: Disk) -> tuple[Chest, dict[Hashable, Any], str, str, str]:
    """:func:`compaction_ahead` with a large value, then a flush that copies k4 and k5 (their fsync succeeds)
    and fails at the large value's file fsync; also returns that file's name."""
    chest, expected, original, active = compaction_ahead(tmp_path, big=True)
    big = file_of(chest, "big")
    disk.fail = lambda module, name, is_dir: name == big
    with pytest.raises(OSError):
        chest.flush()
    return chest, expected, original, active, big


def refuse_writes(chest: Chest, disk: Disk, refusal: str) -> None:
    if refusal == "ENOSPC":
        disk.full = True
    else:
        chest._store.available_disk = chest._store.total_bytes  # not one byte more


def allow_writes(chest: Chest, disk: Disk) -> None:
    disk.full = False
    chest._store.available_disk = None


def assert_durable_keys_survive_refused_rewrites(
    tmp_path: Path, disk: Disk, chest: Chest, expected: dict[Hashable, Any], refusal: str, unwritten: set[Hashable]
) -> None:
    """The flush after the failure cannot write anything new: k4 and k5 stay committed all the same."""
    refuse_writes(chest, disk, refusal)
    with warnings.catch_warnings():
        # ENOSPC: compacting the old segment again fails, and so do evictions to make room for reads
        warnings.simplefilter("ignore", SpillWarning)
        with pytest.raises(SpillError) as info:
            chest.flush()
        assert {key for key, _ in chest._flush_failures} == unwritten
        for key in unwritten:
            assert repr(key) in str(info.value), key
        assert committed(chest) == {"k4", "k5"}  # flush 1's durable values are still named
        for key in ["k4", "k5"]:
            assert chest[key] == expected[key], key
    snapshot = tmp_path / "snapshot"  # what a crash now would leave
    shutil.copytree(chest.path, snapshot)
    allow_writes(chest, disk)
    assert reopened(snapshot) == {key: expected[key] for key in ["k4", "k5"]}


@pytest.mark.parametrize("refusal", ["ENOSPC", "quota"])
@pytest.mark.parametrize("fault", ["segment", "directory"])
def test_durable_records_copied_by_compaction_stay_committed_when_the_copies_fsync_fails(
    tmp_path: Path, disk: Disk, fault: str, refusal: str
) -> None:
    """Found in review: the copies were untrusted, their rewrite failed, and the checkpoint after the
    next commit unlinked the segment holding the durable originals: k4 and k5 were lost."""
    chest, expected, original, active = compaction_ahead(tmp_path)
    store = chest._store
    active_inode = inode_of(chest, "new0")
    if fault == "segment":
        disk.fail = lambda module, name, is_dir: name == active
    else:  # the active segment was created after the last good fsync of the directory: its name is unknown
        disk.fail = lambda module, name, is_dir: module == "filesync" and is_dir
    compactions = store.compactions
    with pytest.raises(OSError) as info:
        chest.flush()  # new1 and new2 go into the active segment, k4 and k5 are copied there; an fsync fails
    assert info.value.errno == errno.EIO
    assert store.compactions == compactions + 1
    failed_at = disk.events.index(disk.failures()[0])
    assert committed(chest) == set(KEYS)  # flush 1's manifest
    assert store.unsynced_keys() == ["new0"]  # k4 and k5 are trusted: back on their durable records
    for key in ["k4", "k5"]:
        assert store.has_copy(key) and file_of(chest, key) == original, key

    assert_durable_keys_survive_refused_rewrites(tmp_path, disk, chest, expected, refusal, set(NEW))

    chest.flush()  # the disk has room again
    assert committed(chest) == set(expected)
    for key, value in expected.items():
        assert chest[key] == value, key
    assert disk.last("fsync", "segments", active, active_inode) < failed_at  # never fsynced again
    assert original not in store.segment_files()  # k4 and k5 have fsynced copies now
    assert_disk_files(chest)
    chest.close()
    assert reopened(tmp_path / "chest") == expected


def test_the_original_segment_is_unlinked_once_the_durable_keys_have_trusted_copies(tmp_path: Path, disk: Disk) -> None:
    chest, expected, original, active = compaction_ahead(tmp_path)
    store = chest._store
    disk.fail = lambda module, name, is_dir: name == active
    with pytest.raises(OSError):
        chest.flush()
    assert original in store.segment_files()  # it holds k4 and k5 again
    chest.flush()  # compacts it again; the copies' fsync succeeds this time
    assert store.unsynced_keys() == []
    for key in ["k4", "k5"]:  # copied, and the copies fsynced before the commit
        name = file_of(chest, key)
        assert name not in (original, active), key
        assert disk.last("fsync", "segments", name, inode_of(chest, key)) >= 0, key
    assert committed(chest) == set(expected)
    for name in (original, active):  # neither is needed by the committed manifest: both unlinked
        assert name not in store.segment_files(), name
        assert not os.path.exists(os.path.join(chest.path, name)), name
    assert_disk_files(chest)
    chest.close()
    assert reopened(tmp_path / "chest") == expected


def test_durable_records_copied_by_compaction_stay_committed_when_a_later_flush_distrusts_the_copies(
    tmp_path: Path, disk: Disk
) -> None:
    """The copies' own fsync succeeds, but the flush fails at a file; the next flush's directory fsync fails.

    The copies then lie in a segment whose name no good fsync of the directory covered: untrusted one
    flush after the compaction. The originals are still on disk (no commit came in between) and serve.
    """
    chest, expected, original, active, big = compaction_then_a_failed_file_fsync(tmp_path, disk)
    store = chest._store
    assert disk.failures() == [("failed", "filesync", big)]
    assert {file_of(chest, key) for key in ["k4", "k5"]} == {active}
    assert committed(chest) == set(KEYS)
    disk.fail = lambda module, name, is_dir: module == "filesync" and is_dir
    with pytest.raises(OSError):
        chest.flush()  # the big value is written anew; the directory's fsync fails
    assert set(store.unsynced_keys()) == {"big", "new0"}
    for key in ["k4", "k5"]:
        assert store.has_copy(key) and file_of(chest, key) == original, key

    assert_durable_keys_survive_refused_rewrites(tmp_path, disk, chest, expected, "ENOSPC", {*NEW, "big"})

    chest.flush()
    assert committed(chest) == set(expected)
    assert original not in store.segment_files()
    chest.close()
    assert reopened(tmp_path / "chest") == expected


def test_a_key_overwritten_after_compaction_copied_it_never_falls_back_to_the_old_record(
    tmp_path: Path, disk: Disk
) -> None:
    chest, expected, original, active, _ = compaction_then_a_failed_file_fsync(tmp_path, disk)
    store = chest._store
    assert {file_of(chest, key) for key in ["k4", "k5"]} == {active}
    chest["k4"] = expected["k4"] = payload(95)  # the copy of the old value is dead now
    disk.fail = lambda module, name, is_dir: module == "filesync" and is_dir
    with pytest.raises(OSError):
        chest.flush()  # the new k4 goes into the active segment too; the directory's fsync fails
    assert file_of(chest, "k5") == original  # back on its durable record
    assert "k4" not in store or not store.has_copy("k4") or file_of(chest, "k4") != original
    assert chest["k4"] == expected["k4"]
    chest.flush()
    assert committed(chest) == set(expected)
    for key, value in expected.items():
        assert chest[key] == value, key
    chest.close()
    assert reopened(tmp_path / "chest") == expected
