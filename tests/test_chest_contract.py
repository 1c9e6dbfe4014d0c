"""The mapping contract of ``Chest``, run with every registered policy, spilling and not."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import cachetools
import cachetools.keys
import numpy as np
import pytest
from helpers import abandon, disk_files

import spillkit
from spillkit import Chest, Event, SpillError
from spillkit.dirlock import LOCK_NAME

BUDGETS = {"spilling": 100, "roomy": 10**7}  # the default sizeof counts a large int as 28 bytes


def sample() -> dict[Hashable, Any]:
    """Twenty-odd items of mixed key and value types; values are distinct objects."""
    data: dict[Hashable, Any] = {f"k{i}": i * 1001 for i in range(20)}
    data[("tuple", 1)] = "a tuple's value"
    data[99] = [1, 2, 3]
    data["../outside"] = b"never leaves the directory"
    return data


def fill(chest: Chest, data: dict[Hashable, Any]) -> None:
    for key, value in data.items():
        chest[key] = value


spill_files = disk_files  # files of their own and shared segment files, with their sizes


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return type(a) is type(b) and a.dtype == b.dtype and np.array_equal(a, b)
    return type(a) is type(b) and bool(a == b)


@pytest.fixture(params=list(BUDGETS))
def budget(request: pytest.FixtureRequest) -> int:
    return BUDGETS[request.param]


@pytest.fixture
def chest(chest_factory: Callable[..., Chest], budget: int) -> Chest:
    return chest_factory(budget)


def assert_spilled_as_budgeted(chest: Chest, budget: int) -> None:
    """The small budget must really have spilled (else the test proves nothing); the large one never."""
    if budget == BUDGETS["spilling"]:
        assert chest.engine.spilled_keys
    else:
        assert not chest.engine.spilled_keys
        assert chest.stats.spills == 0


# ---- the mapping contract, every policy x every budget ------------------------------


class TestMappingContract:
    def test_set_and_get(self, chest: Chest, budget: int, check_accounting: Callable[[Chest], None]) -> None:
        data = sample()
        fill(chest, data)
        assert_spilled_as_budgeted(chest, budget)
        assert chest.memory_bytes <= budget
        for key, value in data.items():
            assert same(chest[key], value)
        assert len(chest) == len(data)
        check_accounting(chest)

    def test_get_method(self, chest: Chest) -> None:
        fill(chest, sample())
        assert chest.get("k3") == 3003
        assert chest.get("absent") is None
        assert chest.get("absent", "fallback") == "fallback"

    def test_overwrite(self, chest: Chest, budget: int, check_accounting: Callable[[Chest], None]) -> None:
        data = sample()
        fill(chest, data)
        spilled_before = set(chest.engine.spilled_keys)
        for key in data:
            chest[key] = ("new", key)
        assert len(chest) == len(data)
        for key in data:
            assert chest[key] == ("new", key)
        assert chest.memory_bytes <= budget
        if budget == BUDGETS["spilling"]:
            assert spilled_before  # overwrites of spilled keys were exercised
        check_accounting(chest)

    def test_delete(self, chest: Chest, check_accounting: Callable[[Chest], None]) -> None:
        data = sample()
        fill(chest, data)
        keys = list(data)
        gone, kept = keys[::2], keys[1::2]
        for key in gone:
            del chest[key]
        for key in gone:
            assert key not in chest
            with pytest.raises(KeyError):
                chest[key]
            with pytest.raises(KeyError):
                del chest[key]
        for key in kept:
            assert same(chest[key], data[key])
        assert len(chest) == len(kept)
        assert chest.stats.deletes == len(gone)
        check_accounting(chest)

    def test_pop(self, chest: Chest, check_accounting: Callable[[Chest], None]) -> None:
        data = sample()
        fill(chest, data)
        for key, value in data.items():
            assert same(chest.pop(key), value)
            assert key not in chest
        assert len(chest) == 0
        assert chest.pop("absent", "default") == "default"
        assert chest.pop("absent", None) is None
        with pytest.raises(KeyError):
            chest.pop("absent")
        check_accounting(chest)
        assert chest.disk_bytes == 0

    def test_popitem(self, chest: Chest, check_accounting: Callable[[Chest], None]) -> None:
        data = sample()
        fill(chest, data)
        popped: dict[Hashable, Any] = {}
        while chest:
            key, value = chest.popitem()
            assert key not in popped
            popped[key] = value
        assert popped.keys() == data.keys()
        assert all(same(popped[k], v) for k, v in data.items())
        with pytest.raises(KeyError):
            chest.popitem()
        check_accounting(chest)
        assert spill_files(chest.path) == {}

    def test_setdefault(self, chest: Chest) -> None:
        data = sample()
        fill(chest, data)
        for key, value in data.items():
            assert same(chest.setdefault(key, "ignored"), value)
        assert chest.setdefault("fresh", 12345) == 12345
        assert chest["fresh"] == 12345
        assert chest.setdefault("fresh", 0) == 12345
        assert len(chest) == len(data) + 1

    def test_update(self, chest: Chest) -> None:
        data = sample()
        chest.update(data)
        chest.update([("pair", 1111), ("k0", "replaced")])
        chest.update(keyword=2222)
        expected = {**data, "pair": 1111, "k0": "replaced", "keyword": 2222}
        assert chest == expected

    def test_iteration_keys_values_items(self, chest: Chest) -> None:
        data = sample()
        fill(chest, data)
        assert sorted(map(repr, chest)) == sorted(map(repr, data))
        assert sorted(map(repr, chest.keys())) == sorted(map(repr, data.keys()))
        assert sorted(map(repr, chest.values())) == sorted(map(repr, data.values()))
        assert dict(chest.items()) == data
        assert ("k5", 5005) in chest.items()
        assert ("k5", 0) not in chest.items()
        keys_view = chest.keys()
        assert "k5" in keys_view

    def test_iteration_is_a_snapshot(self, chest: Chest) -> None:
        data = sample()
        fill(chest, data)
        seen = []
        for key in chest:  # mutating while iterating must not break the iterator
            seen.append(key)
            chest.pop(key)
        assert len(seen) == len(data)
        assert len(chest) == 0

    def test_equality_against_dict(self, chest: Chest) -> None:
        data = sample()
        fill(chest, data)
        assert chest == data
        assert data == chest
        assert chest != {**data, "extra": 1}
        assert chest != {**data, "k0": -1}
        smaller = dict(data)
        del smaller["k0"]
        assert chest != smaller
        assert chest != list(data)

    def test_contains_and_len(self, chest: Chest) -> None:
        data = sample()
        assert len(chest) == 0
        assert "k0" not in chest
        for count, (key, value) in enumerate(data.items(), 1):
            chest[key] = value
            assert len(chest) == count
        for key in data:
            assert key in chest
        assert "absent" not in chest
        assert ("tuple", 2) not in chest

    def test_clear(self, chest: Chest, check_accounting: Callable[[Chest], None]) -> None:
        fill(chest, sample())
        chest.clear()
        assert len(chest) == 0
        assert list(chest) == []
        assert chest.memory_bytes == 0
        assert chest.disk_bytes == 0
        assert spill_files(chest.path) == {}
        check_accounting(chest)
        chest["after"] = 7777  # still usable
        assert chest["after"] == 7777

    def test_unhashable_key_raises_type_error(self, chest: Chest) -> None:
        fill(chest, sample())
        before = len(chest), chest.stats.snapshot(), spill_files(chest.path)
        bad: Any = ["a", "list"]
        with pytest.raises(TypeError):
            chest[bad] = 1
        with pytest.raises(TypeError):
            chest.put(bad, 1, cost=1.0)
        with pytest.raises(TypeError):
            chest[bad]
        with pytest.raises(TypeError):
            del chest[bad]
        with pytest.raises(TypeError):
            bad in chest  # noqa: B015
        with pytest.raises(TypeError):
            chest.pop(bad)
        assert (len(chest), chest.stats.snapshot(), spill_files(chest.path)) == before

    def test_missing_key_raises_key_error(self, chest: Chest) -> None:
        fill(chest, sample())
        misses = chest.stats.misses
        with pytest.raises(KeyError) as raised:
            chest["absent"]
        assert chest.stats.misses == misses + 1
        assert raised.value.__context__ is None  # as a dict's: before, a traceback chained the lookup's own KeyError
        with pytest.raises(KeyError):
            del chest["absent"]
        with pytest.raises(KeyError):
            chest.set_cost("absent", 1.0)
        assert len(chest) == len(sample())

    def test_in_len_iter_never_load_or_hit(self, chest: Chest, budget: int) -> None:
        data = sample()
        fill(chest, data)
        before = chest.stats.snapshot()
        resident = dict(chest.inmem)
        keys_view = chest.keys()
        for key in data:
            assert key in chest
            assert key in keys_view
        assert "absent" not in chest
        assert len(chest) == len(data)
        assert len(list(chest)) == len(data)
        assert len(list(chest.keys())) == len(data)
        assert bool(chest)
        assert chest.stats.snapshot() == before
        assert dict(chest.inmem) == resident
        assert_spilled_as_budgeted(chest, budget)


# ---- behaviour beyond a dict, every policy ------------------------------------------


def test_seed_example_from_the_original_chest() -> None:
    d = Chest(available_memory=40, pack_threshold=0)  # room for one Python integer; a file per value, as then
    try:
        d["one"] = 1
        d["two"] = 2
        d["three"] = 3
        assert d["three"] == 3
        assert sorted(d.keys()) == ["one", "three", "two"]
        assert dict(d.inmem) == {"three": 3}
        assert sorted(os.listdir(d.path)) == [LOCK_NAME, "one", "two"]
        assert d["one"] == 1
        assert dict(d.inmem) == {"one": 1}
        assert sorted(os.listdir(d.path)) == [LOCK_NAME, "one", "three", "two"]  # 'one' keeps its file
        assert d.stats.spills == 3
        assert d.stats.loads == 1
        assert d.stats.hits == 1
    finally:
        d.close()


def test_value_larger_than_budget_goes_straight_to_disk(
    chest_factory: Callable[..., Chest], check_accounting: Callable[[Chest], None]
) -> None:
    chest = chest_factory(1000, sizeof=len)
    small, big = b"s" * 100, b"b" * 5000
    chest["small"] = small
    chest["big"] = big
    assert "big" not in chest.inmem
    assert "small" in chest.inmem  # nothing had to make room for it
    assert "big" in chest._store
    assert chest.stats.direct_writes == 1
    assert chest.stats.spills == 0
    assert chest.memory_bytes == 100
    check_accounting(chest)

    assert chest["big"] == big
    assert chest.stats.loads == 1
    assert "big" not in chest.inmem  # served, never cached
    assert "small" in chest.inmem

    chest["small"] = b"S" * 2000  # an overwrite too large for memory leaves memory
    assert chest.inmem == {}
    assert chest.memory_bytes == 0
    assert chest["small"] == b"S" * 2000
    check_accounting(chest)


def test_loaded_value_keeps_its_file(
    chest_factory: Callable[..., Chest], check_accounting: Callable[[Chest], None]
) -> None:
    chest = chest_factory(100, sizeof=len)  # one 60-byte value fits at a time
    kinds: list[tuple[str, Hashable]] = []
    chest.add_listener(lambda event: kinds.append((event.kind, event.key)))
    chest["a"] = b"a" * 60
    chest["b"] = b"b" * 60
    assert chest.stats.spills == 1
    written = chest.stats.spill_bytes
    assert written == chest._store.file_bytes("a")

    assert chest["a"] == b"a" * 60  # loads a, spills b
    assert chest.stats.spills == 2
    assert "a" in chest.inmem and "a" in chest._store
    written = chest.stats.spill_bytes

    assert chest["b"] == b"b" * 60  # loads b; a leaves memory without a write
    assert chest.stats.spill_bytes == written
    assert chest.stats.spills == 2
    assert chest.stats.evictions == 1
    assert ("evict", "a") in kinds
    check_accounting(chest)

    chest["b"] = b"B" * 60  # a new value: the stale file must go
    assert "b" not in chest._store
    assert chest["a"] == b"a" * 60
    assert chest["b"] == b"B" * 60
    check_accounting(chest)


def test_same_object_under_two_keys_counted_once(
    chest_factory: Callable[..., Chest], check_accounting: Callable[[Chest], None]
) -> None:
    chest = chest_factory(150, sizeof=len)
    shared = bytes(100)
    chest["a"] = shared
    chest["b"] = shared
    assert set(chest.inmem) == {"a", "b"}
    assert chest.memory_bytes == 100
    check_accounting(chest)

    chest["c"] = b"c" * 60  # 160 > 150: both holders of the shared object must leave
    assert chest.memory_bytes <= 150
    check_accounting(chest)
    assert chest["a"] == shared and chest["b"] == shared and chest["c"] == b"c" * 60
    check_accounting(chest)
    for key in ["a", "b", "c"]:
        del chest[key]
    assert chest.memory_bytes == 0
    check_accounting(chest)


def test_same_object_deleted_under_one_key_stays_counted(
    chest_factory: Callable[..., Chest], check_accounting: Callable[[Chest], None]
) -> None:
    chest = chest_factory(1000, sizeof=len)
    shared = bytes(100)
    chest["a"] = shared
    chest["b"] = shared
    del chest["a"]
    assert chest.memory_bytes == 100
    chest["b"] = shared  # re-assigning the same object
    assert chest.memory_bytes == 100
    del chest["b"]
    assert chest.memory_bytes == 0
    check_accounting(chest)


@pytest.mark.parametrize(
    ("given", "expected"),
    [("512 MiB", 512 * 2**20), ("1 GB", 10**9), ("1.5 KiB", 1536), ("100", 100), (2048, 2048), (1e6, 10**6)],
)
def test_available_memory_accepts_strings_and_numbers(tmp_path: Path, given: int | float | str, expected: int) -> None:
    with Chest(path=tmp_path / "c", available_memory=given) as chest:
        assert chest.available_memory == expected


@pytest.mark.parametrize("given", ["12 parsecs", "lots", -1])
def test_available_memory_rejects_nonsense(tmp_path: Path, given: int | str) -> None:
    with pytest.raises(ValueError):
        Chest(path=tmp_path / "c", available_memory=given)


def test_data_argument(chest_factory: Callable[..., Chest], check_accounting: Callable[[Chest], None]) -> None:
    data = sample()
    chest = chest_factory(BUDGETS["spilling"], data=data)
    assert chest == data
    assert chest.engine.spilled_keys
    check_accounting(chest)


def test_deferred_lets_memory_exceed_budget_until_settle(
    chest_factory: Callable[..., Chest], check_accounting: Callable[[Chest], None]
) -> None:
    chest = chest_factory(100, sizeof=len)
    values = {f"v{i}": bytes([i]) * 50 for i in range(5)}
    with chest.deferred():
        for key, value in values.items():
            chest[key] = value
        assert chest.memory_bytes == 250
        assert chest.stats.spills == 0
        assert chest.stats.spill_bytes == 0
        check_accounting(chest)
    assert chest.memory_bytes <= 100
    assert chest.stats.spills == 3
    assert chest == values
    check_accounting(chest)


def test_settle_inside_deferred(chest_factory: Callable[..., Chest]) -> None:
    chest = chest_factory(100, sizeof=len)
    with chest.deferred():
        for i in range(4):
            chest[f"v{i}"] = bytes([i]) * 50
        chest.settle()
        assert chest.memory_bytes <= 100
        chest["late"] = b"x" * 50  # still deferred after an explicit settle
        assert chest.memory_bytes > 100
    assert chest.memory_bytes <= 100


def test_values_deleted_inside_deferred_are_never_written(
    chest_factory: Callable[..., Chest], check_accounting: Callable[[Chest], None]
) -> None:
    chest = chest_factory(100, sizeof=len)
    with chest.deferred():
        for i in range(5):
            chest[f"v{i}"] = bytes([i]) * 50
        del chest["v0"]
        del chest["v1"]
        assert chest.pop("v2") == bytes([2]) * 50
        del chest["v3"]
    assert chest.stats.spills == 0
    assert chest.stats.spill_bytes == 0
    assert spill_files(chest.path) == {}
    assert chest == {"v4": bytes([4]) * 50}
    check_accounting(chest)


def test_costs_order_cost_aware(tmp_path: Path) -> None:
    spilled: list[Hashable] = []

    def record(event: Event) -> None:
        if event.kind in ("spill", "evict"):
            spilled.append(event.key)

    with Chest(path=tmp_path / "c", policy="cost", sizeof=lambda v: 1, available_memory=3) as chest:
        chest.add_listener(record)
        chest.put("dear", "dear value", cost=5.0)
        chest.put("cheap", "cheap value", cost=0.001)
        chest.put("mid", "mid value", cost=1.0)
        chest.put("new", "new value", cost=2.0)
        assert spilled == ["cheap"]
        chest.set_cost("dear", 1e-6)
        assert chest.engine.given_cost("dear") == 1e-6
        chest.put("newer", "newer value", cost=2.0)
        assert spilled == ["cheap", "dear"]
        chest["plain"] = "no cost given"  # the estimated reload time, far below 1 s
        assert chest.engine.given_cost("plain") is None
        chest["another"] = "no cost given either"
        assert spilled == ["cheap", "dear", "mid", "plain"]
        chest.set_cost("cheap", 9.0)  # a spilled key keeps its new cost for later
        assert chest.engine.given_cost("cheap") == 9.0
        assert chest["cheap"] == "cheap value"


def test_memoize_decorator(chest_factory: Callable[..., Chest]) -> None:
    chest = chest_factory(BUDGETS["spilling"])
    calls: list[int] = []

    @spillkit.memoize(chest)
    def slow(x: int) -> int:
        calls.append(x)
        time.sleep(0.002)
        return x * 1001

    assert [slow(i) for i in range(10)] == [i * 1001 for i in range(10)]
    assert [slow(i) for i in range(10)] == [i * 1001 for i in range(10)]
    assert calls == list(range(10))
    assert chest.stats.hits + chest.stats.loads == 10
    assert chest.engine.spilled_keys  # some results were served from disk
    for i in range(10):
        cost = chest.engine.given_cost(cachetools.keys.hashkey(i))
        assert cost is not None and cost >= 0.001


@pytest.mark.parametrize("locked", [False, True], ids=["plain", "locked"])
def test_cachetools_cached_over_a_chest(chest_factory: Callable[..., Chest], locked: bool) -> None:
    chest = chest_factory(BUDGETS["spilling"])
    calls: list[int] = []

    def square(x: int) -> int:
        calls.append(x)
        return x * x * 1001

    lock = threading.Lock() if locked else None
    cached = cachetools.cached(chest, lock=lock)(square)
    assert [cached(i) for i in range(10)] == [i * i * 1001 for i in range(10)]
    assert [cached(i) for i in range(10)] == [i * i * 1001 for i in range(10)]
    assert calls == list(range(10))
    assert len(chest) == 10
    assert chest.engine.spilled_keys
    assert chest.engine.given_cost(cachetools.keys.hashkey(3)) is None


def test_flush_then_reopen(tmp_path: Path, policy_name: str) -> None:
    path = tmp_path / "persist"
    data: dict[Hashable, Any] = {
        "plain": 1001,
        ("tuple", 2): "tuple key",
        (1, (2, 3)): [4, 5],
        42: b"int key",
        "../escape": "stays inside",
        "Case": "upper",
        "case": "lower",
        "array": np.arange(1000),
    }
    first = Chest(path=path, available_memory=200, policy=policy_name)
    first.update(data)
    first.put("costly", 2002, cost=2.5)
    assert first.engine.spilled_keys and first.inmem
    first.flush()
    # ``first`` is abandoned without close, as if the process died right after flush().
    abandon(first)
    second = Chest(path=path, available_memory=200, policy=policy_name)
    try:
        assert set(second) == {*data, "costly"}
        assert second.inmem == {}
        for key, value in data.items():
            assert same(second[key], value)
            assert second.engine.nbytes(key) == first.engine.nbytes(key)
        assert second["costly"] == 2002
        assert second.engine.given_cost("costly") == 2.5
        assert second.engine.given_cost("plain") is None
        assert second.disk_bytes == sum(spill_files(path).values())
        assert not (tmp_path / "escape").exists()
    finally:
        second.close()


def test_close_then_reopen(tmp_path: Path, policy_name: str) -> None:
    path = tmp_path / "persist"
    data = sample()
    with Chest(path=path, available_memory=BUDGETS["spilling"], policy=policy_name) as chest:
        chest.update(data)
        chest.flush()
        chest["after flush"] = 3003  # close flushes again
        del chest["k0"]
    with pytest.raises(SpillError):
        chest["x"] = 1
    chest.close()  # idempotent
    expected = {**data, "after flush": 3003}
    del expected["k0"]
    with Chest(path=path, available_memory=BUDGETS["spilling"], policy=policy_name) as again:
        assert again == expected
    assert os.path.isdir(path)  # a Chest with a path of its own keeps its directory


def test_close_removes_a_temporary_directory() -> None:
    chest = Chest(available_memory=BUDGETS["spilling"], data=sample())
    path = chest.path
    assert os.path.isdir(path) and spill_files(path)
    chest.close()
    assert not os.path.exists(path)
    chest.close()  # idempotent
    with pytest.raises(SpillError):
        chest["x"] = 1


def test_context_manager_on_a_temporary_chest() -> None:
    with Chest(available_memory=BUDGETS["spilling"]) as chest:
        fill(chest, sample())
        path = chest.path
        assert chest == sample()
        assert os.path.isdir(path)
    assert not os.path.exists(path)


def test_slow_is_a_view_of_the_values_out_of_memory(tmp_path: Path) -> None:
    # dask.distributed's worker metrics count len(data.slow) tasks as on disk.
    chest = Chest(path=tmp_path / "c", available_memory=250, sizeof=lambda v: 100)
    chest.update({k: [k] for k in "abcde"})
    slow = chest.slow
    assert len(slow) == 3 and set(slow) == set("abcde") - set(chest.inmem)
    key = next(iter(slow))
    assert slow[key] == [key]
    resident = next(iter(chest.inmem))
    with pytest.raises(KeyError):
        slow[resident]
    with pytest.raises(KeyError):
        slow["absent"]
    chest.close()
