"""spillkit/spares.py: deleted values' files written over by later spills, never under a reader."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import abandon, assert_disk_files, spare_files

from spillkit import Chest, DiskQuotaExceeded, SpillWarning
from spillkit.spares import SPARE_FROM, SPARE_LIMIT

MiB = 1 << 20


def array(seed: int, n: int = MiB // 8) -> np.ndarray:
    return np.random.default_rng(seed).random(n)  # 1 MiB of float64 by default


def inode(chest: Chest, key: Any) -> int:
    return os.stat(os.path.join(chest.path, chest._store.inner.filename(key))).st_ino


def spill(chest: Chest, key: Any, value: Any) -> None:
    """Store ``value`` under ``key`` and push it to disk (the budget holds one value)."""
    chest[key] = value
    while key in chest.inmem:
        assert chest.evict() > 0


def test_a_deleted_values_file_is_written_over_by_the_next_spill(tmp_path: Path) -> None:
    chest = Chest(path=tmp_path / "c", available_memory=2 * MiB)
    spill(chest, "a", array(0))
    first = inode(chest, "a")
    del chest["a"]
    assert len(spare_files(chest.path)) == 1  # kept, under a temporary name
    assert_disk_files(chest)  # and counted on disk meanwhile
    spill(chest, "b", array(1))
    assert inode(chest, "b") == first and spare_files(chest.path) == []
    assert np.array_equal(chest["b"], array(1))
    spill(chest, "c", array(2, n=MiB // 32))  # a smaller value in a larger spare: truncated to its record
    del chest["b"]
    spill(chest, "d", array(3, n=MiB // 32))
    assert np.array_equal(chest["c"], array(2, n=MiB // 32)) and np.array_equal(chest["d"], array(3, n=MiB // 32))
    assert_disk_files(chest)
    chest.close()
    assert spare_files(chest.path) == []  # close removes the spares


def test_small_files_are_unlinked_and_spares_are_bounded(tmp_path: Path) -> None:
    chest = Chest(path=tmp_path / "small", available_memory=SPARE_FROM, pack_threshold=0)
    spill(chest, "small", b"x" * 1000)
    del chest["small"]
    assert spare_files(chest.path) == []
    chest.drop()
    chest = Chest(path=tmp_path / "c", available_memory=2 * MiB)
    for i in range(SPARE_LIMIT + 3):
        spill(chest, i, array(i))
    for i in range(SPARE_LIMIT + 3):
        del chest[i]
    assert len(spare_files(chest.path)) == SPARE_LIMIT
    assert_disk_files(chest)
    chest.drop()


@pytest.mark.parametrize("map_loads", [True, False])
def test_a_file_a_loaded_value_still_uses_is_never_written_over(tmp_path: Path, map_loads: bool) -> None:
    chest = Chest(path=tmp_path / "c", available_memory=2 * MiB, map_loads=map_loads)
    spill(chest, "a", array(0))
    loaded = chest.pop("a")  # mapped (map_loads) or read; its key and file name are gone
    spill(chest, "b", array(1))
    assert np.array_equal(loaded, array(0))
    assert np.array_equal(chest["b"], array(1))
    chest.drop()


def test_a_read_in_progress_without_the_lock_keeps_its_file(tmp_path: Path) -> None:
    # A load reads without the engine's lock through a descriptor opened under it (spillkit.unlocked):
    # its key deleted meanwhile, the file must not become a spare that a spill writes over.
    chest = Chest(path=tmp_path / "c", available_memory=2 * MiB)
    spill(chest, "a", array(0))
    store = chest._store.inner
    pending = store.open_for_read("a")  # as a load in another thread would, under the lock
    del chest["a"]
    spill(chest, "b", array(1))
    assert np.array_equal(store.finish_read(pending), array(0))
    del chest["b"]
    assert len(spare_files(chest.path)) == 1  # read finished: files are kept again
    chest.drop()


def test_a_file_a_forked_child_maps_is_never_written_over(tmp_path: Path) -> None:
    chest = Chest(path=tmp_path / "c", available_memory=2 * MiB, map_loads=True)
    spill(chest, "a", array(0))
    loaded = chest["a"]  # mapped: the child inherits the mapping
    read_end, write_end = os.pipe()
    done_read, done_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: wait for the parent's writes, then check its copy
        os.read(read_end, 1)
        os._exit(0 if np.array_equal(loaded, array(0)) else 1)
    del loaded
    gc.collect()  # the parent's mapping gone: only the child's is left
    del chest["a"]
    spill(chest, "b", array(1))
    os.write(write_end, b"x")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child's value changed under it"
    for fd in (read_end, write_end, done_read, done_write):
        os.close(fd)
    chest.drop()


def test_a_spare_replaced_behind_the_chests_back_is_not_written_through(tmp_path: Path) -> None:
    chest = Chest(path=tmp_path / "c", available_memory=2 * MiB)
    spill(chest, "a", array(0))
    del chest["a"]
    (name,) = spare_files(chest.path)
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    os.unlink(os.path.join(chest.path, name))
    os.symlink(outside, os.path.join(chest.path, name))  # a link planted under the spare's name
    with pytest.warns(SpillWarning, match="could not reuse the spare spill file"):
        spill(chest, "b", array(1))
    assert outside.read_bytes() == b"precious"
    assert np.array_equal(chest["b"], array(1))
    chest.drop()


def test_spares_go_before_the_disk_quota_refuses_a_write(tmp_path: Path) -> None:
    chest = Chest(path=tmp_path / "c", available_memory=2 * MiB, available_disk=int(2.5 * MiB))
    spill(chest, "a", array(0))
    spill(chest, "b", array(1))
    del chest["a"], chest["b"]
    assert len(spare_files(chest.path)) == 2 and chest.disk_bytes > 2 * MiB
    spill(chest, "c", array(2, n=MiB // 4))  # 2 MiB: fits only once the other spare is removed
    assert np.array_equal(chest["c"], array(2, n=MiB // 4))
    with pytest.raises(DiskQuotaExceeded):  # and the quota still holds
        chest["d"] = array(3, n=MiB // 2)
    assert_disk_files(chest)
    chest.drop()


def test_spares_left_by_a_crash_are_swept_at_reopen(tmp_path: Path) -> None:
    chest = Chest(path=tmp_path / "c", available_memory=2 * MiB)
    chest.flush()  # a manifest (empty): files written after it are not its, so deleting them keeps spares
    spill(chest, "a", array(0))
    spill(chest, "b", array(1))
    del chest["a"]
    assert spare_files(chest.path)
    abandon(chest)  # killed: nothing closed
    again = Chest(path=tmp_path / "c")
    assert spare_files(again.path) == [] and dict(again) == {}
    again.drop()
