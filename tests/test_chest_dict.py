"""spillkit/chest_dict.py: the dict methods that MutableMapping composes, made whole for a shared Chest."""

from __future__ import annotations

import copy
import pickle
import sys
import threading
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any

import pytest

from spillkit import Chest, Event, SpillError

UNIT = 40


@pytest.fixture
def chest(tmp_path: Path) -> Iterator[Chest]:
    made = Chest(path=tmp_path / "c", available_memory=3 * UNIT, sizeof=lambda v: UNIT)
    yield made
    made.drop()


def test_setdefault_stores_one_default_when_two_threads_race(tmp_path: Path) -> None:
    # Before: a lookup, then a separate store; both threads missed, both stored, one's value was replaced.
    inside, first = threading.Event(), [True]

    def slow_sizeof(value: Any) -> int:
        if first[0]:
            first[0] = False
            inside.set()
            threading.Event().wait(0.3)  # the first store is slow (a big value's sizeof, say)
        return UNIT

    chest = Chest(available_memory=10 * UNIT, sizeof=slow_sizeof)
    got: dict[str, Any] = {}

    def run(name: str) -> None:
        got[name] = chest.setdefault("acc", [name])

    a = threading.Thread(target=run, args=("A",))
    a.start()
    assert inside.wait(10)
    b = threading.Thread(target=run, args=("B",))
    b.start()
    a.join()
    b.join()
    assert got["A"] is got["B"] is chest["acc"]  # one default, handed to both, as a dict would
    chest.drop()


def test_popitem_takes_the_last_key_stored_without_caching_it(chest: Chest) -> None:
    reference: dict[Hashable, Any] = {}
    # Equal lists, not the same ones: a spilled list the reference still held would be handed back
    # without a read (live-object reuse), and this test counts the reads.
    for key in ("first", "second", "third", "fourth", "fifth"):
        chest[key], reference[key] = [key], [key]
    chest["second"], reference["second"] = ["again"], ["again"]  # an overwrite keeps its place, as in a dict
    del chest["first"], reference["first"]
    chest["first"], reference["first"] = ["back"], ["back"]  # a re-insert goes last
    spills, popped = chest.stats.spills, chest.stats.popped
    while reference:
        resident = set(chest.inmem)
        assert chest.popitem() == reference.popitem()  # before: the first key, read into memory first
        assert set(chest.inmem) <= resident  # nothing read back into memory
    assert chest.stats.spills == spills and chest.stats.popped > popped  # spilled ones read for the caller only
    with pytest.raises(KeyError, match="empty"):
        chest.popitem()


def test_two_threads_draining_with_popitem_never_see_a_key_error_early() -> None:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: the race needs a switch between read and delete
    try:
        chest = Chest(available_memory=10**6)
        chest.update((i, i) for i in range(3000))
        popped: list[tuple[Hashable, Any]] = []
        early: list[int] = []

        def drain() -> None:
            while True:
                try:
                    popped.append(chest.popitem())
                except KeyError:
                    if len(chest):
                        early.append(len(chest))
                    else:
                        return

        threads = [threading.Thread(target=drain) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(previous)
    assert early == []  # before: KeyError for a key the other thread had taken, with keys left
    assert sorted(popped) == [(i, i) for i in range(3000)]
    chest.drop()


def test_items_and_values_skip_keys_deleted_while_they_run(chest: Chest) -> None:
    chest.update({f"k{i}": i for i in range(8)})  # most of them spilled
    seen = []
    for key, value in chest.items():
        seen.append((key, value))
        if key == "k1":
            del chest["k5"]  # before: KeyError('k5') when the iteration reached it
    assert seen == [(f"k{i}", i) for i in range(8) if i != 5]
    values = []
    for value in chest.values():
        values.append(value)
        if value == 2:
            chest.pop("k6")
    assert values == [0, 1, 2, 3, 4, 7]
    assert chest == {"k0": 0, "k1": 1, "k2": 2, "k3": 3, "k4": 4, "k7": 7}  # Mapping.__eq__ goes through items()
    assert 7 in chest.values() and 6 not in chest.values()

    class DeletesWhileCompared:  # stands for another thread deleting a key while ``in`` scans
        def __eq__(self, other: object) -> bool:
            if "k4" in chest:
                del chest["k4"]
            return False

    assert DeletesWhileCompared() not in chest.values()  # before: KeyError('k4')


def test_reversed_and_in_place_union_behave_as_for_a_dict(chest: Chest) -> None:
    reference: dict[Hashable, Any] = {"a": 1, "b": 2}
    chest.update(reference)
    chest |= {"c": 3, "a": 0}
    reference |= {"c": 3, "a": 0}
    assert dict(chest) == reference and list(chest) == list(reference)
    chest |= [("d", 4)]
    reference |= [("d", 4)]
    assert list(reversed(chest)) == list(reversed(reference))


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle"])
def test_a_chest_cannot_be_copied_into_a_second_handle_on_its_directory(chest: Chest, how: str) -> None:
    # Before: copy.copy gave a second Chest object sharing the engine, lock and directory of the first.
    chest["a"] = 1
    operation = {"copy": copy.copy, "deepcopy": copy.deepcopy, "pickle": pickle.dumps}[how]
    with pytest.raises(TypeError, match=r"cannot be copied or pickled.*dict\(chest\.items\(\)\)"):
        operation(chest)
    assert chest["a"] == 1


@pytest.mark.parametrize("off", [0, "0", "0 B"])
def test_write_behind_of_zero_bytes_is_off(tmp_path: Path, off: Any) -> None:
    chest = Chest(path=tmp_path / "c", write_behind=off)
    assert chest.engine._writer is None  # before: on, with a cap of no bytes in flight
    chest.drop()


@pytest.mark.parametrize("how", ["update", "data=", "items"])
def test_copying_a_chest_skips_a_key_deleted_meanwhile(tmp_path: Path, how: str) -> None:
    # Before (helper-110): Chest(data=chest) and update(chest) listed the keys, then read each one,
    # and raised KeyError for a key deleted in between. A listener stands in for another thread.
    source = Chest(path=tmp_path / "source", available_memory=10_000)
    for key in "abc":
        source[key] = key
    deleted: list[str] = []

    def delete_b(event: Event) -> None:
        if event.kind == "hit" and event.key == "a" and not deleted:
            deleted.append("b")
            del source["b"]

    source.add_listener(delete_b)
    if how == "data=":
        target = Chest(data=source, path=tmp_path / "target")
        got = dict(target.items())
        target.drop()
    elif how == "update":
        target = Chest(path=tmp_path / "target")
        target.update(source)
        got = dict(target.items())
        target.drop()
    else:
        got = dict(source.items())
    assert deleted == ["b"] and got == {"a": "a", "c": "c"}
    source.drop()


def test_views_are_reversible_as_a_dicts_are(tmp_path: Path) -> None:
    chest = Chest(path=tmp_path / "c", available_memory=100, sizeof=lambda value: 40)  # most values on disk
    reference: dict[str, list[Any]] = {}
    for i in range(6):
        chest[f"k{i}"] = reference[f"k{i}"] = [i]
    chest["k2"] = reference["k2"] = ["again"]  # an overwrite keeps its place, in both
    assert list(reversed(chest.keys())) == list(reversed(reference.keys()))
    assert list(reversed(chest.items())) == list(reversed(reference.items()))
    assert list(reversed(chest.values())) == list(reversed(reference.values()))
    chest.drop()


def test_popitem_on_a_closed_chest_says_it_is_closed(tmp_path: Path) -> None:
    chest = Chest()  # temporary: once closed it holds no key, and popitem said "empty" (helper-110)
    chest["k"] = 1
    chest.close()
    with pytest.raises(SpillError, match="closed"):
        chest.popitem()


class _Holder:
    """A value that can be weakly referenced, with something to change in place."""

    def __init__(self) -> None:
        self.items = [1]


def test_what_the_readme_says_a_chest_does_not_keep_from_a_dict(tmp_path: Path) -> None:
    # helper-124: these differences were undocumented, or documented wrongly ("the last key stored").
    chest = Chest(path=tmp_path / "c", available_memory=1)
    chest["a"], chest["b"] = 1, 2
    chest["a"] = 3  # an overwrite does not move the key: popitem takes the last inserted
    assert chest.popitem() == ("b", 2)
    shared = _Holder()
    chest["x"] = chest["y"] = shared
    del shared  # (nothing else holds it: the copies read back are new objects)
    x, y = chest["x"], chest["y"]
    assert x is not y
    x.items.append(2)
    chest["x"] = x
    assert chest["y"].items == [1]  # a dict would show the change through both keys
    chest.clear()
    chest["n"] = float("nan")
    assert not chest.__eq__(chest) and chest.__ne__(chest)  # (a dict of a NaN equals itself)
    assert ("n", chest["n"]) not in chest.items()
    assert not isinstance(chest, dict) and not hasattr(chest.keys(), "mapping")
    assert not hasattr(Chest, "fromkeys") and "path=" in repr(chest)
    nan = float("nan")
    chest[nan] = "v"
    chest.close()
    with Chest(path=tmp_path / "c") as again:
        assert nan not in again and len(again) == 2  # the NaN key read back is another NaN
        assert [again[k] for k in again if k != k] == ["v"]
