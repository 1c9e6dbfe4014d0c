"""Packed small values (PackedStore): round trips, file counts, damaged records, reopen, forks.

Every value goes through a real Chest or PackedStore on the real disk under
``tmp_path``; damage is done to the real segment files.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import pickle
import threading
import zlib
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import abandon, assert_disk_files, disk_files
from test_faults import TRIPPED, Tripwire

from spillkit import Chest, CorruptSpillFile, PickleCodec, SpillError
from spillkit.dirlock import LOCK_NAME
from spillkit.manifest import _HEADER as MANIFEST_HEADER
from spillkit.manifest import MANIFEST_NAME
from spillkit.security import KEY_FILE_NAME, sign
from spillkit.segfiles import is_segment_name
from spillkit.segments import PackedStore, PackedWrite
from spillkit.spillfile import encode_header
from spillkit.storage import PreparedWrite


def blob(seed: Hashable, size: int) -> bytes:
    """``size`` deterministic, incompressible bytes for ``seed``."""
    digest = hashlib.blake2b(repr(seed).encode()).digest()
    return (digest * (size // len(digest) + 1))[:size]


def on_disk(path: str | Path, **kwargs: Any) -> Chest:
    """A Chest whose every value goes straight to disk (a budget of 0)."""
    kwargs.setdefault("available_memory", 0)
    return Chest(path=path, **kwargs)


def assert_values(chest: Chest, expected: dict[Hashable, Any]) -> None:
    assert set(chest) == set(expected)
    for key, value in expected.items():
        got = chest[key]
        if isinstance(value, np.ndarray):
            assert isinstance(got, np.ndarray) and got.dtype == value.dtype and np.array_equal(got, value), key
        else:
            assert got == value, key


def segments_in(path: str | Path) -> list[str]:
    return sorted(name for name in os.listdir(path) if is_segment_name(name))


# ---- round trips ------------------------------------------------------------------------------


def test_small_values_are_packed_and_large_ones_get_a_file(tmp_path: Path) -> None:
    expected: dict[Hashable, Any] = {
        "int": 1,
        "text": "hello",
        ("tuple", 1): {"nested": [1, 2.5, None]},
        "small-array": np.arange(100, dtype="int32"),
        "small-bytes": blob("s", 1000),
        "large-array": np.random.default_rng(1).random(20_000),  # 160 kB: over the 64 KiB threshold
        "large-bytes": blob("l", 100_000),
    }
    chest = on_disk(tmp_path / "c")
    chest.update(expected)
    store = chest._store
    large = {"large-array", "large-bytes"}
    for key in expected:
        segment, offset = store.location(key)
        assert (segment is None) == (key in large), key
        if segment is not None:
            assert is_segment_name(segment) and offset % 1 == 0
    assert segments_in(chest.path) == [".spillkit-seg-000001"]  # five values, one file
    assert sorted(name for name in disk_files(chest.path) if not is_segment_name(name)) == sorted(large)
    assert_values(chest, expected)
    assert_disk_files(chest)
    chest.drop()


@pytest.mark.parametrize(
    ("pack_threshold", "packed"),
    [(0, set()), ("1 KiB", {"small"}), (10**6, {"small", "middle"})],
    ids=["off", "1KiB", "1MB"],
)
def test_pack_threshold_decides_by_record_size(tmp_path: Path, pack_threshold: Any, packed: set[str]) -> None:
    chest = on_disk(tmp_path / "c", pack_threshold=pack_threshold)
    expected = {"small": blob(1, 100), "middle": blob(2, 5000)}
    chest.update(expected)
    assert {key for key in expected if chest._store.location(key)[0] is not None} == packed
    assert bool(segments_in(chest.path)) == bool(packed)
    assert_values(chest, expected)
    assert_disk_files(chest)
    chest.drop()


def test_a_record_exactly_at_the_threshold_gets_its_own_file(tmp_path: Path) -> None:
    probe = PackedStore(str(tmp_path / "probe"), PickleCodec(), pack_threshold=0)
    os.makedirs(probe.path)
    size = probe.write("k", blob(0, 500))
    probe.close()
    for threshold, packed in [(size, False), (size + 1, True)]:
        path = tmp_path / f"t{threshold}"
        os.makedirs(path)
        store = PackedStore(str(path), PickleCodec(), pack_threshold=threshold)
        assert store.write("k", blob(0, 500)) == size
        assert (store.location("k")[0] is not None) is packed
        assert store.read("k") == blob(0, 500)
        store.close()


def test_the_original_chest_example_packs_what_it_spills() -> None:
    d = Chest(available_memory=40)
    try:
        d["one"], d["two"], d["three"] = 1, 2, 3
        assert dict(d.inmem) == {"three": 3}
        assert sorted(os.listdir(d.path)) == [LOCK_NAME, ".spillkit-seg-000001"]
        assert d["one"] == 1
        assert sorted(os.listdir(d.path)) == [LOCK_NAME, ".spillkit-seg-000001"]  # 'one' keeps its record
        assert d.stats.spills == 3
    finally:
        d.close()


def test_a_hundred_thousand_small_values_make_a_handful_of_files(tmp_path: Path) -> None:
    chest = Chest(path=tmp_path / "c", available_memory="1 MiB")
    chest._store.segment_bytes = 4 * 1024 * 1024
    n = 100_000
    for i in range(n):
        chest[i] = i.to_bytes(8, "little") * 12
    spilled = len(chest.engine.spilled_keys)
    assert spilled > 85_000
    files = disk_files(chest.path)
    assert len(files) <= 8, sorted(files)  # ~22 MB in 4 MiB segments, not 90 000 files
    assert_disk_files(chest)
    for i in range(0, n, 10):  # every tenth key survives
        for j in range(i + 1, min(i + 10, n)):
            del chest[j]
    assert len(disk_files(chest.path)) <= 3  # compaction gathered the survivors
    assert chest.disk_bytes < 0.3 * sum(files.values())
    for i in range(0, n, 970):
        assert chest[i] == i.to_bytes(8, "little") * 12
    assert_disk_files(chest)
    chest.drop()


# ---- damaged records ----------------------------------------------------------------------------


def _flip(at: Callable[[int, int], int]) -> Callable[..., None]:
    def damage(file: Path, victim: tuple[int, int], **_: Any) -> None:
        data = bytearray(file.read_bytes())
        data[at(*victim)] ^= 0x10
        file.write_bytes(bytes(data))

    return damage


def _put(file: Path, offset: int, record: bytes) -> None:
    with open(file, "r+b") as handle:
        handle.seek(offset)
        handle.write(record)


def _forged(file: Path, victim: tuple[int, int], **_: Any) -> None:
    """A well-formed record under the victim's name, signed without the key (an attacker's)."""
    codec = PickleCodec()
    frames = codec.encode(Tripwire("forged", bytes(range(256)) * 12))
    header, _, _ = encode_header("victim", frames, codec, b"not the secret".ljust(32))
    record = header + b"".join(bytes(f) for f in frames)
    assert len(record) == victim[1]
    _put(file, victim[0], record)


def _copy(source: str) -> Callable[..., None]:
    def damage(file: Path, victim: tuple[int, int], **places: tuple[int, int]) -> None:
        offset, length = places[source]
        assert length == victim[1]
        data = file.read_bytes()
        _put(file, victim[0], data[offset : offset + length])

    return damage


RECORD_DAMAGE: dict[str, tuple[Callable[..., None], str]] = {
    "bit-flip-magic": (_flip(lambda o, n: o), "not a spillkit spill file"),
    "bit-flip-crc": (_flip(lambda o, n: o + 16), "checksum mismatch"),
    "bit-flip-body": (_flip(lambda o, n: o + n // 2 + 3), "checksum mismatch"),
    "bit-flip-last-byte": (_flip(lambda o, n: o + n - 1), "checksum mismatch"),
    "segment-truncated": (lambda file, victim, **_: os.truncate(file, victim[0] + victim[1] // 2), "truncated"),
    "swapped-with-another-keys-record": (_copy("donor"), "belongs to 'donor_'"),
    "forged-without-the-key": (_forged, "authentication failed"),
    "older-record-of-the-same-key": (_copy("old"), "older or other version"),
}


@pytest.mark.parametrize("damage", list(RECORD_DAMAGE))
def test_a_damaged_record_raises_naming_the_key_and_nothing_else_is_lost(tmp_path: Path, damage: str) -> None:
    chest = on_disk(tmp_path / "c")
    store = chest._store
    expected: dict[Hashable, Any] = {f"k{i}": blob(i, 200 + 50 * i) for i in range(10)}
    chest.update(expected)
    chest["victim"] = Tripwire("victim", bytes(range(255, -1, -1)) * 12)  # soon an older record
    old = store.location("victim")[1], store.file_bytes("victim")
    # expected holds equal objects, not the ones stored: a stored object still alive is what a read returns
    chest["donor_"], expected["donor_"] = (Tripwire("donor_", bytes(range(256)) * 12) for _ in range(2))
    chest["victim"], expected["victim"] = (
        Tripwire("victim", bytes(range(256)) * 12) for _ in range(2)
    )  # last in its segment
    victim = store.location("victim")[1], store.file_bytes("victim")
    donor = store.location("donor_")[1], store.file_bytes("donor_")
    segment = Path(store.filename("victim"))
    assert segment == Path(store.filename("donor_")) and is_segment_name(segment.name)
    damage_it, reason = RECORD_DAMAGE[damage]
    TRIPPED.clear()
    damage_it(segment, victim, donor=donor, old=old)

    for attempt in range(2):  # not cached away: the second read fails the same way
        with pytest.raises(CorruptSpillFile) as info:
            chest["victim"]
        assert info.value.key == "victim"
        assert "'victim'" in str(info.value) and str(segment) in str(info.value)
        assert f"offset {victim[0]}" in str(info.value)
        assert reason in str(info.value)
        assert info.value.__suppress_context__ or info.value.__context__ is None  # (one error: not the RecordError too)
        assert chest.stats.load_failures == attempt + 1
    assert TRIPPED == []  # the damaged bytes never reached the unpickler
    assert "victim" in chest and len(chest) == len(expected)
    for key, value in expected.items():  # every other key reads correctly
        if key != "victim":
            assert chest[key] == value, key
    assert TRIPPED == ["donor_"]
    chest["victim"] = expected["victim"] = "replacement"  # the caller may overwrite or delete it
    assert_values(chest, expected)
    del chest["victim"]
    del expected["victim"]
    assert_values(chest, expected)
    assert_disk_files(chest)
    chest.drop()


# ---- flush and reopen -------------------------------------------------------------------------


def test_flush_and_reopen_give_back_packed_and_large_values(tmp_path: Path) -> None:
    path = tmp_path / "c"
    first = on_disk(path)
    first._store.segment_bytes = 8 * 1024  # several segments
    expected: dict[Hashable, Any] = {f"k{i}": blob(i, 100 + 37 * i) for i in range(60)}
    expected["large"] = blob("large", 200_000)
    expected[("tuple", 2)] = np.arange(50)
    first.update(expected)
    first.put("costly", "c", cost=2.5)
    expected["costly"] = "c"
    first.flush()
    abandon(first)  # as if the process died right after flush()
    second = on_disk(path)
    assert_values(second, expected)
    assert second.engine.given_cost("costly") == 2.5
    assert second.engine.nbytes("k3") == first.engine.nbytes("k3")
    assert_disk_files(second)
    # a second generation, closed properly
    for i in range(0, 60, 2):
        del second[f"k{i}"]
        del expected[f"k{i}"]
    for i in range(1, 60, 4):
        second[f"k{i}"] = expected[f"k{i}"] = blob(("new", i), 300)
    second["large"] = expected["large"] = blob("small now", 10)
    second.close()
    third = on_disk(path)
    assert_values(third, expected)
    assert_disk_files(third)  # nothing left of dead segments or of the replaced large file
    assert third._store.location("large")[0] is not None
    third.drop()


def test_a_manifest_from_before_packing_still_opens(tmp_path: Path) -> None:
    path = tmp_path / "c"
    chest = on_disk(path, pack_threshold=0)
    expected = {f"k{i}": blob(i, 100) for i in range(5)}
    chest.update(expected)
    chest.close()
    secret = (path / KEY_FILE_NAME).read_bytes()
    data = (path / MANIFEST_NAME).read_bytes()
    inline, pickled, places = pickle.loads(data[MANIFEST_HEADER.size :])  # version 3: plain keys inline
    assert not pickled and not places and all(len(row) == 8 for row in inline)
    body = pickle.dumps([row[:6] for row in inline])  # the rows an earlier spillkit wrote (version 2)
    header = MANIFEST_HEADER.pack(b"SPKMAN02", len(body), zlib.crc32(body), sign(secret, body))
    (path / MANIFEST_NAME).write_bytes(header + body)
    again = on_disk(path)
    assert_values(again, expected)
    again["new"] = expected["new"] = blob("n", 100)  # now packed, beside the old files
    again.close()
    last = on_disk(path)
    assert_values(last, expected)
    assert last._store.location("new")[0] is not None and last._store.location("k0")[0] is None
    last.drop()


def test_a_manifest_pointing_at_a_missing_segment_skips_those_keys_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "c"
    chest = on_disk(path)
    chest._store.segment_bytes = 1024
    expected = {f"k{i}": blob(i, 300) for i in range(12)}
    chest.update(expected)
    chest["large"] = expected["large"] = blob("large", 100_000)
    chest.close()
    gone = segments_in(path)[0]
    os.unlink(path / gone)
    with pytest.warns(Warning, match="missing"):
        again = on_disk(path)
    lost = {key for key in expected if key != "large" and key not in again}
    assert lost and all(key in expected for key in lost)
    assert_values(again, {k: v for k, v in expected.items() if k not in lost})
    again.drop()


# ---- the write-behind API ------------------------------------------------------------------------


def test_prepare_runs_in_another_thread_and_commit_or_discard_finish_it(tmp_path: Path) -> None:
    store = PackedStore(str(tmp_path), PickleCodec())
    names = {key: store.reserve(key) for key in ("small", "large", "dropped-small", "dropped-large")}
    values = {"small": blob(1, 100), "large": blob(2, 100_000), "dropped-small": 1, "dropped-large": blob(3, 10**5)}
    prepared: dict[str, PreparedWrite] = {}

    def work() -> None:
        for key, value in values.items():
            prepared[key] = store.prepare(key, value, names[key])

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert isinstance(prepared["small"], PackedWrite) and not isinstance(prepared["large"], PackedWrite)
    assert store.total_bytes == 0 and len(store) == 0  # nothing shared changed yet
    assert store.commit(prepared["small"]) == store.file_bytes("small")
    store.commit(prepared["large"])
    store.discard(prepared["dropped-small"])
    store.discard(prepared["dropped-large"])
    assert set(store) == {"small", "large"}
    assert store.read("small") == values["small"] and store.read("large") == values["large"]
    assert sorted(os.listdir(tmp_path)) == [".spillkit-seg-000001", "large"]  # no temporary file left
    assert store.reserve("dropped-small") == "dropped-small"  # the names were released
    store.close()


# ---- forks ------------------------------------------------------------------------------------

_INHERITED: dict[str, Chest] = {}


def _child_writes_and_deletes() -> None:
    chest = _INHERITED["chest"]
    for i in range(30):
        chest[f"child{i}"] = blob(("child", i), 500)
    for i in range(30):
        assert chest[f"child{i}"] == blob(("child", i), 500)
    for i in range(0, 30, 2):
        del chest[f"k{i}"]  # compaction in the child must not unlink the parent's segments
    os._exit(0)  # no finalizer, no cleanup: the parent owns the directory


def test_a_forked_child_never_writes_over_or_removes_its_parents_records(tmp_path: Path) -> None:
    chest = on_disk(tmp_path / "c")
    chest._store.segment_bytes = 4096
    expected = {f"k{i}": blob(i, 500) for i in range(30)}
    chest.update(expected)
    _INHERITED["chest"] = chest
    try:
        process = multiprocessing.get_context("fork").Process(target=_child_writes_and_deletes)
        process.start()
        process.join(60)
    finally:
        del _INHERITED["chest"]
    assert process.exitcode == 0
    for i in range(30, 60):  # the parent appends where the child may have appended too
        chest[f"k{i}"] = expected[f"k{i}"] = blob(i, 500)
    assert_values(chest, expected)
    chest.drop()


def test_a_closed_chest_refuses_reads_of_packed_values(tmp_path: Path) -> None:
    chest = on_disk(tmp_path / "c")
    chest["k"] = 1
    chest.close()
    with pytest.raises(SpillError):
        chest["k"]


def test_dask_workers_pass_pack_threshold_through(tmp_path: Path) -> None:
    from spillkit.distributed import worker_storage

    for given, used in [({}, 64 * 1024), ({"pack_threshold": 0}, 0), ({"pack_threshold": "1 MiB"}, 2**20)]:
        chest = worker_storage(str(tmp_path / str(used)), memory_limit="1 GiB", instrument_metrics=False, **given)
        assert chest._store.pack_threshold == used
        chest.drop()


@pytest.mark.parametrize("reopened", [False, True], ids=["flushed", "reopened"])
def test_a_deleted_file_goes_though_a_packed_record_has_its_name_in_other_case(tmp_path: Path, reopened: bool) -> None:
    # Before (helper-61): packed records' names entered the files' protected set (case-folded), so
    # "K0"'s file, deleted, stayed on disk and in disk_bytes for as long as "k0" was packed.
    path = tmp_path / "c"
    chest = Chest(path=path, available_memory=1000)
    chest["k0"] = "s" * 2000  # packed: a record named "k0"
    chest["K0"] = b"x" * 200_000  # its own file, named "K0"
    chest.flush()
    if reopened:
        chest.close()
        chest = Chest(path=path, available_memory=1000)
    assert "K0" in disk_files(path)
    del chest["K0"]
    chest.flush()
    assert "K0" not in disk_files(path)
    segments = sum(os.path.getsize(path / n) for n in os.listdir(path) if is_segment_name(n))
    assert chest.disk_bytes == segments
    assert chest["k0"] == "s" * 2000
    chest.close()
    chest = Chest(path=path, available_memory=1000)
    assert dict(chest.items()) == {"k0": "s" * 2000}
    chest.drop()
