"""Costs a policy cannot use are refused before anything changes, and a policy that raises
while its Chest closes or is dropped never keeps the directory locked (review findings; each
test failed before the fix)."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ChestFactory, assert_accounting
from helpers import FailsOnBad

from spillkit import Chest

UNIT = 100


def sizeof(value: Any) -> int:
    """Bytes weigh their length (a value over the budget); everything else UNIT."""
    return len(value) if isinstance(value, bytes) else UNIT


BAD_COSTS = ["3", b"3", 1j, np.complex64(3), [3.0], object()]  # (numpy's complex: float() drops its imaginary part)

# Each way a cost reaches a Chest: (method, key) where key names a resident or spilled key of the filled Chest.
ENTRIES = {
    "put-new": ("put", "new"),
    "put-over-resident": ("put", "resident"),
    "put-over-spilled": ("put", "spilled"),
    "put-over-budget": ("put", "big"),
    "set-cost-resident": ("set_cost", "resident"),
    "set-cost-spilled": ("set_cost", "spilled"),
}


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_a_cost_that_is_not_a_real_number_changes_nothing(chest_factory: ChestFactory, entry: str) -> None:
    # Before: CostAware raised inside the policy half-way through (the key stored but unreadable,
    # close() failing with the directory locked); LRU and the others stored the string as the cost.
    chest = chest_factory(available_memory=3 * UNIT, sizeof=sizeof)
    expected = {f"k{i}": [i] for i in range(5)}
    for i, (key, value) in enumerate(expected.items()):
        chest.put(key, value, cost=0.1 * (i + 1))
    method, which = ENTRIES[entry]
    key = {"resident": next(iter(chest.inmem)), "spilled": chest.engine.spilled_keys[0]}.get(which, which)
    value = b"x" * 10 * UNIT if key == "big" else ["x"]
    before = (list(chest), set(chest.inmem), {k: chest.engine.given_cost(k) for k in chest})
    for cost in BAD_COSTS:
        with pytest.raises(TypeError, match=rf"the cost of {key!r} is .*not a real number"):
            if method == "put":
                chest.put(key, value, cost=cost)  # type: ignore[arg-type]
            else:
                chest.set_cost(key, cost)  # type: ignore[arg-type]
        assert (list(chest), set(chest.inmem), {k: chest.engine.given_cost(k) for k in chest}) == before
        assert len(chest.policy) == len(chest.inmem)  # nothing resident is left out of the policy
        assert_accounting(chest)
    assert {key: chest[key] for key in expected} == expected  # every read works, loads included
    chest.close()
    assert chest.closed
    with Chest(path=chest.path, sizeof=sizeof) as again:  # the close released the directory and committed all
        assert {key: again[key] for key in again} == expected


def test_real_numbers_of_any_type_are_costs_in_seconds(tmp_path: Path) -> None:
    # Before: a Decimal raised inside CostAware (a float and a Decimal do not add) and the put was half done.
    with Chest(path=tmp_path / "c", available_memory=3 * UNIT, sizeof=sizeof, policy="cost") as chest:
        costs: list[object] = [Decimal("0.4"), Fraction(3, 10), np.float64(0.5)]
        for i, cost in enumerate(costs):
            chest.put(i, [i], cost=cost)
        assert [chest.engine.given_cost(i) for i in range(3)] == [0.4, 0.3, 0.5]
        assert all(type(chest.engine.given_cost(i)) is float for i in range(3))
        # numpy's bool and a 0-d array are real numbers too, as for sizes (before: refused, where True was 1.0)
        for odd, seconds in ((np.True_, 1.0), (np.array(0.25), 0.25), (True, 1.0)):
            chest.set_cost(2, odd)  # type: ignore[arg-type]
            assert chest.engine.given_cost(2) == seconds
        chest.set_cost(2, 0.5)
        chest.put(3, [3], cost=1)  # over budget: the cheapest per byte is spilled, as for floats
        assert chest.engine.spilled_keys == [1]
        chest.set_cost(1, 10**400)  # too large for a float: as dear as can be
        assert chest.engine.given_cost(1) == math.inf
        for nan in (float("nan"), Decimal("NaN"), Decimal("sNaN")):
            with pytest.raises(ValueError, match="the cost of 0 is NaN"):
                chest.set_cost(0, nan)
        assert chest.engine.given_cost(0) == 0.4
        assert {key: chest[key] for key in chest} == {i: [i] for i in range(4)}


def test_close_releases_the_directory_even_if_the_policy_raises(tmp_path: Path) -> None:
    # Before: close() raised with the Chest marked closed and its directory still locked, so no
    # Chest could open the path again until the process exited.
    chest = Chest(path=tmp_path / "c", available_memory=10 * UNIT, sizeof=sizeof, policy=FailsOnBad())
    chest.update({"bad": [1], "good": [2]})
    with pytest.raises(RuntimeError, match="policy bug"):
        chest.close()
    assert chest.closed
    assert not chest.engine.memory and chest.engine.memory_bytes == 0  # it went on past the policy's error
    chest.close()  # idempotent
    with Chest(path=tmp_path / "c", sizeof=sizeof) as again:  # the flush before the shut committed both
        assert dict(again.items()) == {"bad": [1], "good": [2]}


@pytest.mark.parametrize("temporary", [False, True])
def test_drop_removes_and_unlocks_the_directory_even_if_the_policy_raises(tmp_path: Path, temporary: bool) -> None:
    # Before: drop() raised half-way, leaving the Chest open, its directory locked and half removed.
    path = None if temporary else tmp_path / "c"
    chest = Chest(path=path, available_memory=10 * UNIT, sizeof=sizeof, policy=FailsOnBad())
    chest.update({"good": [2], "bad": [1], "also": [3]})
    with pytest.raises(RuntimeError, match="policy bug"):
        chest.drop()
    assert chest.closed
    assert not Path(chest.path).exists()
    again = Chest(path=chest.path)  # no lock left behind, and nothing of the dropped Chest's
    assert len(again) == 0
    again.drop()


def test_a_constructor_that_fails_raises_its_own_error_and_frees_the_directory(tmp_path: Path) -> None:
    # Found by review (helper-79): the cleanup's close raised the policy's error, which hid the
    # constructor's (an unpicklable value over the budget); the lock's release after it is checked too.
    import threading

    lock_type = type(threading.Lock())
    path = tmp_path / "c"
    with pytest.raises(TypeError, match="pickle"):
        Chest(path=path, available_memory=10 * UNIT, policy=FailsOnBad(),
              sizeof=lambda v: 50 * UNIT if isinstance(v, lock_type) else UNIT,
              data={"bad": [1], "lock": threading.Lock()})  # fmt: skip
    with Chest(path=path) as again:  # the directory is free
        assert len(again) == 0
