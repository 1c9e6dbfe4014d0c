"""spillkit/blanks.py: empty files made ahead by a background thread, which large spills write into."""

from __future__ import annotations

import errno
import gc
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import abandon, assert_disk_files, child_exit_code

import spillkit.blanks
from spillkit import Chest, SpillWarning
from spillkit.blanks import AHEAD
from spillkit.spares import SparePool

MiB = 1 << 20


def array(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(MiB // 8)  # 1 MiB


def spill(chest: Chest, key: str, value: np.ndarray) -> None:
    chest[key] = value
    while key in chest.inmem:
        assert chest.evict() > 0


def pool(chest: Chest) -> SparePool:
    return chest._store.inner._spares


def blanks_made(chest: Chest, count: int = AHEAD) -> list[tuple[str, tuple[int, int]]]:
    """Wait for the thread to offer ``count`` blanks (it was asked by the last spill); return them."""
    deadline = time.monotonic() + 60  # a thread that never makes them fails here, however slow the machine
    while len(pool(chest).blanks) < count:
        assert time.monotonic() < deadline, "no blank file was made"
        time.sleep(0.005)
    return list(pool(chest).blanks._files)


def temporary_files(path: str) -> list[str]:
    return sorted(name for name in os.listdir(path) if name.startswith(".tmp-"))


class BlankThreadOs:
    """``os`` for spillkit.blanks (the blank-making thread's), but for the methods a subclass defines: faults."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


def test_a_spill_writes_into_a_file_made_ahead(tmp_path: Path) -> None:
    chest = Chest(path=tmp_path / "c", available_memory=2 * MiB)
    spill(chest, "a", array(0))  # made its own file, and asked for blanks
    made = blanks_made(chest)
    assert sorted(os.path.basename(name) for name, _ in made) == temporary_files(chest.path)
    assert all(os.path.getsize(name) == 0 for name, _ in made)
    spill(chest, "b", array(1))
    name = os.path.join(chest.path, chest._store.inner.filename("b"))
    info = os.stat(name)
    assert (info.st_dev, info.st_ino) in {file_id for _, file_id in made}  # a blank, moved into place
    assert np.array_equal(chest["a"], array(0)) and np.array_equal(chest["b"], array(1))
    assert_disk_files(chest)  # blanks take no bytes, and are no key's file
    chest.close()
    assert temporary_files(chest.path) == []  # close removes them
    reopened = Chest(path=tmp_path / "c", available_memory=2 * MiB)
    assert np.array_equal(reopened["b"], array(1))
    reopened.drop()


def test_small_values_ask_for_no_blanks(tmp_path: Path) -> None:
    chest = Chest(path=tmp_path / "c", available_memory=1000, pack_threshold=0)
    for i in range(20):
        chest[f"k{i}"] = b"x" * 2000  # spilled into a file each, below spillkit.spares.SPARE_FROM
    assert len(chest._store) == 20
    assert temporary_files(chest.path) == [] and not pool(chest).blanks._queued
    chest.drop()


@pytest.mark.parametrize("how", ["drop", "collected"])
def test_a_temporary_chests_directory_goes_with_its_blanks(how: str) -> None:
    chest = Chest(available_memory=2 * MiB)
    spill(chest, "a", array(0))
    blanks_made(chest)
    path = chest.path
    if how == "drop":
        chest.drop()
    else:
        del chest
        gc.collect()
    assert not os.path.exists(path)


def test_a_collected_temporary_chest_waits_for_a_blank_being_made_before_removing_its_directory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A file created in the directory while it is being removed would make its removal fail and leave it
    # behind: the finalizer closes the blanks (waiting for one being made) before it removes the tree.
    started, go = threading.Event(), threading.Event()

    class SlowOs(BlankThreadOs):
        @staticmethod
        def open(path: str, flags: int, mode: int = 0o777) -> int:
            if threading.current_thread().name == "spillkit-blank-files" and not go.is_set():
                started.set()
                assert go.wait(60)
            return os.open(path, flags, mode)

    monkeypatch.setattr(spillkit.blanks, "os", SlowOs())
    chest = Chest(available_memory=2 * MiB)
    path = chest.path
    spill(chest, "a", array(0))  # asks for blanks: the thread stops in open()
    assert started.wait(60)
    seen: list[bool] = []

    def look_then_release() -> None:
        time.sleep(0.3)
        seen.append(os.path.exists(path))  # the removal is waiting for the blank being made
        go.set()

    helper = threading.Thread(target=look_then_release)
    helper.start()
    del chest
    gc.collect()  # runs the finalizer here, which waits
    helper.join()
    assert seen == [True]
    assert not os.path.exists(path)


def test_blanks_left_by_a_crash_are_swept_at_reopen(tmp_path: Path) -> None:
    chest = Chest(path=tmp_path / "c", available_memory=2 * MiB)
    spill(chest, "a", array(0))
    chest.flush()
    blanks_made(chest)
    abandon(chest)  # killed: nothing closed
    reopened = Chest(path=tmp_path / "c", available_memory=2 * MiB)
    assert temporary_files(reopened.path) == []
    assert np.array_equal(reopened["a"], array(0))
    reopened.drop()


def test_a_blank_replaced_behind_the_chests_back_is_not_written_through(tmp_path: Path) -> None:
    chest = Chest(path=tmp_path / "c", available_memory=2 * MiB)
    spill(chest, "a", array(0))
    made = blanks_made(chest)
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    for name, _ in made:  # a link planted under each blank's name
        os.unlink(name)
        os.symlink(outside, name)
    with pytest.warns(SpillWarning, match="could not reuse the spare spill file"):
        spill(chest, "b", array(1))
    assert outside.read_bytes() == b"precious"
    assert np.array_equal(chest["a"], array(0)) and np.array_equal(chest["b"], array(1))
    chest.drop()


class DiskFull(BlankThreadOs):
    """The blank-making thread's ``os``, whose file creations fail with ENOSPC (an injected fault)."""

    @staticmethod
    def open(path: str, flags: int, mode: int = 0o777) -> int:
        raise OSError(errno.ENOSPC, "No space left on device (injected)", path)


@pytest.mark.parametrize("fault", ["missing directory", "disk full"])
def test_a_directory_that_refuses_a_blank_gets_no_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    # Silent by design: the spills make their own files, and meet any error themselves.
    chest = Chest(path=tmp_path / "c", available_memory=2 * MiB)
    if fault == "disk full":
        monkeypatch.setattr(spillkit.blanks, "os", DiskFull())
    else:  # the thread's next file goes under a directory that does not exist (ENOENT)
        pool(chest).blanks._prefix = os.path.join("missing", "x-")
    spill(chest, "a", array(0))
    deadline = time.monotonic() + 60
    while not pool(chest).blanks._failed:
        assert time.monotonic() < deadline, "the thread never tried"
        time.sleep(0.005)
    for i in range(1, 4):  # the spills make their own files, as without blanks, and ask for none
        spill(chest, f"k{i}", array(i))
    assert not pool(chest).blanks._queued and len(pool(chest).blanks) == 0
    assert all(np.array_equal(chest[f"k{i}"], array(i)) for i in range(1, 4))
    assert np.array_equal(chest["a"], array(0))
    assert_disk_files(chest)
    chest.drop()


def test_a_forked_child_never_takes_its_parents_blanks(tmp_path: Path) -> None:
    chest = Chest(path=tmp_path / "c", available_memory=2 * MiB)
    spill(chest, "a", array(0))
    made = blanks_made(chest)
    pid = os.fork()
    if pid == 0:
        ok = len(pool(chest).blanks) == 0 and pool(chest).take(MiB) is None
        os._exit(0 if ok else 1)
    assert child_exit_code(pid) == 0
    assert temporary_files(chest.path) == sorted(os.path.basename(name) for name, _ in made)  # untouched
    spill(chest, "b", array(1))
    assert np.array_equal(chest["b"], array(1))
    chest.drop()


def test_the_thread_ends_when_idle_and_starts_again_when_asked(tmp_path: Path) -> None:
    chest = Chest(path=tmp_path / "c", available_memory=2 * MiB)
    spill(chest, "a", array(0))
    blanks_made(chest)
    deadline = time.monotonic() + 60
    while any(thread.name == "spillkit-blank-files" for thread in threading.enumerate()):
        assert time.monotonic() < deadline, "the blank-making thread never ended"
        time.sleep(0.05)
    spill(chest, "b", array(1))  # takes a blank, and asks for another: a new thread makes it
    blanks_made(chest)
    assert np.array_equal(chest["a"], array(0)) and np.array_equal(chest["b"], array(1))
    chest.drop()


@pytest.mark.parametrize("where", ["making a file", "under the list's lock"])
@pytest.mark.parametrize("kind", ["temporary", "persistent"])
def test_a_chest_the_gc_frees_in_the_blank_thread_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, where: str
) -> None:
    # The cyclic GC runs in whichever thread allocates: here, the blank-making thread, while it makes a
    # file for the very Chest it frees, whose finalizer closes those blanks (helper-91: a deadlock that
    # hung the thread and left the GC off for good, with plain locks). It may run with the thread holding
    # the lock that marks a file being made (os.fstat) or the one over the list and flags (os.getpid,
    # checked under it); a plain lock in either place hangs.
    released, collected = threading.Event(), threading.Event()

    def collect_once() -> None:
        if not collected.is_set() and threading.current_thread().name == "spillkit-blank-files":
            assert released.wait(60)
            gc.collect()  # as an allocation here might: frees the Chest below, in this thread
            collected.set()

    class CollectingOs(BlankThreadOs):
        @staticmethod
        def fstat(fd: int) -> os.stat_result:
            if where == "making a file":
                collect_once()
            return os.fstat(fd)

        @staticmethod
        def getpid() -> int:
            if where == "under the list's lock":
                collect_once()
            return os.getpid()

    monkeypatch.setattr(spillkit.blanks, "os", CollectingOs())
    gc.disable()  # no other thread collects it first
    try:
        chest = Chest(path=tmp_path / "c" if kind == "persistent" else None, available_memory=2 * MiB)
        chest.cycle = chest  # type: ignore[attr-defined]  # only the cyclic GC frees it
        path = chest.path
        spill(chest, "a", array(0))  # asks the thread for blanks
        del chest
        released.set()
        assert collected.wait(60)
    finally:
        gc.enable()
    deadline = time.monotonic() + 60
    # A temporary Chest's directory goes; a persistent one's stays, without the blank made meanwhile.
    while os.path.exists(path) if kind == "temporary" else temporary_files(path):
        assert time.monotonic() < deadline, f"left behind: {os.listdir(path)}"
        time.sleep(0.01)
    monkeypatch.undo()
    other = Chest(available_memory=2 * MiB)  # the thread is not hung: it makes this one's blanks
    spill(other, "b", array(1))
    blanks_made(other)
    other.drop()
