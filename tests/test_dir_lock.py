"""One open Chest per directory: a second Chest on a path in use (same process, another process,
a forked child, another thread) raises ChestLocked naming the path and the holder, and changes
nothing; the lock goes with close(), drop(), garbage collection and the holder's death (SIGKILL),
and the lock file is never mistaken for a spill file or a leftover."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Hashable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_disk_files

import spillkit
import spillkit.lockfiles
import spillkit.storage
from spillkit import Chest, ChestLocked, SpillError
from spillkit.dirlock import LOCK_NAME, DirLock
from spillkit.manifest import MANIFEST_NAME
from spillkit.reopen import remove_leftovers

REPO = Path(spillkit.__file__).resolve().parents[1]
UNIT = 100
pytestmark = pytest.mark.timeout(120)


def unit_sizeof(value: Any) -> int:
    return UNIT


def payload(i: int) -> bytes:
    return bytes([i % 256]) * 50 + str(i).encode()


VALUES: dict[Hashable, Any] = {f"k{i}": payload(i) for i in range(8)}


def open_chest(path: Path | str, **kwargs: Any) -> Chest:
    kwargs.setdefault("available_memory", 2.5 * UNIT)
    return Chest(path=path, sizeof=unit_sizeof, **kwargs)


def filled(path: Path | str, **kwargs: Any) -> Chest:
    """A Chest holding VALUES, most of them spilled, none flushed."""
    chest = open_chest(path, **kwargs)
    chest.update(VALUES)
    assert len(chest.inmem) == 2 and len(chest.engine.spilled_keys) == 6
    return chest


def assert_all_values(chest: Chest, expected: dict[Hashable, Any] = VALUES) -> None:
    assert set(chest) == set(expected)
    for key, value in expected.items():
        assert chest[key] == value, key


def snapshot(path: Path | str) -> dict[str, bytes | None]:
    """Every entry of the directory with its bytes (None for what is not a regular file)."""
    root = Path(path)
    return {p.name: p.read_bytes() if p.is_file() and not p.is_symlink() else None for p in root.iterdir()}


def descriptors_under(path: Path | str) -> set[int]:
    """This process's file descriptors on files under ``path`` (removed ones included; Linux only)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the descriptor listdir itself used is gone by now
            if os.readlink(f"/proc/self/fd/{fd}").startswith(f"{path}{os.sep}"):
                found.add(int(fd))
    return found


def python(code: str, *args: str, **popen: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def run_python(code: str, *args: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; return the JSON object it printed last."""
    process = python(code, *args)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return dict(json.loads(out.splitlines()[-1]))


# What another process sees when it opens the path: the error's type, pid and message, or the keys.
TRY_OPEN = """
    import json, sys
    from spillkit import Chest, ChestLocked
    try:
        chest = Chest(path=sys.argv[1], available_memory=250, sizeof=lambda v: 100)
    except ChestLocked as error:
        print(json.dumps({"error": type(error).__name__, "pid": error.pid, "path": error.path, "message": str(error)}))
    else:
        print(json.dumps({"keys": sorted(chest), "values": {k: chest[k].hex() for k in chest}}))
        chest.close()
"""


# ---- a second Chest on a path in use ------------------------------------------------------------


def test_a_second_chest_in_the_same_process_is_refused_and_the_first_keeps_every_value(tmp_path: Path) -> None:
    path = tmp_path / "store"
    first = filled(path)
    before = snapshot(path)
    assert LOCK_NAME in before
    with pytest.raises(ChestLocked) as refused:
        open_chest(path)
    error = refused.value
    assert isinstance(error, SpillError)
    assert str(path) in str(error) and error.path == str(path)
    assert error.pid == os.getpid() and str(os.getpid()) in str(error) and "this process" in str(error)
    assert snapshot(path) == before  # nothing written, removed or re-keyed
    for variant in ({"pack_threshold": 0}, {"available_memory": 10**9}, {"write_behind": True}):
        with pytest.raises(ChestLocked):
            open_chest(path, **variant)
    assert snapshot(path) == before

    assert_all_values(first)  # every value, spilled ones read back from their files
    first["late"] = payload(99)
    del first["k0"]
    first.flush()
    first.close()
    expected = {**VALUES, "late": payload(99)}
    del expected["k0"]
    again = open_chest(path)
    assert_all_values(again, expected)
    again.close()


def test_every_spelling_of_the_path_is_the_same_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "store"
    first = filled(path)
    (tmp_path / "alias").symlink_to(path)
    monkeypatch.chdir(tmp_path)
    for spelling in ["store", "./store/", str(path) + "/", str(tmp_path / "alias"), "alias"]:
        with pytest.raises(ChestLocked) as refused:
            open_chest(spelling)
        assert refused.value.pid == os.getpid()
    assert_all_values(first)
    first.close()


def test_a_second_chest_in_another_process_is_refused_while_the_first_is_open(tmp_path: Path) -> None:
    path = tmp_path / "store"
    first = filled(path)
    before = snapshot(path)
    seen = run_python(TRY_OPEN, str(path))
    assert seen["error"] == "ChestLocked"
    assert seen["pid"] == os.getpid()  # the holder, as it wrote itself into the lock file
    assert seen["path"] == str(path) and str(path) in seen["message"]
    assert f"process {os.getpid()}" in seen["message"]
    assert snapshot(path) == before
    assert_all_values(first)
    first["more"] = payload(50)
    first.close()
    seen = run_python(TRY_OPEN, str(path))  # and once it is closed, the other process opens it
    assert seen["keys"] == sorted([*VALUES, "more"])
    assert seen["values"]["k3"] == payload(3).hex()


def test_a_lock_file_unlinked_by_hand_still_keeps_a_second_chest_out(tmp_path: Path) -> None:
    # helper-117: the lock file taken for a stale one and removed while its Chest was open: another
    # process created and locked a new one, and its reopen removed the first Chest's unflushed files.
    path = tmp_path / "store"
    first = filled(path)
    (path / LOCK_NAME).unlink()
    before = snapshot(path)
    seen = run_python(TRY_OPEN, str(path))
    assert seen["error"] == "ChestLocked"
    assert str(path) in seen["message"]
    assert {name: data for name, data in snapshot(path).items() if name != LOCK_NAME} == before
    with pytest.raises(ChestLocked):  # in this process too
        Chest(path=path)
    assert_all_values(first)
    first.close()
    seen = run_python(TRY_OPEN, str(path))  # once it is closed, the other process opens it
    assert seen["keys"] == sorted(VALUES)


def test_another_programs_flock_on_the_directory_is_named_as_a_possible_holder(tmp_path: Path) -> None:
    # helper-118: flock(1) or a backup tool holding the directory made the error blame an unknown Chest.
    path = tmp_path / "store"
    path.mkdir(mode=0o700)
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        with pytest.raises(ChestLocked, match="or another program's flock on the directory"):
            Chest(path=path)
    finally:
        os.close(fd)
    Chest(path=path).close()  # once it lets go


def test_a_directory_replaced_while_it_was_being_locked_is_locked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # helper-122: nothing tested the retry when the directory went between its open and its flock.
    real = spillkit.lockfiles._lock_directory
    calls = []

    def gone_once(directory: str) -> int | None:
        calls.append(directory)
        return None if len(calls) == 1 else real(directory)

    monkeypatch.setattr(spillkit.lockfiles, "_lock_directory", gone_once)
    chest = Chest(path=tmp_path / "c")
    assert len(calls) == 2 and chest._dir_lock._dir_fd >= 0
    with pytest.raises(ChestLocked):
        Chest(path=tmp_path / "c")
    chest.close()


def test_a_directory_swapped_between_its_open_and_its_flock_is_not_the_one_kept_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # helper-122 (C3): without _lock_directory's check after the flock, the Chest kept a lock on the
    # directory renamed away, and the one now at its path (holding its files) was open to others.
    path, moved = tmp_path / "c", tmp_path / "moved"
    swapped = []

    class SwapFirst:
        def __getattr__(self, name: str) -> Any:
            return getattr(fcntl, name)

        def flock(self, fd: int, operation: int) -> None:
            if not swapped and os.path.isdir(f"/proc/self/fd/{fd}") and operation & fcntl.LOCK_EX:
                os.rename(path, moved)  # as a drop() and another Chest's open would, in between
                path.mkdir(mode=0o700)
                shutil.copy2(moved / LOCK_NAME, path / LOCK_NAME)
                swapped.append(fd)
            fcntl.flock(fd, operation)

    monkeypatch.setattr(spillkit.lockfiles, "fcntl", SwapFirst())
    chest = Chest(path=path)
    monkeypatch.undo()
    assert swapped
    fd = os.open(moved, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the old one: let go
    finally:
        os.close(fd)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the one at the path: held by the Chest
    finally:
        os.close(fd)
    chest.close()


def test_the_directory_lock_follows_a_path_that_is_a_symbolic_link(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    first = Chest(path=tmp_path / "link")
    with pytest.raises(ChestLocked):
        Chest(path=tmp_path / "real")
    first.close()
    Chest(path=tmp_path / "real").close()


def test_a_temporary_chest_is_locked_too(tmp_path: Path) -> None:
    temporary = Chest(available_memory=2.5 * UNIT, sizeof=unit_sizeof)
    temporary.update(VALUES)
    before = snapshot(temporary.path)
    with pytest.raises(ChestLocked) as refused:
        open_chest(temporary.path)  # it would have removed every spill file: no manifest names them
    assert refused.value.path == temporary.path
    assert run_python(TRY_OPEN, temporary.path)["error"] == "ChestLocked"
    assert snapshot(temporary.path) == before
    assert_all_values(temporary)
    temporary.close()
    assert not os.path.exists(temporary.path)


def test_threads_racing_to_open_one_path_get_exactly_one_chest(tmp_path: Path) -> None:
    path = tmp_path / "store"
    for _ in range(5):
        barrier = threading.Barrier(8)
        results: list[Chest | BaseException] = []

        def attempt(barrier: threading.Barrier, results: list[Chest | BaseException]) -> None:
            barrier.wait()
            try:
                results.append(open_chest(path))
            except BaseException as error:
                results.append(error)

        threads = [threading.Thread(target=attempt, args=(barrier, results)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        winners = [r for r in results if isinstance(r, Chest)]
        assert len(winners) == 1, results
        assert all(isinstance(r, ChestLocked) for r in results if r is not winners[0]), results
        winners[0].close()


# ---- the lock goes when the Chest does ----------------------------------------------------------


def test_reopening_works_after_close_and_after_drop(tmp_path: Path) -> None:
    path = tmp_path / "store"
    first = filled(path)
    first.close()
    assert not first._dir_lock.held
    second = open_chest(path)
    assert_all_values(second)
    second.drop()
    assert not path.exists()
    assert not second._dir_lock.held
    if os.path.isdir("/proc/self/fd"):
        assert descriptors_under(path) == set()  # the lock's descriptor on the removed file is closed too
    third = open_chest(path)  # the path is free again, and empty
    assert len(third) == 0
    third.update(VALUES)
    third.drop()
    fourth = filled(path)
    fourth.close()


def test_a_chest_that_stays_open_after_a_failed_close_keeps_its_lock(tmp_path: Path) -> None:
    path = tmp_path / "store"
    chest = filled(path, available_disk=10**6)
    chest._store.available_disk = 1  # the flush of close() cannot write the values in memory
    with pytest.raises(SpillError, match="could not write") as refused:
        chest.close()
    assert "still open" in " ".join(getattr(refused.value, "__notes__", []))
    assert not chest.closed
    with pytest.raises(ChestLocked):
        open_chest(path)
    chest._store.available_disk = None
    chest.close()
    again = open_chest(path)
    assert_all_values(again)
    again.close()


def test_a_garbage_collected_chest_lets_go_of_its_directory(tmp_path: Path) -> None:
    path = tmp_path / "store"
    chest = filled(path)
    chest.flush()
    chest.loop = chest  # type: ignore[attr-defined]  (only the cycle collector frees it)
    del chest
    gc.collect()
    again = open_chest(path)
    assert_all_values(again)
    again.close()


def test_a_failed_construction_lets_go_at_once(tmp_path: Path) -> None:
    path = tmp_path / "store"
    chest = filled(path)
    chest.close()
    manifest = path / MANIFEST_NAME
    manifest.write_bytes(manifest.read_bytes()[:-1] + b"!")  # damaged: the re-open raises, removes nothing
    with pytest.raises(SpillError, match="damaged") as first:
        open_chest(path)
    # ``first`` keeps the traceback, and with it the half-made Chest: its lock must be gone anyway.
    with pytest.raises(SpillError, match="damaged") as second:
        open_chest(path)
    assert not isinstance(first.value, ChestLocked) and not isinstance(second.value, ChestLocked)

    other = tmp_path / "other"
    try:
        open_chest(other, data={"big": threading.Lock()}, available_memory=1)  # over the budget, unpicklable
    except Exception:
        again = open_chest(other)  # still inside the except block: the failed Chest is alive
        assert len(again) == 0
        again.close()
    else:
        raise AssertionError("the put of an unpicklable value larger than the budget did not raise")


# ---- another process dies holding the lock ------------------------------------------------------

HOLD_AND_WAIT = """
    import os, sys, time
    from spillkit import Chest
    chest = Chest(path=sys.argv[1], available_memory=250, sizeof=lambda v: 100)
    for i in range(6):
        chest[f"k{i}"] = bytes([i]) * 50
    chest.flush()
    for i in range(6, 9):
        chest[f"k{i}"] = bytes([i]) * 50  # never flushed
    chest["k0"] = b"changed after the flush"
    print(os.getpid(), flush=True)
    time.sleep(60)
"""


def test_reopening_works_after_the_holder_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "store"
    holder = python(HOLD_AND_WAIT, str(path))
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line, holder.communicate()[1]
        assert int(line) == holder.pid
        with pytest.raises(ChestLocked) as refused:
            open_chest(path)
        assert refused.value.pid == holder.pid and f"process {holder.pid}" in str(refused.value)
        seen = run_python(TRY_OPEN, str(path))
        assert seen["error"] == "ChestLocked" and seen["pid"] == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=60)
    assert holder.returncode == -signal.SIGKILL
    assert (path / LOCK_NAME).read_text() == f"{holder.pid}\n"  # left behind by the dead holder
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the flushed files are all there: no warning
        again = open_chest(path)
    assert_all_values(again, {f"k{i}": bytes([i]) * 50 for i in range(6)})  # the flushed state exactly
    assert (path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    again.close()


def test_a_lock_file_left_by_a_dead_process_does_not_block(tmp_path: Path) -> None:
    dead = run_python("import json, os; print(json.dumps({'pid': os.getpid()}))")["pid"]
    path = tmp_path / "store"
    path.mkdir(mode=0o700)
    (path / LOCK_NAME).write_text(f"{dead}\n")
    chest = filled(path)
    assert (path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    chest.close()
    (path / LOCK_NAME).write_text("not a pid, and longer than the pid that replaces it\n")
    chest = open_chest(path)
    assert (path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert_all_values(chest)
    chest.close()


# ---- the lock file among the Chest's files ------------------------------------------------------


@pytest.mark.parametrize("pack_threshold", [None, 0], ids=["packed", "file-per-value"])
def test_the_lock_file_is_never_a_leftover_nor_a_spill_file(tmp_path: Path, pack_threshold: int | None) -> None:
    path = tmp_path / "store"
    expected: dict[Hashable, Any] = {}
    for generation in range(3):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a file the re-open took for a damaged or missing one would warn
            chest = open_chest(path, pack_threshold=pack_threshold)
        assert_all_values(chest, expected)  # the last flush exactly
        if expected:
            del chest[min(expected)], expected[min(expected)]  # type: ignore[type-var]
        new = {f"g{generation}-{i}": payload(10 * generation + i) for i in range(6)}
        chest.update(new)
        expected.update(new)
        chest.flush()
        assert_disk_files(chest)  # disk_bytes is the spill files and segments: the lock file is none of them
        assert LOCK_NAME not in chest._store.names().values()
        assert (path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        chest["unflushed"] = payload(200)  # a leftover for the next re-open to remove
        chest._shut()  # let go without a flush, as a killed process would
        assert (path / LOCK_NAME).is_file()  # kept: unlinking it would race with a process about to lock it
    removed = remove_leftovers(str(path), set())  # even with a manifest naming nothing, the lock file stays
    assert LOCK_NAME not in removed and (path / LOCK_NAME).is_file()


# ---- the lock file cannot be had ----------------------------------------------------------------


def test_a_symbolic_link_as_lock_file_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_bytes(b"not ours")
    path = tmp_path / "store"
    path.mkdir(mode=0o700)
    (path / LOCK_NAME).symlink_to(target)
    before = snapshot(path)
    with pytest.raises(SpillError, match="symbolic link") as refused:
        open_chest(path)
    assert not isinstance(refused.value, ChestLocked)
    assert str(path / LOCK_NAME) in str(refused.value)
    assert snapshot(path) == before  # no key file either: the lock comes first
    assert target.read_bytes() == b"not ours"


def test_a_directory_as_lock_file_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    path = tmp_path / "store"
    (path / LOCK_NAME).mkdir(parents=True)
    path.chmod(0o700)
    before = snapshot(path)
    with pytest.raises(SpillError, match="lock file"):
        open_chest(path)
    assert snapshot(path) == before


class _ReadOnlyOs:
    """``os`` for spillkit.lockfiles as on a read-only file system: opening for writing fails with EROFS."""

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    @staticmethod
    def open(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return os.open(path, flags, mode)


def test_a_read_only_directory_without_a_lock_file_is_refused_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "store"
    path.mkdir(mode=0o700)
    monkeypatch.setattr(spillkit.lockfiles, "os", _ReadOnlyOs())
    with pytest.raises(SpillError, match="cannot create or open the lock file") as refused:
        open_chest(path)
    assert str(path / LOCK_NAME) in str(refused.value) and "Read-only file system" in str(refused.value)
    assert os.listdir(path) == []  # no key file, nothing


def test_a_read_only_lock_file_still_locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "store"
    filled(path).close()
    monkeypatch.setattr(spillkit.lockfiles, "os", _ReadOnlyOs())
    chest = open_chest(path)  # flock needs no write access: the existing file is locked read-only
    assert chest._dir_lock.held
    with pytest.raises(ChestLocked) as refused:
        open_chest(path)
    assert refused.value.pid == os.getpid()  # the pid recorded by the earlier holder (this process)
    assert_all_values(chest)
    chest.close()


def test_a_drop_between_opening_and_locking_the_file_is_noticed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A contender opened the lock file, then the holder dropped the directory (and released the lock) before
    # the contender's flock: it holds a lock on a file no longer there and must lock the new one instead.
    path = tmp_path / "store"
    filled(path).close()
    real = spillkit.lockfiles.fcntl
    dropped: list[bool] = []

    class DropFirst:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def flock(self, fd: int, operation: int) -> None:
            if operation & real.LOCK_EX and not dropped:
                dropped.append(True)
                shutil.rmtree(path)
            real.flock(fd, operation)

    monkeypatch.setattr(spillkit.lockfiles, "fcntl", DropFirst())
    chest = open_chest(path)
    assert dropped
    assert len(chest) == 0  # a fresh directory
    lock = chest._dir_lock
    held = os.fstat(lock.fd)
    on_disk = os.stat(path / LOCK_NAME)
    assert (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)
    with pytest.raises(ChestLocked):
        open_chest(path)
    chest.close()


# ---- forks --------------------------------------------------------------------------------------

_INHERITED: dict[str, Chest] = {}


def _forked_child(path: str, conn: Connection) -> None:
    chest = _INHERITED["chest"]
    report: dict[str, Any] = {"held": chest._dir_lock.held, "value": chest["k0"] == VALUES["k0"]}
    try:
        open_chest(path)
        report["second"] = "opened"
    except ChestLocked as error:
        report["second"] = error.pid
    conn.send(report)
    conn.recv()  # stay alive until the parent has closed and re-opened the directory
    os._exit(0)  # no finalizer, no cleanup: the directory is the parent's


def test_a_forked_child_holds_no_lock_and_the_parent_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "store"
    chest = _INHERITED["chest"] = filled(path)
    parent_end, child_end = multiprocessing.Pipe()
    process = multiprocessing.get_context("fork").Process(target=_forked_child, args=(str(path), child_end))
    try:
        process.start()
        assert parent_end.poll(60)
        report = parent_end.recv()
        assert report == {"held": False, "value": True, "second": os.getpid()}  # the parent still holds it
        assert chest._dir_lock.held
        with pytest.raises(ChestLocked):
            open_chest(path)
        chest["after-fork"] = payload(77)
        assert_all_values(chest, {**VALUES, "after-fork": payload(77)})
        chest.close()
        again = open_chest(path)  # the child is alive and inherited the descriptor: it must not hold the lock
        assert_all_values(again, {**VALUES, "after-fork": payload(77)})
        again.close()
    finally:
        del _INHERITED["chest"]
        parent_end.send("go")
        process.join(60)
    assert process.exitcode == 0


FORK_WITHOUT_HOOKS = """
    import ctypes, json, os, sys, time
    from spillkit import Chest
    path = sys.argv[1]
    chest = Chest(path=path, available_memory=250, sizeof=lambda v: 100)
    chest.update({f"k{i}": bytes([i]) * 50 for i in range(6)})
    pid = ctypes.CDLL(None, use_errno=True).fork()  # libc's fork: Python's at-fork hooks do not run
    if pid == 0:
        time.sleep(60)  # keeps its copy of the lock's descriptor, and so a share of the lock
        os._exit(0)
    try:
        chest.close()
        again = Chest(path=path)
        print(json.dumps({"keys": len(again)}))
        again.close()
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="calls libc's fork through ctypes")
def test_close_frees_the_lock_even_if_a_child_forked_without_hooks_shares_it(tmp_path: Path) -> None:
    assert run_python(FORK_WITHOUT_HOOKS, str(tmp_path / "store")) == {"keys": 6}


def test_dirlock_release_is_idempotent_and_frees_the_directory(tmp_path: Path) -> None:
    lock = DirLock(str(tmp_path))
    assert lock.held
    with pytest.raises(ChestLocked):
        DirLock(str(tmp_path))
    lock.release()
    lock.release()
    assert not lock.held
    DirLock(str(tmp_path)).release()


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "spillkit-writer"]


def test_a_dropped_write_behind_chest_keeps_its_directory_locked_until_its_writes_are_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Chest dropped without close() while its background writer still writes there keeps the lock.

    Its engine (and the writer thread) outlive the Chest object; a second Chest opened meanwhile would
    see its files renamed over by the orphaned writer. The lock goes once the writes are done and the
    engine is freed.
    """
    gate = threading.Event()
    real_write_all = spillkit.storage._write_all

    def held_write_all(fd: int, frames: list[Any]) -> None:
        gate.wait(60)
        real_write_all(fd, frames)

    monkeypatch.setattr(spillkit.storage, "_write_all", held_write_all)
    path = tmp_path / "store"
    first = open_chest(path, write_behind=10**9, pack_threshold=0)
    try:
        first.update(VALUES)
        assert first.engine.in_flight_bytes > 0  # writes are queued behind the gate
        del first
        gc.collect()
        assert _writer_threads()  # the orphaned writer is still there, holding its values
        with pytest.raises(ChestLocked):
            open_chest(path)
    finally:
        gate.set()
    for thread in _writer_threads():
        thread.join(30)
    gc.collect()
    second = open_chest(path, pack_threshold=0)
    second.update(VALUES)
    assert_all_values(second)
    second.close()


def _child_that_flushes_and_closes(conn: Connection) -> None:
    chest = _INHERITED["chest"]
    report: dict[str, Any] = {}
    chest["child"] = payload(99)
    try:
        chest.flush()
        report["flush"] = "committed"
    except SpillError as error:
        report["flush"] = str(error)
    chest.close()  # shuts the child's copy; commits nothing
    report["closed"] = chest.closed
    conn.send(report)
    os._exit(0)


def test_a_forked_child_can_neither_flush_nor_commit_on_close_into_its_parents_directory(tmp_path: Path) -> None:
    """Review finding: a child's close() committed a manifest naming its own keys into the parent's directory."""
    path = tmp_path / "store"
    chest = _INHERITED["chest"] = filled(path)
    chest.flush()
    parent_end, child_end = multiprocessing.Pipe()
    process = multiprocessing.get_context("fork").Process(target=_child_that_flushes_and_closes, args=(child_end,))
    try:
        process.start()
        assert parent_end.poll(60)
        report = parent_end.recv()
    finally:
        del _INHERITED["chest"]
        process.join(60)
    assert process.exitcode == 0
    assert "forked" in report["flush"] and str(os.getpid()) in report["flush"]
    assert report["closed"] is True
    assert_all_values(chest)  # the parent's Chest is untouched
    chest.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "spill file ... is missing"
        again = open_chest(path)
    assert_all_values(again)
    again.close()


def test_a_drop_between_making_the_directory_and_opening_the_lock_file_is_survived(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding: the holder's drop() removed the directory after the newcomer made it, before its open."""
    path = tmp_path / "store"
    holder = filled(path)
    real_open = spillkit.lockfiles._open
    dropped: list[bool] = []

    def drop_first(full: str) -> int:
        if not dropped:
            dropped.append(True)
            holder.drop()  # the directory is gone now
        return real_open(full)

    monkeypatch.setattr(spillkit.lockfiles, "_open", drop_first)
    chest = open_chest(path)
    assert dropped and len(chest) == 0  # a fresh directory, made again
    chest.update(VALUES)
    assert_all_values(chest)
    chest.close()
