"""spillkit/loadprints.py: the in-place check of a value loaded from a compressed record, without compressing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

pytest.importorskip("lz4")
pytest.importorskip("zstandard")

import spillkit.bodymac
from spillkit import Chest
from spillkit.compression import CompressedCodec
from spillkit.loadprints import LoadPrints

KiB = 1 << 10

STORAGE: dict[str, Callable[[], dict[str, Any]]] = {
    "lz4 files": lambda: {"compression": "lz4", "pack_threshold": 0},
    "zstd files": lambda: {"compression": "zstd", "pack_threshold": 0},
    "lz4 mapped loads": lambda: {"compression": "lz4", "pack_threshold": 0, "map_loads": 1},
    "lz4 packed": lambda: {"compression": CompressedCodec(None, "lz4", min_size=KiB), "pack_threshold": "1 MiB"},
    "lz4 write-behind": lambda: {"compression": "lz4", "pack_threshold": 0, "write_behind": True},
}


@pytest.fixture(params=list(STORAGE))
def storage(request: pytest.FixtureRequest) -> dict[str, Any]:
    return STORAGE[request.param]()


def compressible(seed: int) -> np.ndarray:
    return np.arange(32 * KiB, dtype=np.float64) % 7 + seed  # 256 KiB: lz4 and zstd shrink it


def two_values(make: Callable[..., Chest], storage: dict[str, Any]) -> Chest:
    """A Chest with room for one of "a" and "b": each load evicts the other. Both have been written."""
    chest = make(300 * KiB, **storage)
    chest["a"], chest["b"] = compressible(0), compressible(1)  # "a" spilled
    chest.wait_for_writes()  # (write-behind: or the next read would find "a" still in memory, its write in flight)
    chest["a"]  # loaded; "b" written
    chest.wait_for_writes()
    assert set(chest.inmem) == {"a"} and chest.stats.spills == 2
    return chest


def prints(chest: Chest) -> LoadPrints:
    return chest._store.prints


@pytest.fixture
def compressions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the bytes every CompressedCodec compresses (the real compressor runs)."""
    counted: list[int] = []
    real = CompressedCodec._compress

    def counting(self: CompressedCodec, data: memoryview) -> bytes:
        counted.append(len(data))
        return real(self, data)

    monkeypatch.setattr(CompressedCodec, "_compress", counting)
    return counted


def test_an_unchanged_loaded_value_is_evicted_without_compressing_or_writing(
    chest_factory: Callable[..., Chest], storage: dict[str, Any], compressions: list[int]
) -> None:
    chest = two_values(chest_factory, storage)
    compressions.clear()
    for key in ("b", "a", "b", "a"):  # each load evicts the other value, loaded and unchanged
        np.testing.assert_array_equal(chest[key], compressible(0 if key == "a" else 1))
    assert chest.stats.spills == 2 and chest.stats.evictions >= 4
    assert compressions == []  # before loadprints, each of these evictions compressed 256 KiB again
    assert len(prints(chest)) == 2


def test_a_loaded_value_changed_in_place_is_written_again(
    chest_factory: Callable[..., Chest], storage: dict[str, Any]
) -> None:
    chest = two_values(chest_factory, storage)
    chest["a"][0] = 42.0  # the loaded array itself: nobody writes it back but the Chest
    chest["b"]  # evicts "a": its record holds the value before the change
    chest.wait_for_writes()
    assert chest.stats.spills == 3
    assert chest["a"][0] == 42.0
    np.testing.assert_array_equal(chest["a"][1:], compressible(0)[1:])
    np.testing.assert_array_equal(chest["b"], compressible(1))


def test_a_change_that_puts_the_same_bytes_back_is_no_change(chest_factory: Callable[..., Chest]) -> None:
    chest = two_values(chest_factory, {"compression": "lz4", "pack_threshold": 0})
    value = chest["a"]
    value[0] = 42.0
    value[0] = 0.0  # back to what the record holds
    chest["b"]
    assert chest.stats.spills == 2
    np.testing.assert_array_equal(chest["a"], compressible(0))


def test_deleting_or_clearing_forgets_the_digests(chest_factory: Callable[..., Chest], storage: dict[str, Any]) -> None:
    chest = two_values(chest_factory, storage)
    chest["b"]
    assert len(prints(chest)) == 2
    del chest["a"]
    assert len(prints(chest)) == 1
    chest.clear()
    assert len(prints(chest)) == 0


def test_a_digest_of_an_older_record_is_not_trusted(chest_factory: Callable[..., Chest]) -> None:
    # The key's record changed since its value was loaded: the digest says nothing about the new one.
    chest = two_values(chest_factory, {"compression": "lz4", "pack_threshold": 0})
    store, entry = chest._store, prints(chest)._prints["a"]
    assert entry[0] == store.tag("a")
    assert prints(chest).check("a", bytes(32), chest.inmem["a"]) == (False, None)  # another tag
    assert "a" not in prints(chest)._prints
    assert store.holds("a", chest.inmem["a"])  # the usual check, compressing again, still answers


def test_a_value_that_encodes_otherwise_is_checked_the_usual_way_once_then_by_digest(
    chest_factory: Callable[..., Chest], compressions: list[int]
) -> None:
    # numpy pickles a non-contiguous array in-band and its contiguous copy (what a load returns) out of
    # band: the digests differ, so the usual check answers (reading the record back: the same value) and
    # its answer is remembered; later copies read from that record then match without compressing.
    def strided() -> np.ndarray:
        return (np.arange(64 * KiB, dtype=np.float64) % 7)[::2]

    chest = chest_factory(300 * KiB, compression="lz4", pack_threshold=0)
    chest["s"], chest["b"] = strided(), compressible(1)  # held by the Chest alone: reads load it
    chest["s"]
    chest["b"]  # "s" evicted: the usual check, not a write
    assert chest.stats.spills == 2 and compressions
    compressions.clear()
    for key in ("s", "b", "s", "b"):
        chest[key]
    assert chest.stats.spills == 2 and compressions == []
    np.testing.assert_array_equal(chest["s"], strided())


def test_a_set_whose_order_changes_at_each_load_is_not_written_again(
    chest_factory: Callable[..., Chest], compressions: list[int]
) -> None:
    # helper-94: a set of strings unpickles in another order each time, so its encoding never equals the
    # record's frames; answering "changed" wrote it at every eviction, where the usual check had not.
    words = {f"word-{i}" for i in range(30_000)}
    chest = chest_factory(10**6, compression="lz4", pack_threshold=0, sizeof=lambda value: 600_000)
    chest["w"], chest["other"] = set(words), {"other"}
    for key in ("w", "other") * 5:
        chest[key]
    assert chest.stats.spills == 2
    assert chest["w"] == words


def test_records_with_nothing_compressed_keep_the_usual_check(chest_factory: Callable[..., Chest]) -> None:
    chest = chest_factory(300 * KiB, compression="lz4", pack_threshold=0)
    rng = np.random.default_rng(0)
    chest["a"], chest["b"] = rng.random(32 * KiB), rng.random(32 * KiB)  # incompressible: stored raw
    chest["a"]
    chest["b"]
    assert len(prints(chest)) == 0 and chest.stats.spills == 2


def test_without_the_digest_library_the_usual_check_runs(
    chest_factory: Callable[..., Chest], monkeypatch: pytest.MonkeyPatch, compressions: list[int]
) -> None:
    monkeypatch.setattr(spillkit.bodymac, "AVAILABLE", False)
    chest = two_values(chest_factory, {"compression": "lz4", "pack_threshold": 0})
    compressions.clear()
    chest["b"]
    assert len(prints(chest)) == 0 and chest.stats.spills == 2
    assert compressions  # "a" compressed again to compare


def test_no_digest_is_kept_without_the_in_place_check(chest_factory: Callable[..., Chest]) -> None:
    chest = two_values(chest_factory, {"compression": "lz4", "pack_threshold": 0, "check_in_place": False})
    chest["b"]
    assert len(prints(chest)) == 0


class Tagged(CompressedCodec):
    """A CompressedCodec whose decode does more: its loads must go through it."""

    def decode(self, data: memoryview) -> Any:
        return ("tagged", super().decode(data))


def test_a_subclass_that_decodes_its_own_way_is_not_bypassed(chest_factory: Callable[..., Chest]) -> None:
    chest = chest_factory(300 * KiB, compression=Tagged(None, "lz4"), pack_threshold=0)
    chest["a"], chest["b"] = compressible(0), compressible(1)
    loaded = chest["a"]
    assert loaded[0] == "tagged"
    np.testing.assert_array_equal(loaded[1], compressible(0))
    assert len(prints(chest)) == 0


def test_a_key_deleted_while_its_record_is_read_without_the_lock_leaves_no_digest(
    chest_factory: Callable[..., Chest], monkeypatch: pytest.MonkeyPatch
) -> None:
    # helper-94: the read's digest was kept after the delete had forgotten the key's: one entry, and
    # its key object, kept for the life of the store.
    import spillkit.filereads

    chest = chest_factory(300 * KiB, compression="lz4", pack_threshold=0)
    chest["a"], chest["b"] = compressible(0), compressible(1)  # "a" spilled
    reading, deleted = threading.Event(), threading.Event()
    real = spillkit.filereads.open_record

    def slow_open_record(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "reader":
            reading.set()
            assert deleted.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(spillkit.filereads, "open_record", slow_open_record)
    got: list[Any] = []
    reader = threading.Thread(target=lambda: got.append(chest.get("a")), name="reader")
    reader.start()
    assert reading.wait(60)
    del chest["a"]  # while the read, without the lock, checks the record
    deleted.set()
    reader.join(60)
    assert not reader.is_alive() and len(got) == 1
    assert "a" not in chest and len(prints(chest)) == 0
