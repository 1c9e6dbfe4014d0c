"""Compaction of packed segments, crash safety (a real SIGKILL), and disk faults during appends.

The last completed flush is the contract: whatever happens after it (appends,
compaction, a kill at any instruction), reopening gives exactly its keys and
values, and leaves no temporary or orphaned file behind.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import warnings
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import abandon, assert_disk_files, crash_copy, disk_files

import spillkit
from spillkit import Chest, SpillWarning
from spillkit.segfiles import is_segment_name

REPO = Path(spillkit.__file__).resolve().parents[1]


def blob(seed: Hashable, size: int) -> bytes:
    digest = repr(seed).encode().ljust(16, b".")
    return (digest * (size // len(digest) + 1))[:size]


def packed(path: str | Path, segment_bytes: int = 4096, **kwargs: Any) -> Chest:
    kwargs.setdefault("available_memory", 0)  # every value straight to disk
    chest = Chest(path=path, **kwargs)
    chest._store.segment_bytes = segment_bytes
    return chest


def assert_values(chest: Chest, expected: dict[Hashable, Any]) -> None:
    assert set(chest) == set(expected)
    for key, value in expected.items():
        assert chest[key] == value, key


def segments_in(path: str | Path) -> set[str]:
    return {name for name in os.listdir(path) if is_segment_name(name)}


def assert_compacted(chest: Chest, pinned_too: bool = False) -> None:
    """No sealed segment that no manifest needs (or any, right after a flush) is more than half dead."""
    store = chest._store
    for segment in store._segments.values():
        if segment is not store._active and (pinned_too or not segment.pinned):
            assert segment.dead <= store.compact_ratio * segment.size, segment.name


# ---- compaction keeps every value -----------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
def test_overwrites_deletes_and_compaction_keep_every_value(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    chest = packed(tmp_path / "c")
    expected: dict[Hashable, Any] = {}
    for step in range(2500):
        key = f"k{rng.randrange(200)}"
        if rng.random() < 0.7:
            chest[key] = expected[key] = blob((step, key), rng.randrange(10, 1500))
        elif key in expected:
            del chest[key]
            del expected[key]
        if step % 250 == 0:
            assert_values(chest, expected)
            assert_disk_files(chest)
            assert_compacted(chest)
        if step == 1200:
            chest.flush()  # pins segments for a while: compaction waits for the next flush
    assert chest._store.compactions > 10
    assert_values(chest, expected)
    assert_disk_files(chest)
    chest.flush()  # compacts what the first flush pinned, and removes what it no longer needs
    assert_disk_files(chest)
    assert_compacted(chest, pinned_too=True)
    live = sum(chest._store.file_bytes(key) for key in expected)
    assert chest.disk_bytes <= 2 * live + 2 * 4096  # at most half dead, but for the active segment
    chest.close()
    again = packed(tmp_path / "c")
    assert_values(again, expected)
    assert_disk_files(again)
    again.drop()


def test_a_segment_the_last_flush_needs_outlives_its_keys_until_the_next_flush(tmp_path: Path) -> None:
    path = tmp_path / "c"
    chest = packed(path)
    flushed = {f"k{i}": blob(i, 700) for i in range(30)}
    chest.update(flushed)
    chest.flush()
    before = segments_in(path)
    for key in list(flushed)[:25]:  # the first segments lose every record, the later ones most
        del chest[key]
    assert segments_in(path) == before  # the manifest still points into every one of them
    crashed = packed(Path(crash_copy(chest)))  # as if the process died now: the last flush is all there
    assert_values(crashed, flushed)
    expected = {key: flushed[key] for key in list(flushed)[25:]}
    chest.flush()
    assert len(segments_in(path)) < len(before)  # the new manifest no longer needs them
    assert_values(chest, expected)
    assert_disk_files(chest)
    assert_compacted(chest, pinned_too=True)
    abandon(chest)  # as if the process died now
    assert packed(path).keys() == expected.keys()


def test_segments_written_after_the_last_flush_are_removed_when_reopening(tmp_path: Path) -> None:
    path = tmp_path / "c"
    chest = packed(path)
    flushed = {f"k{i}": blob(i, 700) for i in range(10)}
    chest.update(flushed)
    chest.flush()
    for i in range(10, 40):
        chest[f"k{i}"] = blob(i, 700)  # new segments, which no manifest knows
    for i in range(5):
        del chest[f"k{i}"]
    assert len(segments_in(path)) > 4
    abandon(chest)  # as a crash would leave it
    again = packed(path)
    assert_values(again, flushed)
    assert_disk_files(again)  # only the segments the manifest points into are left
    again.drop()


# ---- SIGKILL at random points during compaction -------------------------------------------------------

GENERATIONS = """
import hashlib, random

KEYS = [f"key{i}" for i in range(1200)]


def value(g, key):
    digest = hashlib.blake2b(f"{g}:{key}".encode()).digest()
    return digest * (8 + digest[0] % 48)  # 512 B to 3.5 kB


def generation(g, mapping):
    rng = random.Random(g)
    for key in KEYS:
        r = rng.random()
        if g == 0 or r < 0.6:
            mapping[key] = value(g, key)
        elif r < 0.75 and key in mapping:
            del mapping[key]
"""

CHILD = (
    GENERATIONS
    + """
import os, sys
from spillkit import Chest, compaction

real_move = compaction.Compactor._move


def move(self, run):
    os.write(1, b"m")  # one mark per batch of records copied: the parent kills after a random one
    real_move(self, run)


compaction.Compactor._move = move
chest = Chest(path=sys.argv[1], available_memory="64 KiB")
chest._store.segment_bytes = 64 * 1024
g = 0
while True:
    generation(g, chest)
    chest.flush()
    os.write(1, f"F{g}\\n".encode())
    g += 1
"""
)


def _models(upto: int) -> list[dict[Hashable, bytes]]:
    namespace: dict[str, Any] = {}
    exec(GENERATIONS, namespace)
    models: list[dict[Hashable, bytes]] = []
    current: dict[Hashable, bytes] = {}
    for g in range(upto + 1):
        namespace["generation"](g, current)
        models.append(dict(current))
    return models


def _read_until(stream: Any, marks: int) -> bytes:
    """Read the child's output until ``marks`` compaction marks have come after its first flush."""
    seen = b""
    while True:
        chunk = os.read(stream.fileno(), 1)
        if not chunk:
            return seen
        seen += chunk
        if b"F0\n" in seen and seen.split(b"F0\n", 1)[1].count(b"m") >= marks:
            return seen


@pytest.mark.timeout(120)
@pytest.mark.parametrize("marks", [1, 7, 40, 150])
def test_sigkill_during_compaction_then_reopen_gives_the_last_flush(tmp_path: Path, marks: int) -> None:
    path = tmp_path / "c"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout is not None
        seen = _read_until(child.stdout, marks)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        seen += child.stdout.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL, seen[-200:]
    flushed = [int(line[1:]) for line in seen.replace(b"m", b"").split(b"\n") if line.startswith(b"F")]
    last = flushed[-1]
    models = _models(last + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no key of the manifest may be missing
        again = Chest(path=path, available_memory="64 KiB")
    contents = {key: again[key] for key in again}
    # the kill may land after the manifest was replaced and before "F" was printed
    assert contents in (models[last], models[last + 1]), f"killed after flush {last} and {marks} marks"
    assert not [name for name in os.listdir(path) if ".tmp-" in name]
    assert_disk_files(again)  # nothing orphaned: every segment on disk is one the manifest points into
    again.drop()


# ---- disk faults during appends and compaction ------------------------------------------------------


class FailingPwrite:
    """``os.pwrite`` that fails with ENOSPC from the ``fail_from``-th call on, while armed.

    ``partial`` writes half of the data first, as a device that fills up mid-write does.
    """

    def __init__(self, fail_from: int, partial: bool) -> None:
        self.real = os.pwrite
        self.fail_from = fail_from
        self.partial = partial
        self.armed = True
        self.calls = 0
        self.failures = 0

    def __call__(self, fd: int, data: Any, offset: int) -> int:
        self.calls += 1
        if self.armed and self.calls >= self.fail_from:
            self.failures += 1
            if self.partial:
                self.real(fd, memoryview(data)[: len(data) // 2], offset)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real(fd, data, offset)


@pytest.fixture
def failing_pwrite(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[FailingPwrite]:
    fail_from, partial = request.param
    fake = FailingPwrite(fail_from, partial)
    monkeypatch.setattr(os, "pwrite", fake)
    yield fake


@pytest.mark.parametrize(
    "failing_pwrite",
    [(1, False), (3, False), (1, True), (3, True)],
    ids=["1st-refused", "3rd-refused", "1st-half-written", "3rd-half-written"],
    indirect=True,
)
def test_enospc_during_an_append_keeps_the_value_in_memory_and_loses_nothing(
    tmp_path: Path, failing_pwrite: FailingPwrite
) -> None:
    chest = Chest(path=tmp_path / "c", available_memory=250, sizeof=lambda value: 100)
    expected = {}
    with pytest.warns(SpillWarning, match=os.strerror(errno.ENOSPC)):
        for i in range(8):
            chest[f"k{i}"] = expected[f"k{i}"] = blob(i, 300)
        assert_values(chest, expected)
    assert failing_pwrite.failures > 0
    assert chest.stats.spill_failures == failing_pwrite.failures
    assert chest.memory_bytes > chest.available_memory  # allowed while the disk fails
    assert_disk_files(chest)  # a half-written record was cut off again: sizes are exact
    failing_pwrite.armed = False
    chest["after"] = expected["after"] = blob("after", 300)
    assert chest.memory_bytes <= chest.available_memory
    assert_values(chest, expected)
    assert_disk_files(chest)
    chest.close()
    again = Chest(path=tmp_path / "c", available_memory=250, sizeof=lambda value: 100)
    assert_values(again, expected)
    again.drop()


@pytest.mark.parametrize("failing_pwrite", [(1, False), (1, True)], ids=["refused", "half-written"], indirect=True)
def test_enospc_during_compaction_leaves_every_record_where_it_was(
    tmp_path: Path, failing_pwrite: FailingPwrite
) -> None:
    failing_pwrite.armed = False
    chest = packed(tmp_path / "c")
    expected = {f"k{i}": blob(i, 600) for i in range(40)}
    chest.update(expected)
    failing_pwrite.armed = True
    with pytest.warns(SpillWarning, match="compaction failed"):
        for i in range(0, 40, 3):  # segments become mostly dead; compaction's copies fail
            for key in (f"k{i}", f"k{i + 1}"):
                if key in expected:
                    del chest[key]
                    del expected[key]
    assert failing_pwrite.failures > 0
    assert chest._store.compactions == 0
    assert_values(chest, expected)
    assert_disk_files(chest)
    failing_pwrite.armed = False
    del chest["k5"]  # the next change to a segment compacts it (k8 is left there)
    del expected["k5"]
    assert chest._store.compactions > 0
    assert_values(chest, expected)
    assert_disk_files(chest)
    chest.drop()


def test_a_failed_append_that_cannot_be_cut_off_retires_the_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chest = packed(tmp_path / "c", segment_bytes=1 << 20)
    expected = {f"k{i}": blob(i, 300) for i in range(5)}
    chest.update(expected)
    fake = FailingPwrite(1, partial=True)
    monkeypatch.setattr(os, "pwrite", fake)

    def no_truncate(fd: int, length: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "ftruncate", no_truncate)
    with pytest.raises(OSError):  # a budget of 0: the put writes straight to disk, and says it failed
        chest["bad"] = blob("bad", 300)
    assert "bad" not in chest
    assert_disk_files(chest)  # the half record counts as dead bytes of its segment
    monkeypatch.undo()
    first = set(disk_files(chest.path))
    chest["good"] = expected["good"] = blob("good", 300)
    assert chest._store.location("good")[0] not in first  # a new segment: the damaged one takes no more
    assert_values(chest, expected)
    assert_disk_files(chest)
    chest.drop()
