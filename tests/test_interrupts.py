"""A KeyboardInterrupt landing between any two steps of an operation leaves the engine's books whole.

Python raises it in the main thread only where its eval loop checks for signals: when a
Python function starts, just after a call returns, and at a loop's backward jump. A tracer
raises it at the Nth such point inside the engine's own modules, for every N an operation
passes (helper-126's sweep), then the test checks what a user would: every other key reads
its value, the interrupted key holds its old value or the new one (or is gone, for a
delete), the byte counts and the policy agree with memory, and the Chest goes on working.
Points inside the stores (segment files, records) are left out: an interrupt there can
leave a few bytes of a segment counted wrong, which the README's reliability table says.
"""

from __future__ import annotations

import dis
import itertools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import pytest
from conftest import assert_accounting

import spillkit
from spillkit import Chest, policy_names

ROOT = os.path.dirname(spillkit.__file__)
POLICIES = os.path.join(ROOT, "policies")
ENGINE = {
    os.path.join(ROOT, name)
    for name in (
        "engine.py", "transfers.py", "over_budget.py", "residency.py", "lifecycle.py", "ledger.py", "rounds.py",
        "liveobjects.py", "writebehind.py", "writer.py", "unlocked.py", "chest.py", "chest_dict.py",
    )
} | {os.path.join(POLICIES, name) for name in os.listdir(POLICIES) if name.endswith(".py")}  # fmt: skip
_POINTS: dict[CodeType, frozenset[int]] = {}


def signal_points(code: CodeType) -> frozenset[int]:
    """Offsets where CPython 3.11 may run a signal handler: after a call returns, at a backward jump."""
    found = _POINTS.get(code)
    if found is None:
        instructions = list(dis.get_instructions(code))
        after_calls = {b.offset for a, b in itertools.pairwise(instructions) if a.opname == "CALL"}
        jumps = {i.offset for i in instructions if i.opname.startswith("JUMP_BACKWARD")}
        found = _POINTS[code] = frozenset(after_calls | jumps)
    return found


class Interrupter:
    """Raise KeyboardInterrupt at the ``at``-th signal point in the engine's modules (0: count them only)."""

    def __init__(self, at: int) -> None:
        self.at, self.count = at, 0

    def _hit(self) -> None:
        self.count += 1
        if self.count == self.at:
            sys.settrace(None)
            raise KeyboardInterrupt

    def call(self, frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename not in ENGINE:
            return None
        frame.f_trace_opcodes, frame.f_trace_lines = True, False
        self._hit()  # a Python function starting
        return self.opcode

    def opcode(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode" and frame.f_lasti in signal_points(frame.f_code):
            self._hit()
        return self.opcode

    def run(self, operation: Callable[[], object]) -> bool:
        """Run ``operation`` under the tracer; True if it was interrupted."""
        sys.settrace(self.call)
        try:
            operation()
        except KeyboardInterrupt:
            return True
        finally:
            sys.settrace(None)
        return False


def value(i: int) -> str:
    return f"v{i}-" * 40  # 160-odd bytes: packed, 12 of them over a 1000-byte budget


def filled(tmp_path: Path, options: dict[str, Any]) -> tuple[Chest, dict[str, str]]:
    chest = Chest(path=tmp_path / f"c{len(os.listdir(tmp_path))}", available_memory=1000, sizeof=len, **options)
    model = {f"k{i}": value(i) for i in range(12)}
    for key, text in model.items():
        chest[key] = text
    chest.wait_for_writes()
    return chest, model


def spilled(chest: Chest) -> str:
    return next(key for key in chest if key not in chest.inmem)


def resident(chest: Chest) -> str:
    return next(key for key in reversed(list(chest)) if key in chest.inmem)


# operation name -> (the key it touches, the operation, what else than its old value it may hold after)
OPERATIONS: dict[str, Callable[[Chest], tuple[str, Callable[[], object], set[str | None]]]] = {
    "put a new key": lambda c: ("new", lambda: c.__setitem__("new", value(99)), {None, value(99)}),
    "put a new large key": lambda c: ("new", lambda: c.__setitem__("new", value(96) * 4), {None, value(96) * 4}),
    "overwrite a spilled key": lambda c: (k := spilled(c), lambda: c.__setitem__(k, value(98)), {value(98)}),
    "overwrite a resident key": lambda c: (k := resident(c), lambda: c.__setitem__(k, value(97) * 3), {value(97) * 3}),
    "get a spilled key": lambda c: (k := spilled(c), lambda: c[k], set()),
    "delete a spilled key": lambda c: (k := spilled(c), lambda: c.__delitem__(k), {None}),
    "pop a resident key": lambda c: (k := resident(c), lambda: c.pop(k), {None}),
    "evict": lambda c: ("", c.evict, set()),
}


CASES = [(policy, {}) for policy in policy_names()] + [("lru", {"write_behind": True})]


@pytest.mark.filterwarnings("error::spillkit.SpillWarning")  # ("names no victim": a policy left holding a ghost)
@pytest.mark.parametrize(("policy", "options"), CASES, ids=[f"{p}{'-write-behind' if o else ''}" for p, o in CASES])
@pytest.mark.parametrize("name", list(OPERATIONS))
def test_an_interrupt_at_any_point_of_an_operation_leaves_the_chest_whole(
    tmp_path: Path, name: str, policy: str, options: dict[str, Any]
) -> None:
    # (helper-128: with only LRU's module traced, and no round in the overwrite, the sweep missed a mend
    # inside a put's round dropping the key, and policies left holding part of a key.)
    options = {"policy": policy, **options}
    chest, _ = filled(tmp_path, options)
    _, operation, _ = OPERATIONS[name](chest)
    counter = Interrupter(0)
    counter.run(operation)
    chest.drop()
    assert counter.count > 10  # (the sweep reaches the engine's steps, not only the call into it)
    for at in range(1, counter.count + 1):
        chest, model = filled(tmp_path, options)
        key, operation, allowed = OPERATIONS[name](chest)
        old = model.get(key)
        interrupted = Interrupter(at).run(operation)
        assert interrupted or options.get("write_behind"), at  # (the writer's timing may shorten a sweep)
        chest.wait_for_writes()
        where = f"interrupted at point {at} of {counter.count}" if interrupted else "not interrupted"
        writer = chest.engine._writer
        assert writer is None or not writer.pending, where  # (no write left pending that no thread will run)
        for other, text in model.items():
            if other != key:
                assert chest[other] == text, (where, other)
        if key in model or key == "new":
            now = chest.get(key)
            assert now in allowed | {old}, (where, now)
        assert_accounting(chest)
        assert len(chest.engine.policy) == len(
            [k for k in chest.inmem if k not in chest.engine._unspillable and k not in chest.engine._aside]
        ), where
        for i in range(3):  # and it goes on working: puts that spill, an eviction, reads
            chest[f"z{i}"] = value(50 + i)
        chest.evict()
        assert [chest[f"z{i}"] for i in range(3)] == [value(50 + i) for i in range(3)], where
        assert_accounting(chest)
        chest.drop()
