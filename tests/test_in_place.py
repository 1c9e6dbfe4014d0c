"""A value changed in place after a load or a flush is never lost (``DiskStore.holds``).

A Chest keeps a value's file after loading or flushing it, so that evicting it again
costs no write. Whoever holds the value may change it in place meanwhile
(``chest["k"].append(x)``, ``chest["a"][0] = 42``), as they may with a dict. Before
it drops the value for its file, the engine checks that the file is still the value
serialized; a changed value is written anew. Without the check, such a change was
silently undone by the next eviction (and missed by the next flush).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import spillkit.loadprints
from spillkit import Chest
from spillkit.loadprints import LoadPrints

STORAGE: dict[str, dict[str, Any]] = {
    "file per value": {"pack_threshold": 0},
    "packed": {},
    "mapped loads": {"pack_threshold": 0, "map_loads": 1},
    "write-behind": {"write_behind": True},
}


@pytest.fixture(params=list(STORAGE))
def storage(request: pytest.FixtureRequest) -> dict[str, Any]:
    return STORAGE[request.param]


def evict_everything(chest: Chest) -> None:
    for _ in range(10 * len(chest) + 10):
        if chest.evict() < 0:
            break
    chest.wait_for_writes()
    assert not chest.inmem


def test_a_loaded_list_changed_in_place_keeps_the_change(
    chest_factory: Callable[..., Chest], storage: dict[str, Any]
) -> None:
    chest = chest_factory(10**6, **storage)
    chest["l"], chest["other"] = [1, 2], [3]
    evict_everything(chest)
    chest["l"].append(99)  # loaded, then changed, and the caller keeps no reference
    evict_everything(chest)  # the first write of the list is out of date: it is written again
    assert chest["l"] == [1, 2, 99]
    assert chest["other"] == [3]


def test_a_loaded_array_changed_in_place_keeps_the_change(
    chest_factory: Callable[..., Chest], storage: dict[str, Any]
) -> None:
    chest = chest_factory("3 MiB", **storage)
    chest["a"], chest["b"] = np.zeros(2**18), np.ones(2**18)  # 2 MiB each: "a" is spilled
    chest.wait_for_writes()
    chest["a"][0] = 42.0  # loads "a" (a mapped array, with map_loads), evicts "b"
    chest["b"]  # loads "b", evicts "a": its file holds zeros
    chest.wait_for_writes()
    assert chest["a"][0] == 42.0
    assert chest["b"].sum() == 2**18


def test_an_unchanged_loaded_value_is_evicted_without_a_write(
    chest_factory: Callable[..., Chest], storage: dict[str, Any]
) -> None:
    # The check costs an encode, never a write: the file is reused when the value is unchanged.
    chest = chest_factory(10**6, **storage)
    chest["l"] = list(range(50))
    evict_everything(chest)
    spills = chest.stats.spills
    assert chest["l"] == list(range(50))
    evict_everything(chest)
    assert chest.stats.spills == spills
    assert chest.stats.evictions >= 1


class TaggedBytes(bytes):
    """Bytes with an instance dict: pickle writes its attributes, which can change in place."""


@pytest.mark.parametrize(
    "value",
    [b"x" * 100, "text", 12**40, 1.5, 2j, True, None, range(7), (1, ("a", b"b", (2.0, None)))],
    ids=["bytes", "str", "int", "float", "complex", "bool", "None", "range", "nested tuple"],
)
def test_an_immutable_loaded_value_is_evicted_without_encoding_it_again(
    chest_factory: Callable[..., Chest], storage: dict[str, Any], value: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Such a value cannot have changed since it was read (spillkit.frozen): its eviction asks the
    # store nothing, so it neither encodes the value again nor writes it.
    chest = chest_factory(10**6, **storage)
    chest["v"], chest["other"] = value, [0]
    evict_everything(chest)
    assert chest["v"] == value
    asked: list[object] = []
    real = spillkit.loadprints.still_encodes
    monkeypatch.setattr(spillkit.loadprints, "still_encodes", lambda *args: asked.append(args[0]) or real(*args))
    monkeypatch.setattr(LoadPrints, "check", lambda *args: asked.append(args[1]) or (False, None))
    spills = chest.stats.spills
    evict_everything(chest)
    assert asked == [] and chest.stats.spills == spills
    assert chest["v"] == value


def test_a_record_without_a_tag_is_written_again_even_for_an_immutable_value(
    chest_factory: Callable[..., Chest], monkeypatch: pytest.MonkeyPatch
) -> None:
    # helper-123: a record an older manifest named without its tag is healed (written again, signed) at the
    # next eviction of its loaded value; the immutable shortcut first kept such a record for good.
    chest = chest_factory(10**6, pack_threshold=0)
    chest["v"], chest["other"] = b"x" * 50, [0]
    evict_everything(chest)
    chest._store.inner._tags.pop("v")  # as a record adopted from an old manifest has none
    assert chest["v"] == b"x" * 50
    spills = chest.stats.spills
    evict_everything(chest)
    assert chest.stats.spills == spills + 1 and chest._store.tag("v") is not None
    assert chest["v"] == b"x" * 50


def test_a_tuple_nested_deeper_than_the_walk_is_checked_without_recursing_through_it(
    chest_factory: Callable[..., Chest],
) -> None:
    # helper-123: without the walk's depth bound, a deeply nested tuple raised RecursionError into the put
    # that evicted it ("raised while making room for 'b', which was not stored").
    chest = chest_factory(2500, sizeof=lambda value: 1000)
    deep: Any = 0
    for _ in range(sys.getrecursionlimit() // 2):
        deep = (deep,)
    chest["v"], chest["o"] = deep, [0]
    evict_everything(chest)
    assert chest["v"] == deep
    chest["a"], chest["b"] = [1], [2]  # the loaded tuple is evicted again
    assert "v" not in chest.inmem and chest["b"] == [2]


@pytest.mark.parametrize(
    ("make", "change", "expected"),
    [
        (lambda: TaggedBytes(b"b"), lambda value: setattr(value, "note", "changed"), "changed"),
        (lambda: (1, [2]), lambda value: value[1].append(3), [2, 3]),
        (lambda: (((((["deep"],),),),),), lambda value: value[0][0][0][0][0].append("er"), ["deep", "er"]),
        (lambda: bytearray(b"abc"), lambda value: value.__setitem__(0, 88), bytearray(b"Xbc")),
        (lambda: (1, bytearray(b"a")), lambda value: value[1].__setitem__(0, 88), bytearray(b"X")),
        (lambda: frozenset([_Note()]), lambda value: next(iter(value)).__setattr__("text", "changed"), "changed"),
    ],
    ids=[
        "bytes subclass",
        "tuple holding a list",
        "tuple nested past the walk's depth",
        "bytearray",
        "tuple holding a bytearray",
        "frozenset of a mutable object",
    ],
)
def test_a_value_that_only_looks_immutable_is_still_checked(
    chest_factory: Callable[..., Chest],
    storage: dict[str, Any],
    make: Callable[[], Any],
    change: Callable[[Any], None],
    expected: Any,
) -> None:
    chest = chest_factory(10**6, **storage)
    chest["v"], chest["other"] = make(), [0]
    evict_everything(chest)
    change(chest["v"])  # loaded, then changed in place
    evict_everything(chest)
    loaded = chest["v"]
    if isinstance(loaded, TaggedBytes):
        assert loaded.note == expected
    elif isinstance(loaded, bytearray):
        assert loaded == expected
    elif isinstance(loaded, frozenset):
        assert next(iter(loaded)).text == expected
    elif len(loaded) == 2:
        assert loaded[1] == expected
    else:
        assert loaded[0][0][0][0][0] == expected


class _Note:
    """Hashable by identity, with an attribute to change: a frozenset of these can change in place."""

    def __init__(self) -> None:
        self.text = "first"


def test_a_flushed_value_changed_in_place_is_flushed_again(tmp_path: Path, storage: dict[str, Any]) -> None:
    chest = Chest(path=tmp_path / "c", available_memory=10**6, **storage)
    chest["l"] = [1]
    chest.flush()
    chest["l"].append(2)  # resident, with a file from the flush
    chest.flush()
    chest.close()
    with Chest(path=tmp_path / "c") as again:
        assert again["l"] == [1, 2]


def test_a_value_that_no_longer_pickles_stays_in_memory(chest_factory: Callable[..., Chest]) -> None:
    # A loaded list that now holds something no codec can write: the check says "changed",
    # the write fails, and the value stays in memory (counted unspillable), not undone.
    chest = chest_factory(10**6, pack_threshold=0)
    chest["l"] = [1]
    evict_everything(chest)
    chest["l"].append(_Unpicklable())
    with pytest.warns(Warning, match="cannot be serialized"):
        chest.evict()
    assert len(chest["l"]) == 2 and chest.stats.unspillable == 1


class _Unpicklable:
    def __reduce__(self) -> Any:
        raise TypeError("not picklable, on purpose")


def test_a_value_that_pickles_otherwise_once_read_back_is_not_written_again(
    chest_factory: Callable[..., Chest], storage: dict[str, Any]
) -> None:
    # numpy pickles a non-contiguous array in-band the old way and the contiguous copy a load
    # returns another way: the first comparison differs, the one with the record read back does not.
    chest = chest_factory(10**6, **storage)
    chest["strided"] = np.arange(200.0)[::2]
    evict_everything(chest)
    spills = chest.stats.spills
    loaded = chest["strided"]
    assert loaded.flags.c_contiguous
    evict_everything(chest)
    assert chest.stats.spills == spills
    np.testing.assert_array_equal(chest["strided"], np.arange(200.0)[::2])


def test_without_the_check_a_change_in_place_is_undone(chest_factory: Callable[..., Chest]) -> None:
    # What check_in_place=False trades away: such a change is undone, as before the check existed.
    chest = chest_factory(10**6, pack_threshold=0, check_in_place=False)
    chest["l"], chest["other"] = [1, 2], [3]
    evict_everything(chest)
    chest["l"].append(99)
    evict_everything(chest)
    assert chest["l"] == [1, 2]
    assert chest.stats.evictions >= 1


class Box:
    def __init__(self, value: Any, pad: int = 0) -> None:
        self.value, self.pad = value, "p" * pad


def _set_list(obj: Any, text: str) -> None:
    obj[0] = text


def _set_dict(obj: Any, text: str) -> None:
    obj["value"] = text


def _set_bytes(obj: Any, text: str) -> None:
    obj[:] = text.encode()


def _set_box(obj: Any, text: str) -> None:
    obj.value = text


# How to make a value holding a text, change it in place, and read it: a class with weak references,
# and mutable builtins without them (which live-object reuse cannot follow: spillkit/liveobjects.py).
KINDS: dict[str, tuple[Callable[[str], Any], Callable[[Any, str], None], Callable[[Any], str]]] = {
    "object": (Box, _set_box, lambda obj: obj.value),
    "list": (lambda text: [text], _set_list, lambda obj: obj[0]),
    "dict": (lambda text: {"value": text}, _set_dict, lambda obj: obj["value"]),
    "bytearray": (lambda text: bytearray(text.encode()), _set_bytes, lambda obj: obj.decode()),
}


@pytest.mark.parametrize("kind", ["list", "dict", "bytearray"])
def test_a_builtin_without_weak_references_served_without_caching_is_a_copy_each_read(
    tmp_path: Path, kind: str
) -> None:
    # The limit README states: nothing can tell whether such a value is still held elsewhere, so a
    # read over the budget gives a new copy each time, and a change to an earlier copy is not the value's.
    make, change, text_of = KINDS[kind]
    chest = Chest(path=tmp_path / "c", available_memory=100, sizeof=lambda v: 500, pack_threshold=0)
    chest["k"] = make("v1")  # straight to disk
    first = chest["k"]
    change(first, "changed")
    again = chest["k"]
    assert again is not first and text_of(again) == "v1"
    chest.flush()
    assert text_of(chest["k"]) == "v1"
    chest.drop()


@pytest.mark.parametrize("why", ["no room can be made", "larger than the budget"])
def test_a_value_served_without_caching_stays_the_value_while_it_is_alive(tmp_path: Path, why: str) -> None:
    # A read that cannot cache what it returns (no room: the disk quota is full; or the value is
    # over the whole budget) forgot the object: the next read came from the old file, and the
    # flush never wrote the change made through the first read's object.
    make, change, text_of = KINDS["object"]
    if why == "no room can be made":
        chest = Chest(path=tmp_path / "c", available_memory=100, sizeof=lambda v: 60, available_disk=2000,
                      pack_threshold=0)  # fmt: skip
        x = make("v1")
        chest["k"] = x
        chest["o"] = Box("other", pad=5000)  # "k" spilled; "o" can never be written, so no room for "k"
        change(x, "changed")  # still alive: the value of "k" is this object
        first = chest["k"]
    else:
        chest = Chest(path=tmp_path / "c", available_memory=100, sizeof=lambda v: 500, pack_threshold=0)
        chest["k"] = make("v1")  # straight to disk
        first = chest["k"]
        change(first, "changed")
    assert "k" not in chest.inmem
    assert chest["k"] is first and text_of(chest["k"]) == "changed"  # before: a new copy of "v1"
    if why == "no room can be made":
        del chest["o"]
    chest.flush()
    del first
    if why == "no room can be made":
        del x
    assert text_of(chest["k"]) == "changed"  # read from the file the flush wrote
    chest.close()
    reopened = Chest(path=tmp_path / "c", available_memory=100, sizeof=lambda v: 60)
    assert text_of(reopened["k"]) == "changed"  # before: "v1", the flush had not seen the change
    reopened.drop()


def test_an_array_stored_over_the_budget_is_the_value_while_the_caller_holds_it(
    chest_factory: Callable[..., Chest], storage: dict[str, Any]
) -> None:
    # helper-96: a value over the budget is written straight to disk at its put, and was then forgotten:
    # the caller changed the array it stored, and get, pop and a flush gave the bytes of the put (a second
    # copy, too), where a dict gives the object, and a value spilled later is followed as it should be.
    chest = chest_factory("512 KiB", **storage)
    stored = np.zeros(2**17)  # 1 MiB
    chest["a"] = stored
    chest.wait_for_writes()
    assert "a" not in chest.inmem
    stored[0] = 42.0
    assert chest["a"] is stored and chest["a"][0] == 42.0  # before: a new copy, a[0] == 0
    chest.flush()  # writes the change (check_in_place)
    assert chest.pop("a") is stored
    chest["b"] = held = np.zeros(2**17)
    held[1] = 7.0
    chest.flush()  # while the caller holds it: the flush writes the change
    del held
    assert chest["b"][1] == 7.0  # read back from the file the flush wrote (before: 0.0)
