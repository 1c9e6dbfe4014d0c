"""Disk space with mapped loads: :mod:`spillkit.diskspace` and the pins of :mod:`spillkit.mapped`.

A file unlinked (or renamed over) while a loaded value maps it loses its name, not its blocks: the
kernel frees them with the last mapping. Until then the Chest counts them in ``disk_bytes`` and
against ``available_disk``. Linux only, like tests/test_mapped.py, whose helpers these share.
"""

from __future__ import annotations

import errno
import gc
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from test_mapped import MIB, array, mapped_files, spilled_pair

import spillkit.filereads
import spillkit.mapped
from spillkit import Chest, DiskQuotaExceeded

numpy = pytest.importorskip("numpy")
pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/self/maps (Linux)")


def through(tmp_path: Path, quota: str, **options: Any) -> Chest:
    """A Chest whose 2 MiB values are larger than its memory: each put writes its file at once."""
    return Chest(path=tmp_path / "c", available_memory="1 MiB", available_disk=quota, map_loads=True, **options)


def one_file(tmp_path: Path, quota: str) -> tuple[Chest, int]:
    """A :func:`through` Chest holding array(1) under "a", and the size of its file."""
    chest = through(tmp_path, quota)
    chest["a"] = array(1)
    return chest, chest._store.file_bytes("a")


@pytest.mark.parametrize(("how", "quota"), [("deleted", "7 MiB"), ("replaced", "9 MiB")])
def test_a_file_a_loaded_value_still_maps_counts_on_disk_until_the_value_is_freed(
    tmp_path: Path, how: str, quota: str
) -> None:
    # Unlinking (or renaming over) a mapped file removes its name, not its blocks: the kernel frees
    # them with the last mapping. Until then the Chest counts them in disk_bytes and against the quota.
    chest = spilled_pair(tmp_path, map_loads=True, available_disk=quota)
    old = chest._store.file_bytes("a")
    value = chest["a"]  # mapped copy-on-write; "b" is spilled to make room
    assert chest._store.filename("a") in mapped_files()
    if how == "deleted":
        del chest["a"]
    else:
        value[0] = -1.0  # changed in place: its next eviction writes a new file over the old one
        chest["c"] = array(3)  # makes room: "a" is written again, its new file renamed over the mapped one
        assert "a" not in chest.inmem
    files = sum(chest._store.file_bytes(key) for key in chest if key not in chest.inmem)
    assert chest.disk_bytes == files + old  # before the fix: files (the old blocks were forgotten)
    big = array(4, 3 * MIB + MIB // 2)  # larger than memory: straight to disk; fits once they are freed
    with pytest.raises(DiskQuotaExceeded):
        chest["big"] = big
    assert value[1] == array(1)[1]  # the mapped value was intact all along
    del value
    gc.collect()  # unmapped: the blocks are free now
    chest["big"] = big  # at once, nothing read first (before: DiskQuotaExceeded until disk_bytes was read)
    assert chest.disk_bytes == files + chest._store.file_bytes("big")
    numpy.testing.assert_array_equal(chest["big"], big)
    numpy.testing.assert_array_equal(chest["b"], array(2))
    chest.drop()


def test_a_superseded_file_a_loaded_value_still_maps_counts_until_the_value_is_freed(tmp_path: Path) -> None:
    # Copy-on-write: after a flush, a key's new file gets a new name and the flushed one is kept
    # for the manifest until the next flush removes it; if a loaded value maps it, it still counts.
    chest = spilled_pair(tmp_path, map_loads=True)
    chest.flush()  # the manifest names "a"'s file: it is protected from now on
    old = chest._store.file_bytes("a")
    value = chest["a"]  # mapped
    chest["a"] = array(3)  # a new value; spilled below to a new file, the flushed one retained
    chest["c"] = array(4)
    chest.flush()  # the new manifest no longer names the old file: unlinked now, still mapped
    files = sum(chest._store.file_bytes(key) for key in chest)
    assert chest.disk_bytes == files + old  # before: files (the old blocks were forgotten)
    del value
    gc.collect()
    assert chest.disk_bytes == files
    numpy.testing.assert_array_equal(chest["a"], array(3))
    chest.close()


def test_overwriting_a_key_whose_file_a_value_maps_is_held_to_the_quota(tmp_path: Path) -> None:
    # The old file's blocks stay while the value maps them: a new file beside them must fit the quota too.
    chest = through(tmp_path, "3.5 MiB")
    chest["a"] = array(1)
    value = chest["a"]  # mapped
    with pytest.raises(DiskQuotaExceeded):  # before: stored, 4 MiB on disk against 3.5 MiB
        chest["a"] = array(2)
    numpy.testing.assert_array_equal(chest["a"], array(1))  # the key keeps its value
    assert chest.disk_bytes <= 3.5 * MIB
    del value
    gc.collect()
    chest["a"] = array(2)  # the old blocks are free now
    numpy.testing.assert_array_equal(chest["a"], array(2))
    chest.drop()


def test_a_file_deleted_while_a_load_is_about_to_map_it_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The load opens the file under the lock, then maps it without: a delete in between must see the file
    # as mapped. The fault is timing only (the load waits for the delete); the file and mapping are real.
    chest, size = one_file(tmp_path, "3 MiB")
    opened, deleted = threading.Event(), threading.Event()
    real = spillkit.filereads.map_file

    def wait_for_the_delete(fd: int, nbytes: int, on_unmap: Any = None) -> memoryview:
        opened.set()
        assert deleted.wait(10)
        return real(fd, nbytes, on_unmap)

    monkeypatch.setattr(spillkit.filereads, "map_file", wait_for_the_delete)
    loaded: list[Any] = []
    loader = threading.Thread(target=lambda: loaded.append(chest["a"]))
    loader.start()
    assert opened.wait(10)
    del chest["a"]
    deleted.set()
    loader.join()
    monkeypatch.undo()
    numpy.testing.assert_array_equal(loaded[0], array(1))  # the read that began before the delete
    assert chest.disk_bytes == size  # before: 0, with the file's 2 MiB still taken
    with pytest.raises(DiskQuotaExceeded):
        chest["b"] = array(2)
    loaded.clear()
    gc.collect()
    assert chest.disk_bytes == 0
    chest["b"] = array(2)
    chest.drop()


class CloseFailsOnce:
    """``os`` for spillkit.filereads whose next ``close`` fails with EIO after closing (a lost error report)."""

    def __init__(self) -> None:
        self.pending = True

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def close(self, fd: int) -> None:
        os.close(fd)
        if self.pending:
            self.pending = False
            raise OSError(errno.EIO, os.strerror(errno.EIO))


def test_a_load_that_fails_after_mapping_leaves_the_counts_right(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chest, size = one_file(tmp_path, "5 MiB")
    monkeypatch.setattr(spillkit.filereads, "os", CloseFailsOnce())
    with pytest.raises(OSError, match="Input/output error"):
        chest["a"]  # mapped, then the descriptor's close failed
    monkeypatch.undo()
    gc.collect()  # the mapping made by the failed load is gone
    value = chest["a"]  # mapped again
    del chest["a"]
    assert chest.disk_bytes == size  # before: 0 (the failed load's unmap had driven the count below zero)
    del value
    gc.collect()
    assert chest.disk_bytes == 0
    chest.drop()


def test_a_reopened_chest_counts_files_that_values_loaded_before_its_open_still_map(tmp_path: Path) -> None:
    path = tmp_path / "c"
    first = Chest(path=path, available_memory="1 MiB", map_loads=True)
    first["a"] = array(1)
    first.flush()
    value = first["a"]  # mapped, and outlives its Chest
    first.close()
    again = Chest(path=path, available_memory="1 MiB", map_loads=True)
    size = again._store.file_bytes("a")
    del again["a"]
    again.flush()  # the manifest no longer names the file: unlinked now, still mapped
    assert again.disk_bytes == size  # before: 0 (the pins were the first Chest's)
    numpy.testing.assert_array_equal(value, array(1))
    del value
    gc.collect()
    assert again.disk_bytes == 0
    again.close()


def test_mapped_loads_leave_no_trail_behind_them(tmp_path: Path) -> None:
    # Each load pins its file and each freed value unpins it: the unpins wait for the next pin or query,
    # never piling up over a read-only run (before: two events per load until the next delete).
    chest = through(tmp_path, "1 GiB")
    chest["a"] = array(1)
    name = chest._store.filename("a")
    info = os.stat(name)
    for _ in range(300):  # larger than memory: each load maps the file anew, and nothing keeps it
        value = chest["a"]
        assert name in mapped_files()
        del value
    gc.collect()
    assert len(spillkit.mapped._unpinned) <= 1
    assert not spillkit.mapped.is_mapped((info.st_dev, info.st_ino))
    chest.drop()
