"""A policy object serves one open Chest at a time: it is free again once its Chest is closed or
dropped, or when the constructor that was given it raised (review finding; these failed before)."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
from helpers import FailsOnBad

from spillkit import LRU, Chest, SpillError

UNIT = 100


def sizeof(value: Any) -> int:
    """A value holding a lock weighs more than any budget here (it must go to disk, and cannot)."""
    return 100 * UNIT if isinstance(value, list) and value and isinstance(value[0], type(threading.Lock())) else UNIT


def serves_alone(policy: LRU, path: Path) -> Chest:
    """A new Chest with ``policy``, checked to work with the policy ranking its keys only, in LRU order."""
    assert len(policy) == 0
    chest = Chest(path=path, available_memory=2 * UNIT, sizeof=sizeof, policy=policy)
    chest.update({"x": [1], "y": [2]})
    chest["x"]  # y is now the least recently used
    chest["z"] = [3]
    assert chest.engine.spilled_keys == ["y"]
    assert len(policy) == 2 and set(chest.inmem) == {"x", "z"}
    return chest


def test_a_failed_constructor_leaves_its_policy_free(tmp_path: Path) -> None:
    # Before: "LRU() already serves another Chest" for ever, though no Chest was made.
    policy = LRU()
    data = {"a": [1], "b": [2], "bad": [threading.Lock()]}  # a and b are admitted before bad fails
    with pytest.raises(TypeError, match="pickle"):
        Chest(path=tmp_path / "failed", data=data, available_memory=10 * UNIT, sizeof=sizeof, policy=policy)
    serves_alone(policy, tmp_path / "next").close()
    with Chest(path=tmp_path / "failed") as again:  # (and the failed one's directory is unlocked)
        assert len(again) == 0


@pytest.mark.parametrize("end", ["close", "drop"])
def test_a_closed_chests_policy_may_serve_another(tmp_path: Path, end: str) -> None:
    # Before: the policy of a closed or dropped Chest could never be used again.
    policy = LRU()
    first = Chest(path=tmp_path / "first", available_memory=2 * UNIT, sizeof=sizeof, policy=policy)
    first.update({f"k{i}": [i] for i in range(4)})  # two resident, two spilled
    getattr(first, end)()
    assert len(policy) == 0  # the Chest removed every key from it as it closed
    second = serves_alone(policy, tmp_path / "second")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert first.engine.evict_one() == -1  # a closed Chest never asks its policy (now second's) again
    assert [str(w.message) for w in caught] == []  # (asked, it found none of second's keys and warned)
    assert set(second.inmem) == {"x", "z"} and len(policy) == 2
    assert dict(second.items()) == {"x": [1], "y": [2], "z": [3]}
    second.close()


def test_a_policy_stays_bound_while_its_chest_stays_open(tmp_path: Path) -> None:
    policy = LRU()
    chest = Chest(path=tmp_path / "c", available_memory=10 * UNIT, available_disk=10, sizeof=sizeof, policy=policy)
    chest["a"] = [1]
    with pytest.raises(SpillError, match="still open"):  # the quota refuses the flush: the Chest stays open
        chest.close()
    assert not chest.closed
    with pytest.raises(ValueError, match="already serves another open Chest"):
        Chest(path=tmp_path / "other", policy=policy)
    assert not (tmp_path / "other").exists()
    assert chest["a"] == [1] and len(policy) == 1
    chest.drop()
    serves_alone(policy, tmp_path / "other").drop()


def test_a_policy_is_free_after_a_close_it_raised_in_and_after_its_chest_was_collected(tmp_path: Path) -> None:
    # Found by review (helper-79): after a close() the policy raised in, and after a Chest collected
    # without a close, the policy was refused as serving "another open Chest" that was closed or gone.
    import gc

    broken = FailsOnBad()
    chest = Chest(path=tmp_path / "a", available_memory=10 * UNIT, sizeof=sizeof, policy=broken)
    chest.update({"bad": [1], "good": [2]})
    with pytest.raises(RuntimeError, match="policy bug"):
        chest.close()
    assert chest.closed and len(broken) == 0
    again = Chest(path=tmp_path / "b", available_memory=10 * UNIT, sizeof=sizeof, policy=broken)  # before: ValueError
    again.drop()
    policy, unused = LRU(), LRU()
    for given in (policy, unused):
        lost = Chest(available_memory=10 * UNIT, sizeof=sizeof, policy=given)
        if given is policy:
            lost["k"] = [1]
        del lost
        gc.collect()
    serves_alone(unused, tmp_path / "c").drop()  # before: "already serves another open Chest", with none open
    with pytest.raises(ValueError, match="still ranks 1 keys of another Chest; give this Chest a new policy"):
        Chest(available_memory=10 * UNIT, policy=policy)  # the collected Chest never took its key out


def test_a_policy_is_not_free_while_its_chest_is_still_closing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Found by review (helper-80): close() marks the engine closed when its flush starts and open again
    # if the flush fails; a Chest made meanwhile took the policy, and two open Chests shared it.
    import errno

    import spillkit.persistence

    policy = LRU()
    first = Chest(path=tmp_path / "a", available_memory=2 * UNIT, sizeof=sizeof, policy=policy)
    first["k"] = [0]
    first.evict()  # the policy ranks nothing: only the binding stands in the way
    refused: list[BaseException] = []

    def failing_commit(*args: Any, **kwargs: Any) -> None:
        try:  # another Chest, made while the close flushes
            Chest(path=tmp_path / "b", available_memory=2 * UNIT, sizeof=sizeof, policy=policy)
        except ValueError as error:
            refused.append(error)
        raise OSError(errno.EIO, "the disk failed")  # the flush fails: the first Chest stays open

    monkeypatch.setattr(spillkit.persistence, "write_manifest", failing_commit)
    with pytest.raises(OSError, match="the disk failed"):
        first.close()
    monkeypatch.undo()
    assert not first.closed and refused and "already serves another open Chest" in str(refused[0])
    first.close()
    serves_alone(policy, tmp_path / "c").drop()  # free once the close is done
