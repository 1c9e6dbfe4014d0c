"""Chest lifecycle: temporary directories go away (close, GC, exit) but never by a forked child;
persistent directories stay and give every key back; a closed Chest refuses to work."""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import multiprocessing
import os
import pickle
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_disk_files, held_in_another_thread

import spillkit
import spillkit.closing
import spillkit.persistence
import spillkit.reopen
import spillkit.tempdirs
from spillkit import Chest, SpillError

REPO = Path(spillkit.__file__).resolve().parents[1]
UNIT = 100


def unit_sizeof(value: Any) -> int:
    return UNIT


def payload(i: int) -> bytes:
    return bytes([i]) * 50 + str(i).encode()


VALUES: dict[Hashable, Any] = {f"k{i}": payload(i) for i in range(6)}


def filled(**kwargs: Any) -> Chest:
    """A Chest holding VALUES: k4 and k5 in memory, k0..k3 spilled."""
    kwargs.setdefault("available_memory", 2.5 * UNIT)
    chest = Chest(sizeof=unit_sizeof, **kwargs)
    chest.update(VALUES)
    assert sorted(chest.inmem) == ["k4", "k5"]
    assert sorted(chest._store) == ["k0", "k1", "k2", "k3"]
    assert_disk_files(chest)  # their records are on disk: files or a segment
    return chest


def assert_all_values(chest: Chest, expected: dict[Hashable, Any] = VALUES) -> None:
    assert set(chest) == set(expected)
    for key, value in expected.items():
        assert chest[key] == value, key


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


# ---- temporary directories --------------------------------------------------------------


def test_a_temporary_directory_is_removed_on_close_and_close_is_idempotent() -> None:
    chest = filled()
    path = chest.path
    assert os.path.isdir(path)
    chest.close()
    assert not os.path.exists(path)
    chest.close()
    chest.drop()
    assert not os.path.exists(path)


def test_a_temporary_directory_is_removed_when_the_with_block_ends() -> None:
    with filled() as chest:
        path = chest.path
        assert_all_values(chest)
    assert not os.path.exists(path)


@pytest.mark.parametrize("cycle", [False, True], ids=["plain", "reference-cycle"])
def test_a_temporary_directory_is_removed_on_garbage_collection(cycle: bool) -> None:
    chest = filled()
    path = chest.path
    if cycle:
        chest.loop = {"chest": chest}  # type: ignore[attr-defined]
    alive = weakref.ref(chest)
    del chest
    gc.collect()
    assert alive() is None
    assert not os.path.exists(path)


class _Weakrefable:
    pass


def test_a_dropped_chest_frees_its_resident_values_without_the_cycle_collector(tmp_path: Path) -> None:
    # The engine must not sit in a reference cycle (e.g. a helper holding it back): a dropped
    # Chest's values would then stay in memory until the cyclic collector happened to run.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        chest = Chest(path=tmp_path / "c", available_memory=10 * UNIT, sizeof=unit_sizeof)
        value = _Weakrefable()
        chest["k"] = value
        alive = weakref.ref(value)
        del value, chest
        assert alive() is None
    finally:
        if was_enabled:
            gc.enable()


EXIT_SCRIPT = """
import json, os, sys
from spillkit import Chest
chest = Chest(available_memory=250, sizeof=lambda v: 100)
for i in range(6):
    chest[f"k{{i}}"] = bytes([i]) * 50
chest.loop = chest
report = {{"path": chest.path, "files": len(os.listdir(chest.path)), "spilled": len(chest.engine.spilled_keys)}}
print(json.dumps(report), flush=True)
{ending}
"""


@pytest.mark.parametrize(
    ("ending", "status"),
    [("pass", 0), ("sys.exit(3)", 3), ("raise RuntimeError('boom')", 1)],
    ids=["falls-off-the-end", "sys-exit", "uncaught-exception"],
)
def test_a_temporary_directory_is_removed_at_interpreter_exit(tmp_path: Path, ending: str, status: int) -> None:
    result = run_python(EXIT_SCRIPT.format(ending=ending), tmp_path)
    assert result.returncode == status, result.stderr
    report = json.loads(result.stdout.splitlines()[0])
    assert report["spilled"] == 4 and report["files"] > 0  # the directory existed, with spilled values in it
    assert not os.path.exists(report["path"])


# ---- forked children -----------------------------------------------------------------------

FORK_SCRIPT = """
import gc, json, os, sys
from spillkit import Chest
chest = Chest(available_memory=250, sizeof=lambda v: 100)
values = {{f"k{{i}}": bytes([i]) * 50 for i in range(6)}}
chest.update(values)
path = chest.path
files = sorted(os.listdir(path))
pid = os.fork()
if pid == 0:
    code = 1
    try:
        assert chest["k5"] == values["k5"]  # resident: no disk traffic
        {action}
        code = 0
    finally:
        sys.exit(code)  # a normal interpreter exit: atexit handlers and finalizers run
_, status = os.waitpid(pid, 0)
report = {{"path": path, "status": os.waitstatus_to_exitcode(status), "exists": os.path.isdir(path)}}
report["files_kept"] = report["exists"] and sorted(os.listdir(path)) == files
try:
    report["values_ok"] = all(chest[k] == v for k, v in values.items())
except Exception as error:
    report["values_ok"] = repr(error)
print(json.dumps(report), flush=True)
"""


@pytest.mark.parametrize(
    "action",
    ["pass", "del chest; gc.collect()", "chest.close()"],
    ids=["child-exits", "child-drops-its-reference", "child-closes"],
)
def test_a_forked_child_never_deletes_the_parents_directory(tmp_path: Path, action: str) -> None:
    result = run_python(FORK_SCRIPT.format(action=action), tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["status"] == 0, result.stderr
    assert report["exists"]
    assert report["files_kept"]
    assert report["values_ok"] is True
    assert not os.path.exists(report["path"])  # and the parent's own exit still removes it


_INHERITED: dict[str, Chest] = {}


def _child_lets_go(how: str) -> None:
    chest = _INHERITED.pop("chest")
    assert chest["k5"] == VALUES["k5"]
    if how == "close":
        chest.close()
    alive = weakref.ref(chest)
    del chest
    gc.collect()
    assert alive() is None  # the finalizer ran in this (child) process


@pytest.mark.parametrize("how", ["gc", "close"])
def test_a_child_inheriting_the_chest_through_multiprocessing_fork_leaves_it_alone(how: str) -> None:
    _INHERITED["chest"] = filled()  # held only here, so the child can really let go of it
    path = _INHERITED["chest"].path
    files = sorted(os.listdir(path))
    process = multiprocessing.get_context("fork").Process(target=_child_lets_go, args=(how,))
    process.start()
    process.join(60)
    chest = _INHERITED.pop("chest")
    try:
        assert process.exitcode == 0
        assert os.path.isdir(path)
        assert sorted(os.listdir(path)) == files
        assert_all_values(chest)
    finally:
        chest.close()
    assert not os.path.exists(path)


def _child_changes_spilled_keys(action: str) -> None:
    chest = _INHERITED["chest"]
    if action == "delete":
        del chest["a"]
    elif action == "overwrite":
        chest["a"] = b"child" * 20_000  # over the budget: straight to disk, under the name the parent's file has
    else:
        chest.clear()
    os._exit(0)


@pytest.mark.parametrize("action", ["delete", "overwrite", "clear"])
def test_a_forked_child_changing_keys_leaves_the_parents_files_alone(tmp_path: Path, action: str) -> None:
    # Before: the child's delete unlinked, and its overwrite replaced, the parent's file of "a"
    # (a value with a file of its own): the parent then read "a" as missing or forged.
    chest = Chest(path=tmp_path / "c", available_memory=200_000, sizeof=len)
    expected = {"a": b"A" * 100_000, "r": b"R" * 100_000, "x": b"X" * 100_000}
    chest.update(expected)
    assert "a" not in chest.inmem
    _INHERITED["chest"] = chest
    try:
        process = multiprocessing.get_context("fork").Process(target=_child_changes_spilled_keys, args=(action,))
        process.start()
        process.join(60)
    finally:
        del _INHERITED["chest"]
    assert process.exitcode == 0
    assert dict(chest.items()) == expected
    chest.drop()


# ---- persistent directories --------------------------------------------------------------------


def test_a_persistent_chest_keeps_its_directory_and_gives_every_key_back(tmp_path: Path) -> None:
    path = tmp_path / "store"
    chest = filled(path=path)
    chest.put("costly", payload(9), cost=2.5)
    chest[("tuple", 1)] = {"nested": [1, 2]}
    expected = {**VALUES, "costly": payload(9), ("tuple", 1): {"nested": [1, 2]}}
    assert chest.path == str(path)
    chest.close()
    assert path.is_dir()
    chest.close()  # idempotent
    assert set(chest._store) == set(expected)  # memory was written out too

    again = Chest(path=path, available_memory=2.5 * UNIT, sizeof=unit_sizeof)
    assert len(again) == len(expected)
    assert dict(again.inmem) == {}  # reopening loads nothing until asked
    assert again.engine.given_cost("costly") == 2.5
    assert again.engine.given_cost("k0") is None
    assert all(again.engine.nbytes(k) == UNIT for k in expected)
    assert_all_values(again, expected)

    # a second generation: the manifest follows the latest close
    del again["k0"]
    again["k1"] = "changed"
    again["added"] = "new"
    expected = {**expected, "k1": "changed", "added": "new"}
    del expected["k0"]
    again.close()
    third = Chest(path=path, available_memory=2.5 * UNIT, sizeof=unit_sizeof)
    assert_all_values(third, expected)
    assert set(third._store) == set(expected)
    assert_disk_files(third)  # no file left from the deleted or overwritten values
    third.close()
    assert path.is_dir()


def test_drop_removes_a_persistent_directory(tmp_path: Path) -> None:
    path = tmp_path / "store"
    chest = filled(path=path)
    chest.flush()
    chest.drop()
    assert not path.exists()
    chest.drop()  # idempotent
    chest.close()
    with pytest.raises(SpillError):
        chest["k0"] = 1
    assert not path.exists()
    reused = Chest(path=path, sizeof=unit_sizeof)  # the path is free to be used again, and empty
    assert len(reused) == 0
    assert path.is_dir()
    reused.close()


def _plant_others_files(directory: Path) -> dict[str, bytes]:
    # What a user may keep where they point a Chest: a draft whose name starts like spillkit's
    # temporary files, a file, and a subdirectory.
    (directory / "project" / "src").mkdir(parents=True)
    files = {".tmp-draft.txt": b"draft", "notes.txt": b"notes", "project/src/main.py": b"print(1)"}
    for name, content in files.items():
        (directory / name).write_bytes(content)
    return files


@pytest.mark.parametrize("pack", [None, 0], ids=["packed", "file-per-value"])
@pytest.mark.parametrize("write_behind", [False, True], ids=["sync", "write-behind"])
def test_a_directory_shared_with_others_files_keeps_them_through_reopen_and_drop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pack: int | None, write_behind: bool
) -> None:
    # helper-117: Chest(path="."), or any directory holding other files: the constructor removed a
    # '.tmp-' file it never wrote, and drop() removed the whole tree, the user's files included.
    monkeypatch.chdir(tmp_path)
    files = _plant_others_files(tmp_path)
    chest = Chest(path=".", available_memory=200, sizeof=unit_sizeof, pack_threshold=pack, write_behind=write_behind)
    for i in range(6):
        chest[f"k{i}"] = payload(i)
    chest.close()
    chest = Chest(path=".", available_memory=200, sizeof=unit_sizeof, pack_threshold=pack)
    assert {key: chest[key] for key in chest} == {f"k{i}": payload(i) for i in range(6)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a directory left because others' files are in it is no failure
        chest.drop()
    assert {name: (tmp_path / name).read_bytes() for name in files} == files
    assert sorted(os.listdir(tmp_path)) == [".tmp-draft.txt", "notes.txt", "project"]  # every spillkit file went


OWN_TEMPORARIES = [".tmp-4242-17", ".tmp-4242-sdeadbeef-3", ".tmp-4242-sdeadbeef-b3", ".tmp-4242-s3",
                   ".tmp-key-4242-deadbeef", ".spillkit-manifest.tmp-4242-0123456789abcdef"]  # fmt: skip
LOOKALIKES = [".tmp-draft.txt", ".tmp-4242-17.notes", ".tmp-4242-s3-draft", ".tmp-key-x", ".tmp-4242-sdeadbeef-b3x"]


def test_a_reopen_removes_spillkits_temporaries_and_keeps_lookalikes(tmp_path: Path) -> None:
    # helper-122's survivors: the key file's temporary was never removed by a test, and the names' end anchor
    # was never tested (without it, a user's '.tmp-4242-17.notes' went as a leftover).
    chest = filled(path=tmp_path / "c")
    chest.close()
    for name in OWN_TEMPORARIES + LOOKALIKES:
        (tmp_path / "c" / name).write_bytes(b"x")
    Chest(path=tmp_path / "c", sizeof=unit_sizeof).close()
    assert sorted(n for n in os.listdir(tmp_path / "c") if n.startswith((".tmp-", ".spillkit-manifest."))) == sorted(
        LOOKALIKES
    )


def test_drop_removes_spillkits_temporaries_made_after_it_opened(tmp_path: Path) -> None:
    chest = filled(path=tmp_path / "c")
    for name in OWN_TEMPORARIES:
        (tmp_path / "c" / name).write_bytes(b"a crash's leftover, or a write cut short")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chest.drop()
    assert not (tmp_path / "c").exists()


def test_drop_finding_its_directory_gone_at_the_end_says_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chest = filled(path=tmp_path / "c")

    def gone(path: Any) -> None:
        raise FileNotFoundError(errno.ENOENT, "removed meanwhile", path)

    monkeypatch.setattr(spillkit.reopen.os, "rmdir", gone)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chest.drop()


def test_a_spare_named_as_before_2026_11_27_is_a_leftover(tmp_path: Path) -> None:
    # helper-118: spares were .tmp-<pid>-s<n> until aba0855; the stricter names of 3291ed3 left them for good.
    chest = filled(path=tmp_path / "c")
    chest.close()
    (tmp_path / "c" / ".tmp-4242-s3").write_bytes(b"an old spare's bytes")
    again = Chest(path=tmp_path / "c", sizeof=unit_sizeof)
    assert not (tmp_path / "c" / ".tmp-4242-s3").exists()
    again.drop()
    assert not (tmp_path / "c").exists()


def test_drop_through_a_symbolic_link_removes_the_values_and_leaves_the_link(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    chest = filled(path=tmp_path / "link")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # before: a warning that the link is no directory
        chest.drop()
    assert (tmp_path / "link").is_symlink() and os.listdir(tmp_path / "real") == []


def test_drop_removes_the_directory_it_made_empty_but_not_its_parent(tmp_path: Path) -> None:
    (tmp_path / "kept.txt").write_bytes(b"x")
    chest = filled(path=tmp_path / "store")
    chest.drop()
    assert sorted(os.listdir(tmp_path)) == ["kept.txt"]


@pytest.mark.parametrize("path", ["", b""], ids=["str", "bytes"])
def test_an_empty_path_is_refused_not_taken_for_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    files = _plant_others_files(tmp_path)
    with pytest.raises(ValueError, match="path is empty"):
        Chest(path=path)
    assert sorted(os.listdir(tmp_path)) == [".tmp-draft.txt", "notes.txt", "project"]
    assert {name: (tmp_path / name).read_bytes() for name in files} == files


def writing_slowly(path: Path | None) -> tuple[Chest, threading.Event]:
    """A write-behind Chest holding k0, k1, k2 whose background write of k0 waits for the event returned."""
    gate, writing = threading.Event(), threading.Event()

    def dump(value: Any, file: Any) -> None:
        if value == "slow":
            writing.set()
            gate.wait(30)
        pickle.dump(value, file)

    chest = Chest(path=path, available_memory=2 * UNIT, sizeof=unit_sizeof, write_behind=True, dump=dump,
                  load=pickle.load, pack_threshold=0)  # fmt: skip
    chest["k0"] = "slow"
    chest.update({"k1": 1, "k2": 2})  # k0's write starts, and holds the writer
    assert writing.wait(30)
    return chest, gate


@pytest.mark.parametrize("temporary", [False, True], ids=["drop", "close-temporary"])
def test_a_drop_waiting_for_background_writes_shows_others_the_whole_chest(tmp_path: Path, temporary: bool) -> None:
    # helper-116: drop() deleted every key, then waited for the writer, which lets go of the lock: meanwhile
    # other threads found an empty Chest, still open, that took their puts only to lose them.
    chest, gate = writing_slowly(None if temporary else tmp_path / "c")
    ending = threading.Thread(target=chest.close if temporary else chest.drop)
    ending.start()
    time.sleep(0.3)  # the drop is waiting for k0's write by now
    seen = (chest.closed, len(chest), sorted(chest))
    gate.set()
    ending.join(30)
    assert seen == (False, 3, ["k0", "k1", "k2"])  # before: (False, 0, [])
    assert chest.closed


def test_a_close_while_a_drop_waits_for_background_writes_wins_and_the_drop_returns(tmp_path: Path) -> None:
    # helper-122 (a mutation that survived): drop() waits for writes letting go of the lock; a close() from
    # another thread then flushes and shuts the Chest, and the drop must not go on deleting a closed one.
    chest, gate = writing_slowly(tmp_path / "c")
    errors: list[BaseException] = []

    def run(action: Callable[[], None]) -> None:
        try:
            action()
        except BaseException as error:  # (reported by the assertion below)
            errors.append(error)

    dropping = threading.Thread(target=run, args=(chest.drop,))
    dropping.start()
    time.sleep(0.3)  # the drop waits for k0's write
    closing = threading.Thread(target=run, args=(chest.close,))
    closing.start()
    time.sleep(0.3)  # the close waits for it too
    gate.set()
    dropping.join(30)
    closing.join(30)
    assert errors == [] and chest.closed
    again = Chest(path=tmp_path / "c", load=pickle.load, dump=pickle.dump)  # the close committed every value
    assert dict(again.items()) == {"k0": "slow", "k1": 1, "k2": 2}
    again.drop()


def test_drop_removes_a_temporary_directory() -> None:
    chest = filled()
    path = chest.path
    chest.drop()
    assert not os.path.exists(path)
    with pytest.raises(SpillError):
        chest["k0"] = 1


# ---- operations on a closed Chest ------------------------------------------------------------------

OPERATIONS: dict[str, Callable[[Chest], Any]] = {
    "getitem-spilled": lambda c: c["k0"],
    "getitem-was-resident": lambda c: c["k5"],
    "get": lambda c: c.get("k0"),
    "setitem": lambda c: c.__setitem__("new", 1),
    "put": lambda c: c.put("new", 1, cost=1.0),
    "update": lambda c: c.update({"new": 1}),
    "delitem": lambda c: c.__delitem__("k0"),
    "pop": lambda c: c.pop("k0"),
    "clear": lambda c: c.clear(),
    "set_cost": lambda c: c.set_cost("k0", 1.0),
    "settle": lambda c: c.settle(),
    "flush": lambda c: c.flush(),
}


def _closed(kind: str, tmp_path: Path) -> Chest:
    chest = filled(path=tmp_path / "store") if kind == "persistent" else filled()
    chest.close()
    return chest


@pytest.mark.parametrize("operation", list(OPERATIONS))
@pytest.mark.parametrize("kind", ["temporary", "persistent"])
def test_operations_after_close_raise_spill_error(tmp_path: Path, kind: str, operation: str) -> None:
    chest = _closed(kind, tmp_path)
    with pytest.raises(SpillError, match="closed"):
        OPERATIONS[operation](chest)


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_operations_after_close_leave_a_persistent_directory_intact(tmp_path: Path, operation: str) -> None:
    chest = _closed("persistent", tmp_path)
    before = {p.name: p.read_bytes() for p in (tmp_path / "store").iterdir()}
    with contextlib.suppress(Exception):
        OPERATIONS[operation](chest)
    assert {p.name: p.read_bytes() for p in (tmp_path / "store").iterdir()} == before
    again = Chest(path=tmp_path / "store", available_memory=2.5 * UNIT, sizeof=unit_sizeof)
    assert_all_values(again)
    again.close()


def test_a_flush_that_waited_for_the_lock_while_the_chest_closed_writes_nothing(tmp_path: Path) -> None:
    # Once closed, the directory may belong to another Chest: a flush that had passed its first check must
    # not commit a manifest there (before: it did, and the other Chest's keys went back in time).
    path = tmp_path / "c"
    chest = Chest(path=path)
    chest["a"] = [1]
    checked = threading.Event()
    real = chest._check_open

    def check_open() -> None:
        real()
        checked.set()

    chest._check_open = check_open  # type: ignore[method-assign]
    outcome: list[BaseException | None] = []

    def flush() -> None:
        try:
            chest.flush()
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)

    with chest._engine.lock:  # the flush passes its first check, then waits here
        flusher = threading.Thread(target=flush)
        flusher.start()
        assert checked.wait(10)
        chest.close()
    flusher.join(10)
    assert isinstance(outcome[0], SpillError) and "closed" in str(outcome[0])
    other = Chest(path=path)
    assert other["a"] == [1]
    other.close()


def test_a_put_racing_close_is_either_refused_or_kept(tmp_path: Path) -> None:
    # close() flushes, then shuts: a put that came in between returned, and was neither flushed nor kept.
    path = tmp_path / "c"
    chest = Chest(path=path)
    real = chest._shut

    def slow_shut(join: bool = True) -> None:  # timing only: widens the moment between the flush and the shut
        time.sleep(0.05)
        real(join=join)

    chest._shut = slow_shut  # type: ignore[method-assign]
    stored: list[int] = []
    started = threading.Event()

    def put_until_closed() -> None:
        for i in range(1_000_000):
            try:
                chest[i] = i
            except SpillError:
                return
            stored.append(i)
            started.set()

    putter = threading.Thread(target=put_until_closed)
    putter.start()
    assert started.wait(10)
    chest.close()
    putter.join(10)
    again = Chest(path=path)
    missing = [i for i in stored if i not in again]
    assert not missing, f"{len(missing)} puts returned and were lost, first {missing[:5]}"  # before: hundreds
    again.close()


class SlowToPickle:
    """A value whose pickling takes a while (so that writes are still queued when its Chest goes)."""

    def __init__(self, i: int) -> None:
        self.i = i

    def __reduce__(self) -> tuple[type, tuple[int]]:
        time.sleep(0.02)
        return (SlowToPickle, (self.i,))


def test_a_temporary_chest_collected_with_writes_queued_cancels_them(recwarn: pytest.WarningsRecorder) -> None:
    # Before: the directory went at once and each queued write failed into it, warned about (19 of 20),
    # for a Chest nobody could reach any more.
    chest = Chest(available_memory=100, sizeof=lambda v: 60, write_behind=10_000)
    path = chest.path
    for i in range(20):
        chest[i] = SlowToPickle(i)
    writers = [t for t in threading.enumerate() if t.name == "spillkit-writer"]
    assert writers
    del chest
    gc.collect()
    assert not os.path.exists(path)
    for thread in writers:
        thread.join(10)
        assert not thread.is_alive()
    assert [str(w.message) for w in recwarn if issubclass(w.category, spillkit.SpillWarning)] == []


def test_a_temporary_chest_collected_while_its_lock_is_held_still_cancels_its_writes(
    recwarn: pytest.WarningsRecorder,
) -> None:
    # The finalizer may run while another thread (the writer finishing a write, say) holds the lock.
    # Before: it then left the queued writes, and each failed into the removed directory, warned about.
    chest = Chest(available_memory=100, sizeof=lambda v: 60, write_behind=10_000)
    path, engine = chest.path, chest.engine
    for i in range(20):
        chest[i] = SlowToPickle(i)
    writers = [t for t in threading.enumerate() if t.name == "spillkit-writer"]
    with held_in_another_thread(engine.lock, wait=10):
        del chest
        gc.collect()
        assert not os.path.exists(path)
    for thread in writers:
        thread.join(10)
        assert not thread.is_alive()
    assert [str(w.message) for w in recwarn if issubclass(w.category, spillkit.SpillWarning)] == []
    assert not engine._writer.pending and engine._writer.in_flight_bytes == 0  # type: ignore[union-attr]


def test_a_temporary_chest_collected_while_its_writer_commits_gives_no_warning(
    recwarn: pytest.WarningsRecorder,
) -> None:
    # The finalizer needs no lock: it can run while the writer is inside a commit, past its check of
    # the flag. Before, that commit failed into the removed directory, warned "disk write failed".
    chest = Chest(available_memory=3_000_000, write_behind=True)
    path, engine, store = chest.path, chest.engine, chest._store
    writer = engine._writer.writer  # type: ignore[union-attr]
    commit, committing = store.commit, threading.Event()

    def commit_once_the_directory_is_gone(prepared: Any) -> int:  # a slow commit, widened to the whole race
        committing.set()
        deadline = time.monotonic() + 10
        while os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.001)
        return commit(prepared)

    store.commit = commit_once_the_directory_is_gone  # type: ignore[method-assign]
    for i in range(4):
        chest[i] = bytes([i]) * 1_000_000  # the fourth hands the first to the writer
    assert committing.wait(10)
    thread = writer._last_thread
    del chest
    gc.collect()
    assert thread is not None
    thread.join(10)
    assert not os.path.exists(path) and writer.abandoned
    assert [str(w.message) for w in recwarn if issubclass(w.category, spillkit.SpillWarning)] == []
    assert writer.failures == 0 and writer.in_flight_bytes == 0


def test_a_chest_alive_until_late_interpreter_shutdown_leaves_no_error(tmp_path: Path) -> None:
    # Kept alive by the warnings module, a Chest's parts are collected after their modules' globals
    # are cleared: their __del__ guards used contextlib.suppress, by then None ("Exception ignored").
    script = (
        "import sys, warnings\n"
        "from spillkit import Chest\n"
        "c = Chest(path=sys.argv[1], available_memory=10)\n"
        "for i in range(5):\n"
        "    c[i] = b'x' * 100\n"
        "warnings.showwarning = lambda *a, **k: c\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "c")], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0 and "Exception ignored" not in done.stderr, done.stderr


def test_a_drop_killed_half_way_reopens_empty_not_with_half_the_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # drop() removed the directory in listing order with the manifest still in place: a kill
    # half-way left a manifest naming files already gone (a reopen gave some keys, with warnings).
    path = tmp_path / "c"
    chest = Chest(path=path, available_memory=1000, sizeof=lambda v: 100, pack_threshold=0)
    chest.update({f"k{i}": [i] * 10 for i in range(12)})
    chest.flush()

    class Killed(BaseException):
        """The process dies here: nothing after this runs (finally blocks aside)."""

    def killed_half_way(target: str) -> None:
        spill_files = sorted(name for name in os.listdir(target) if not name.startswith("."))
        for name in spill_files[: len(spill_files) // 2]:
            os.unlink(os.path.join(target, name))
        raise Killed

    monkeypatch.setattr(spillkit.closing, "remove_own", killed_half_way)
    with pytest.raises(Killed):
        chest.drop()
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # before: "spill file ... is missing" for the keys already removed
        reopened = Chest(path=path, available_memory=1000)
    assert len(reopened) == 0
    reopened.drop()


def test_a_manifest_without_its_key_file_is_refused_and_no_new_key_is_made(tmp_path: Path) -> None:
    # Before: a new key was made, the manifest failed to verify ("tampered with"), and from then on
    # the old key could not be restored in its place.
    path = tmp_path / "c"
    chest = Chest(path=path)
    chest["a"] = 1
    chest.close()
    os.rename(path / ".spillkit-key", tmp_path / "saved-key")
    with pytest.raises(spillkit.SpillError, match="no key file"):
        Chest(path=path)
    assert not (path / ".spillkit-key").exists()
    os.rename(tmp_path / "saved-key", path / ".spillkit-key")
    reopened = Chest(path=path)
    assert reopened["a"] == 1
    reopened.drop()


@pytest.mark.parametrize("pack_threshold", [0, None], ids=["files", "packed"])
def test_a_reopened_chest_only_read_closes_without_writing_a_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pack_threshold: int | None
) -> None:
    # Every flush committed a new manifest, so a directory that can be read but not written (the
    # stand-in below: every manifest write is refused) could be reopened and read, never closed.
    path = tmp_path / "c"
    options: dict[str, Any] = {} if pack_threshold is None else {"pack_threshold": pack_threshold}
    chest = Chest(path=path, available_memory=300, sizeof=lambda v: 100, **options)
    expected = {f"k{i}": [i] * 20 for i in range(8)}
    chest.update(expected)
    chest.close()
    manifest = os.stat(path / ".spillkit-manifest")

    def refused(*args: Any, **kwargs: Any) -> int:
        raise PermissionError(13, "Permission denied (a read-only directory)")

    monkeypatch.setattr(spillkit.persistence, "write_manifest", refused)
    reader = Chest(path=path, available_memory=300, sizeof=lambda v: 100, **options)
    assert dict(reader.items()) == expected  # loads, evictions of values whose files hold them
    reader.close()  # before: PermissionError, and the Chest stayed open with its lock
    assert reader.closed
    assert os.stat(path / ".spillkit-manifest").st_ino == manifest.st_ino
    monkeypatch.undo()
    writer = Chest(path=path, available_memory=300, sizeof=lambda v: 100, **options)
    writer["k0"] = ["changed"]
    writer.close()  # a change: a new manifest
    assert os.stat(path / ".spillkit-manifest").st_ino != manifest.st_ino
    final = Chest(path=path)
    assert final["k0"] == ["changed"] and len(final) == len(expected)
    final.drop()


@pytest.mark.parametrize("write_behind", [False, True])
def test_pinned_values_take_no_room_in_the_budget_while_pinned(tmp_path: Path, write_behind: bool) -> None:
    # Before, two running tasks' inputs of 80% of the budget each pushed every other value to disk,
    # to be read back later (dask rechunk read 2.6 GiB instead of 1 GiB), freeing nothing: the tasks held them.
    chest = Chest(path=tmp_path / "c", available_memory=300, sizeof=lambda v: 100, write_behind=write_behind)
    engine = chest.engine
    chest["spilled"] = ["spilled"]  # the least recently used, so the first to go
    chest["a"], chest["b"] = ["a"], ["b"]
    chest["alias"] = chest["a"]  # the same object under two keys: counted once, pinned or not
    chest["x"] = ["x"]
    chest.wait_for_writes()
    assert "spilled" not in chest.inmem
    engine.pin(["a", "alias", "b", "spilled"])
    assert engine.pinned_bytes == 200
    for i in range(6):
        chest[i] = [i]
        chest.wait_for_writes()
    assert {"a", "alias", "b", 3, 4, 5} <= set(chest.inmem)  # a full budget beside the pins
    assert chest.memory_bytes == 500 and engine.pinned_bytes == 200
    assert chest["spilled"] == ["spilled"]  # loaded while pinned: outside the budget too, nothing spilled for it
    assert engine.pinned_bytes == 300 and {3, 4, 5} <= set(chest.inmem)
    chest["b"] = ["b2"]  # a pinned key's new value is pinned as well
    assert engine.pinned_bytes == 300 and chest.inmem["b"] == ["b2"]
    del chest["b"]
    assert engine.pinned_bytes == 200
    engine.unpin(["a", "spilled"])
    assert engine.pinned_bytes == 100 and chest.memory_bytes == 500  # still pinned under "alias"; unpin spills nothing
    engine.unpin(["alias", "b"])
    assert engine.pinned_bytes == 0
    chest.settle()
    chest.wait_for_writes()
    assert chest.memory_bytes <= 300
    assert dict(chest) == {"a": ["a"], "alias": ["a"], "spilled": ["spilled"], "x": ["x"], **{i: [i] for i in range(6)}}
    chest.drop()


@pytest.mark.parametrize("write_behind", [False, True])
def test_a_pinned_key_is_never_a_victim_until_unpinned(tmp_path: Path, write_behind: bool) -> None:
    chest = Chest(path=tmp_path / "c", available_memory=300, sizeof=lambda v: 100, write_behind=write_behind)
    chest["held"] = ["held"]
    chest.engine.pin(["held", "absent"])  # an absent key may be pinned (an input still to be loaded)
    chest.engine.pin(["held"])  # pins add up
    for i in range(10):
        chest[i] = [i]
        assert "held" in chest.inmem  # the least recently used, and passed over every round
    assert chest.evict() > 0 and "held" in chest.inmem  # evict() (dask.distributed's) passes it over too
    chest.engine.unpin(["held", "absent"])
    chest[10] = [10]
    assert "held" in chest.inmem  # still pinned once
    chest.engine.unpin(["held"])
    for i in range(11, 14):
        chest[i] = [i]
    chest.wait_for_writes()
    assert "held" not in chest.inmem and chest["held"] == ["held"]
    assert chest.memory_bytes <= 300 + 100  # at most the value just read back over (never the pins' fault)
    chest.drop()
