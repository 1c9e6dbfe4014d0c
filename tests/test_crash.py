"""Crash consistency: a child process working on a persistent Chest is killed with SIGKILL;
re-opening the directory gives back exactly the state of the last completed ``flush()``.

The child (``tests/crash_child.py``) logs each flush's contents before calling ``flush()``
(``begin``) and again after it returned (``done``). A kill can land between the two, after the
manifest was committed but before ``done`` was written, so the re-opened state must be the last
``done`` state or, if a ``begin`` follows it, that flush's state: nothing else, not a mix.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any

import pytest
from crash_child import State, key_of, make_value, same_value, state_from_json, state_to_json, value_size
from helpers import abandon

import spillkit
import spillkit.manifest
from spillkit import Chest, DiskQuotaExceeded
from spillkit.dirlock import LOCK_NAME
from spillkit.manifest import MANIFEST_NAME
from spillkit.reserve import RESERVE_NAME
from spillkit.security import KEY_FILE_NAME

REPO = Path(spillkit.__file__).resolve().parents[1]
CHILD = Path(__file__).with_name("crash_child.py")
pytestmark = pytest.mark.timeout(120)
# What a Chest keeps in its directory besides values: never a leftover, never a spill file.
METADATA = frozenset({MANIFEST_NAME, KEY_FILE_NAME, LOCK_NAME, RESERVE_NAME})


class Workers:
    """The fork server of ``crash_child.py``: ``start(cfg)`` forks a worker process and returns its pid."""

    def __init__(self, tmp_path: Path) -> None:
        self.stderr = tmp_path / "workers-stderr"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        with open(self.stderr, "wb") as stderr:
            self.server = subprocess.Popen(
                [sys.executable, str(CHILD), "serve"],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )

    def start(self, cfg: dict[str, Any]) -> int:
        assert self.server.stdin and self.server.stdout
        self.server.stdin.write(json.dumps(cfg).encode() + b"\n")
        self.server.stdin.flush()
        return int(self.server.stdout.readline())

    def errors(self) -> str:
        return self.stderr.read_text()

    def close(self) -> None:
        assert self.server.stdin
        self.server.stdin.close()
        self.server.wait(30)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    server = Workers(tmp_path)
    yield server
    server.close()
    assert not server.errors()  # no worker raised


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pid: int, limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while alive(pid):
        assert time.monotonic() < deadline, f"worker {pid} still runs"
        time.sleep(0.002)


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)


def read_log(path: Path) -> list[dict[str, Any]]:
    """The complete lines of the log (a line cut short by the kill is not a record)."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")[:-1]
    return [json.loads(line) for line in lines]


def wait_for(log: Path, pid: int, workers: Workers, ev: str, after: int = 0) -> int:
    """Wait until the log has a record ``ev`` at an index >= ``after``; return its index."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        records = read_log(log)
        for index in range(after, len(records)):
            if records[index]["ev"] == ev:
                return index
        assert alive(pid), f"the worker exited before {ev!r}: {records[-3:]}\n{workers.errors()}"
        time.sleep(0.002)
    raise AssertionError(f"no {ev!r} in the log after 60 s")


def allowed_states(records: list[dict[str, Any]], initial: State) -> list[State]:
    """The states a re-open may give: the last completed flush's, and the one of a flush begun after it."""
    done, pending = initial, None
    begun: dict[int, State] = {}
    for record in records:
        if record["ev"] == "begin":
            begun[record["n"]] = pending = state_from_json(record["state"])
        elif record["ev"] == "done":
            done, pending = begun[record["n"]], None
    return [done] if pending is None else [done, pending]


def reopen(path: Path) -> Chest:
    """Open the directory as a restarted program would, and check that only the manifest and its files are left."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing or damaged file would warn: that is a failure here
        chest = Chest(path=path, available_memory=1 << 30, sizeof=value_size, pack_threshold=0)
    names = {os.path.basename(chest._store.filename(key)) for key in chest}
    left = set(os.listdir(path)) - METADATA
    assert left == names, "a temporary, orphaned or superseded file is left"
    return chest


def holds(chest: Chest, state: State) -> bool:
    if set(chest) != {key_of(i) for i in state}:
        return False
    return all(same_value(chest[key_of(i)], make_value(i, *vs)) for i, vs in state.items())


def check_reopen(path: Path, allowed: list[State]) -> State:
    """Re-open twice; both times the contents are exactly one allowed state, every value exact; return it."""
    first = reopen(path)
    matches = [state for state in allowed if holds(first, state)]
    assert matches, f"the re-opened keys {sorted(map(repr, first))} are none of the states {allowed}"
    abandon(first)  # let go of the directory without a flush, as a killed program would
    assert holds(reopen(path), matches[-1])  # a re-open after a re-open's clean-up gives the same
    return matches[-1]


def test_reopen_after_the_child_exits_normally_is_the_last_flush(tmp_path: Path, workers: Workers) -> None:
    """The scripted story without a kill: the baseline the pause-point runs are compared with."""
    log = tmp_path / "log"
    wait_gone(workers.start({"mode": "scripted", "path": str(tmp_path / "chest"), "log": str(log)}))
    records = read_log(log)
    assert records[-1]["ev"] == "end" and records[-1]["calls"] > 30
    assert allowed_states(records, {}) == [state_from_json(records[-3]["state"])]
    check_reopen(tmp_path / "chest", allowed_states(records, {}))


def baseline(tmp_path: Path, workers: Workers, packed: bool) -> tuple[list[State], dict[str, Any]]:
    """Run the scripted story to its end: the state after each flush, and its end record (how many calls)."""
    log = tmp_path / "baseline-log"
    cfg = {"mode": "scripted", "path": str(tmp_path / "baseline"), "log": str(log), "packed": packed}
    wait_gone(workers.start(cfg))
    records = read_log(log)
    assert records[-1]["ev"] == "end", workers.errors()
    flushed = [state_from_json(r["state"]) for r in records if r["ev"] == "begin"]
    return [{}, *flushed], records[-1]


def leftovers(path: Path) -> dict[str, int]:
    return {name: os.path.getsize(path / name) for name in os.listdir(path) if ".tmp-" in name}


CALLS = {"open", "write", "writev", "fsync", "replace", "unlink"}


@pytest.mark.parametrize(
    ("packed", "kinds"),
    [(False, CALLS), (True, CALLS | {"pwrite", "ftruncate", "rename"})],
    ids=["files", "packed"],
)
def test_kill_before_every_mutating_call_of_the_flushes_and_the_work_between(
    tmp_path: Path, workers: Workers, packed: bool, kinds: set[str]
) -> None:
    """Before its k-th write, segment append, ftruncate, fsync, rename, unlink or file creation (every k
    of the story), the child writes half of the bytes if it is a write, and is killed: the re-open gives
    exactly the state of the manifests committed so far; and the half-written files are gone. The packed
    story (crash_child.packed_story) moves keys between packed records and files, seals a pinned segment
    and compacts it at a flush."""
    states, end = baseline(tmp_path, workers, packed)
    total = end["calls"]
    assert not packed or end["compactions"] >= 1
    calls: dict[str, int] = {}
    commits: set[int] = set()
    half_written = 0
    running: dict[int, tuple[int, Path]] = {}
    pending = list(range(1, total + 1))
    while pending or running:
        while pending and len(running) < 4:  # they mostly wait on the disk or for the kill
            k = pending.pop(0)
            log = tmp_path / f"log-{k}"
            cfg = {"mode": "scripted", "path": str(tmp_path / f"chest-{k}"), "log": str(log), "pause_at": k}
            cfg["packed"] = packed
            running[k] = (workers.start(cfg), log)
        for k, (pid, log) in list(running.items()):
            records = read_log(log)
            if not records or records[-1]["ev"] != "pause":
                assert alive(pid), workers.errors()
                continue
            kill(pid)
            del running[k]
            pause = records[-1]
            assert pause["k"] == k
            calls[pause["call"]] = calls.get(pause["call"], 0) + 1
            commits.add(pause["commits"])
            path = tmp_path / f"chest-{k}"
            if pause["call"] in ("write", "writev"):
                assert any(leftovers(path).values()), f"no half-written temporary file at call {k}"
                half_written += 1
            assert check_reopen(path, [states[pause["commits"]]]) == states[pause["commits"]]
        time.sleep(0.003)
    # the story reached every kind of call, and kills landed before, between and after every commit
    assert set(calls) == kinds, calls
    assert commits == set(range(len(states)))
    assert half_written == calls["write"] + calls["writev"]


def run_generations(tmp_path: Path, workers: Workers, seed: int, kills: int, **cfg: Any) -> list[dict[str, Any]]:
    """Start a worker on the same directory ``kills`` times, each time killing it at a random moment
    (with ``p_flush`` > 0.2, a moment after its 1st-3rd flush began); check every re-open."""
    rng = random.Random(seed)
    path = tmp_path / "chest"
    state: State = {}
    flushes = 0
    outcomes = []
    for generation in range(1, kills + 1):
        log = tmp_path / f"log-{generation}"
        pid = workers.start(
            {
                "mode": "random",
                "path": str(path),
                "log": str(log),
                "seed": rng.randrange(2**32),
                "generation": generation,
                "state": state_to_json(state),
                "flushes": flushes,
                **cfg,
            }
        )
        index = wait_for(log, pid, workers, "ready")
        if cfg["p_flush"] > 0.2:  # aim at a flush: some begins in, then a moment later
            for _ in range(rng.randint(1, 3)):
                index = wait_for(log, pid, workers, "begin", after=index + 1)
            time.sleep(rng.uniform(0, 0.01))
        else:
            time.sleep(rng.uniform(0, 0.4))
        kill(pid)
        records = read_log(log)
        assert records[-1]["ev"] != "end"  # killed while it worked
        assert all(r["ev"] != "wrong" for r in records)
        allowed = allowed_states(records, state)
        state = check_reopen(path, allowed)
        flushes = max([flushes, *(r["n"] for r in records if r["ev"] == "begin")])
        outcomes.append({"in_flush": len(allowed) == 2, "committed": state == allowed[-1], "keys": len(state)})
    return outcomes


SMALL = {
    "budget": 16 * 1024,
    "keys": 12,
    "sizes": [200, 800, 2000, 5000, 20_000, 100_000, 2_000_000],
    "p_set": 0.55,
    "p_flush": 0.1,
}


@pytest.mark.parametrize(("seed", "packed"), [(11, False), (12, False), (13, False), (14, True), (15, True)])
def test_random_kills_while_writing_spilling_deleting_and_flushing(
    tmp_path: Path, workers: Workers, seed: int, packed: bool
) -> None:
    """Six generations on one directory, each killed at a random moment: every re-open is exactly the
    state of the last completed flush (or of the flush in flight, if its manifest was committed)."""
    outcomes = run_generations(tmp_path, workers, seed, 6, **SMALL, packed=packed)
    assert any(outcome["keys"] for outcome in outcomes)  # the flushed states were not all empty


def test_random_kills_during_large_flushes(tmp_path: Path, workers: Workers) -> None:
    """Values of 0.3-1 MB all in memory, so that each flush writes and fsyncs megabytes; the kill
    comes a few milliseconds after a flush began."""
    cfg = {"budget": 64 << 20, "keys": 8, "sizes": [300_000, 600_000, 1_000_000], "p_set": 0.6, "p_flush": 0.25}
    outcomes = run_generations(tmp_path, workers, 5, 6, **cfg)
    assert any(outcome["keys"] for outcome in outcomes)


# ---- in one process: the copy-on-write rules, and faults around a commit ------------------------------

UNIT = 100


def unit_sizeof(value: Any) -> int:
    return UNIT


def spill_names(path: Path) -> set[str]:
    return set(os.listdir(path)) - METADATA


def snapshot(path: Path) -> dict[str, bytes]:
    return {name: (path / name).read_bytes() for name in os.listdir(path) if (path / name).is_file()}


FLUSHED: dict[Hashable, Any] = {**{f"k{i}": f"value {i}" for i in range(6)}, ("t", 1): "tuple key"}


def flushed_chest(path: Path, **kwargs: Any) -> Chest:
    kwargs.setdefault("available_memory", 2.5 * UNIT)
    kwargs.setdefault("pack_threshold", 0)  # these tests look at files of their own (segments: test_compaction)
    chest = Chest(path=path, sizeof=unit_sizeof, **kwargs)
    chest.update(FLUSHED)
    chest.flush()
    return chest


def work_after_the_flush(chest: Chest) -> dict[Hashable, Any]:
    """Overwrite spilled and resident keys, delete, pop, bring a deleted key back, add new ones."""
    live = dict(FLUSHED)
    spilled, resident = chest.engine.spilled_keys[0], next(iter(chest.inmem))
    chest[spilled] = live[spilled] = "new, was spilled"
    chest[resident] = live[resident] = "new, was resident"
    del chest["k1"], live["k1"]
    assert chest.pop(("t", 1)) == live.pop(("t", 1))
    chest["k1"] = live["k1"] = "back again"
    for i in range(4):
        chest[f"n{i}"] = live[f"n{i}"] = f"new {i}"  # the budget makes these spill the others
    assert dict(chest.items()) == live
    return live


def test_work_after_a_flush_never_changes_the_flushed_files(tmp_path: Path) -> None:
    path = tmp_path / "c"
    chest = flushed_chest(path)
    before = snapshot(path)
    live = work_after_the_flush(chest)
    assert {name: data for name, data in snapshot(path).items() if name in before} == before
    assert chest.disk_bytes == sum(len(data) for name, data in snapshot(path).items() if name not in METADATA)
    assert chest._store.retained  # superseded files, kept for the manifest on disk
    assert dict(chest.items()) == live
    # The Chest is abandoned here as a killed process would leave it: the re-open is the flushed state.
    abandon(chest)
    again = reopen(path)
    assert dict(again.items()) == FLUSHED
    assert spill_names(path) == set(before) - METADATA


def test_the_next_flush_commits_the_new_state_and_removes_the_superseded_files(tmp_path: Path) -> None:
    path = tmp_path / "c"
    chest = flushed_chest(path)
    live = work_after_the_flush(chest)
    chest.flush()
    assert not chest._store.retained
    assert spill_names(path) == {os.path.basename(chest._store.filename(key)) for key in chest._store}
    assert chest.disk_bytes == sum(os.path.getsize(path / name) for name in spill_names(path))
    abandon(chest)  # as a kill would leave it
    assert dict(reopen(path).items()) == live
    # a third generation writes the overwritten keys under their first names again
    third = reopen(path)
    third["k0"] = "third"
    third.flush()
    abandon(third)
    assert "k0" in spill_names(path) and dict(reopen(path).items()) == {**live, "k0": "third"}


def test_a_commit_that_fails_after_the_rename_protects_the_renamed_manifests_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory fsync after the manifest's rename fails: flush() raises, and the manifest on disk
    is the new one, so the files it names must survive the work that follows (and a kill after it)."""
    path = tmp_path / "c"
    chest = flushed_chest(path)
    chest["k0"] = "second"
    chest["late"] = "second"

    def failing_fsync(directory: str) -> None:
        raise OSError(errno.EIO, "injected: the directory fsync failed")

    monkeypatch.setattr(spillkit.manifest, "_fsync_directory", failing_fsync)
    with pytest.raises(OSError, match="injected"):
        chest.flush()
    monkeypatch.undo()
    second = {**FLUSHED, "k0": "second", "late": "second"}
    assert dict(chest.items()) == second  # nothing lost in the live Chest
    for key in list(chest):
        chest[key] = "third"  # every file of either manifest is superseded
    del chest["k2"]
    abandon(chest)  # killed now
    assert dict(reopen(path).items()) == second


def test_superseded_files_count_against_available_disk_until_the_next_flush(tmp_path: Path) -> None:
    path = tmp_path / "c"
    big = b"x" * 1000
    chest = Chest(path=path, available_memory=500, sizeof=len, available_disk=1600, pack_threshold=0)
    chest["a"] = big  # larger than the budget: written straight to disk
    chest["b"] = b"small"
    chest.flush()
    on_disk = chest.disk_bytes
    del chest["a"]
    assert chest.disk_bytes == on_disk  # the flushed file stays until the next flush commits
    with pytest.raises(DiskQuotaExceeded):
        chest["a"] = b"y" * 1000
    assert dict(chest.items()) == {"b": b"small"}
    chest.flush()
    assert chest.disk_bytes < on_disk
    chest["a"] = b"y" * 1000
    assert dict(chest.items()) == {"a": b"y" * 1000, "b": b"small"}


def test_reopen_removes_what_a_killed_process_left_and_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "c"
    chest = flushed_chest(path)
    flushed_files = spill_names(path)
    chest["late"] = "written after the flush"
    chest["k0"] = "overwritten after the flush"
    for i in range(3):
        chest[f"n{i}"] = f"pushes the others out {i}"
    leftovers = spill_names(path) - flushed_files
    assert len(leftovers) == 3  # spill files that no manifest names: late, k0's new value, n0
    (path / ".tmp-999-1").write_bytes(b"half a spill file")
    (path / f"{MANIFEST_NAME}.tmp-999").write_bytes(b"half a manifest")
    foreign = {"notes.txt": b"the user's", "k9": b"named like a key, but not a spill file", "SPK": b"SPK\0"}
    for name, data in foreign.items():
        (path / name).write_bytes(data)
    (path / "sub").mkdir()
    del chest  # abandoned, as by a kill
    before = snapshot(path)
    again = Chest(path=path, available_memory=2.5 * UNIT, sizeof=unit_sizeof, pack_threshold=0)
    assert dict(again.items()) == FLUSHED
    kept = {
        *METADATA,
        *foreign,
        "sub",
        *(os.path.basename(again._store.filename(k)) for k in again),
    }
    assert set(os.listdir(path)) == kept
    assert not leftovers & kept
    assert {name: (path / name).read_bytes() for name in foreign} == foreign
    assert all(before[name] == (path / name).read_bytes() for name in kept - {"sub"})
