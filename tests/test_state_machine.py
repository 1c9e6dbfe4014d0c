"""A Hypothesis state machine: a Chest with tiny budgets against a plain dict model."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Hashable
from typing import Any

import numpy as np
import pytest
from helpers import abandon, assert_disk_files, crash_copy
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import spillkit
from spillkit import Chest, SpillError
from spillkit.compression import CompressedCodec
from spillkit.sizeof import default_sizeof

# Spilling an unpicklable value warns (SpillWarning) by design; here that is expected.
pytestmark = pytest.mark.filterwarnings("ignore::spillkit.SpillWarning")

SIZEOF = default_sizeof()
_ABSENT: Any = object()


class Unpicklable:
    """A value no codec can write: it must stay in memory, and never cost another key its value."""

    def __init__(self, tag: int) -> None:
        self.tag = tag

    def __reduce__(self) -> Any:
        raise TypeError("this value cannot be pickled, on purpose")

    def __eq__(self, other: object) -> bool:
        return type(other) is Unpicklable and other.tag == self.tag

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Unpicklable({self.tag})"


class DiskRefused:
    """A value the disk refuses (OSError from its serialization, as EFBIG for a file too large would be):
    it stays in memory, passed over until another write succeeds, and never stops the others spilling."""

    def __init__(self, tag: int) -> None:
        self.tag = tag

    def __reduce__(self) -> Any:
        raise OSError(errno.EFBIG, "this value's file is too large for the disk, on purpose")

    def __eq__(self, other: object) -> bool:
        return type(other) is DiskRefused and other.tag == self.tag

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"DiskRefused({self.tag})"


NEVER_WRITTEN = (Unpicklable, DiskRefused)

keys = st.sampled_from(["a", "b", "c", "d", "e", "one", "../up", ".hidden", "two words", 7, 8, (1, "x"), ("t", (2, 3))])
values = st.one_of(
    st.binary(max_size=400),
    # dask.sizeof samples lists longer than 10 at random, so only short lists have one size
    st.lists(st.integers(-(2**40), 2**40), max_size=10),
    hnp.arrays(
        dtype=st.sampled_from([np.dtype("int8"), np.dtype("float64"), np.dtype("int32")]),
        shape=st.integers(0, 60),
    ),
    # np.broadcast_to, as dask.array.ones/zeros/full chunks: read-only, counted (and spilled) by the
    # elements they hold (spillkit.broadcasts)
    st.builds(
        lambda row, rows: np.broadcast_to(row, (rows, row.size)),
        hnp.arrays(dtype=np.dtype("float64"), shape=st.integers(1, 6)),
        st.integers(2, 200),
    ),
)
costs = st.none() | st.floats(0, 10, allow_nan=False)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            type(a) is type(b)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
        )
    return type(a) is type(b) and bool(a == b)


def _snapshot(value: Any) -> Any:
    """A copy of a value that change_in_place could change later; other values as they are."""
    if isinstance(value, list):
        return list(value)
    if isinstance(value, np.ndarray):
        return value.copy()
    return value


def small_frames(algorithm: str) -> CompressedCodec:
    """A codec that tries to compress every frame of 16 bytes or more (the default waits for 64 KiB)."""
    return CompressedCodec(None, algorithm, min_size=16, sample_size=16)


class ChestMachine(RuleBasedStateMachine):
    """Every step is checked against ``model``; ``sizes`` holds each value's size when it was put."""

    def __init__(self) -> None:
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="spillkit-state-")
        self.path = os.path.join(self.root, "chest")
        self.model: dict[Hashable, Any] = {}
        self.sizes: dict[Hashable, int] = {}
        self.flushed: tuple[dict[Hashable, Any], dict[Hashable, int]] = ({}, {})  # model and sizes at the last flush
        self.chest: Chest | None = None
        self.policy = ""
        self.budget = 0
        self.pack_threshold = 0
        self.write_behind = False
        self.map_loads: bool | int = False
        self.spares = False
        self.compression: str | None = None
        self.pins: dict[Hashable, int] = {}  # the pins (engine.pin) now on each key
        self.held: set[Hashable] = set()  # pinned keys seen resident: they must stay so until unpinned

    def open(self, path: str | None = None) -> Chest:
        chest = Chest(
            path=self.path if path is None else path,
            available_memory=self.budget,
            policy=self.policy,
            pack_threshold=self.pack_threshold,
            write_behind=self.write_behind,
            map_loads=self.map_loads,
            compression=None if self.compression is None else small_frames(self.compression),
        )
        chest._store.segment_bytes = 2048  # a few records per segment: rotation and compaction happen in a run
        if self.spares:
            chest._store.inner._spares.min_size = 1  # every deleted value's file kept for reuse (spillkit.spares)
        return chest

    @initialize(
        policy=st.sampled_from(spillkit.policy_names()),
        budget=st.sampled_from([40, 100, 200, 400]),
        # one file per value, or small values packed into segments
        pack_threshold=st.sampled_from([0, 64 * 1024]),
        write_behind=st.booleans(),
        # files read into new memory, or every file of its own mapped (1: from one byte up)
        map_loads=st.sampled_from([False, 1]),
        # deleted values' files unlinked, or kept and written over by later spills
        spares=st.booleans(),
        # values compressed or not (from 16 bytes: this machine's values are small; see small_frames)
        compression=st.sampled_from([None, "lz4"]),
    )
    def start(
        self,
        policy: str,
        budget: int,
        pack_threshold: int,
        write_behind: bool,
        map_loads: bool | int,
        spares: bool,
        compression: str | None,
    ) -> None:
        self.policy, self.budget = policy, budget
        self.pack_threshold, self.write_behind, self.map_loads = pack_threshold, write_behind, map_loads
        self.spares, self.compression = spares, compression
        self.chest = self.open()

    def teardown(self) -> None:
        try:
            if self.chest is not None:
                self.chest.drop()  # flush_close_reopen covers close(); here it would only fsync
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def c(self) -> Chest:
        assert self.chest is not None
        return self.chest

    def store(self, key: Hashable, value: Any, cost: float | None = None) -> None:
        self.held.discard(key)  # a new value: one over the budget goes straight to disk, pinned or not
        if cost is None:
            self.c[key] = value
        else:
            self.c.put(key, value, cost=cost)
        # The model keeps a copy: holding the object would keep it alive, and a spilled value alive
        # elsewhere is handed back without a read (liveobjects), so no array or list would be read from disk.
        self.model[key] = _snapshot(value)
        self.sizes[key] = SIZEOF(value)

    # ---- rules -------------------------------------------------------------------------
    @rule(key=keys, value=values, cost=costs)
    def put(self, key: Hashable, value: Any, cost: float | None) -> None:
        self.store(key, value, cost)

    @rule(key=keys, tag=st.integers(0, 3))
    def put_unpicklable(self, key: Hashable, tag: int) -> None:
        self.put_never_written(key, Unpicklable(tag), TypeError)  # set aside for good when its turn comes

    @rule(key=keys, tag=st.integers(0, 3))
    def put_refused(self, key: Hashable, tag: int) -> None:
        self.put_never_written(key, DiskRefused(tag), OSError)  # passed over until another write succeeds

    def put_never_written(self, key: Hashable, value: Any, error: type[Exception]) -> None:
        if SIZEOF(value) <= self.budget:
            self.store(key, value)  # kept in memory when its turn to spill comes
            return
        # Too large for memory and impossible to write: the put fails and stores nothing.
        puts = self.c.stats.puts
        with pytest.raises(error):
            self.c[key] = value
        assert self.c.stats.puts == puts
        if key in self.model:
            assert same(self.c[key], self.model[key])
        else:
            assert key not in self.c

    @precondition(lambda self: self.model)
    @rule(data=st.data(), key=keys)
    def put_alias(self, data: st.DataObject, key: Hashable) -> None:
        """The same object under a second key (dask's Alias tasks) counts once."""
        source = data.draw(st.sampled_from(sorted(self.model, key=repr)))
        # The Chest's object (resident, alive elsewhere, or read now), at the size its key has: a value
        # read back, or changed in place, may measure otherwise now (the Chest counts an object at its
        # first key's size: spillkit/residency.py), and the model below counts a key's put size.
        value, size = self.c[source], self.sizes[source]
        self.held.discard(key)
        self.c.engine.put(key, value, nbytes=size)
        self.model[key] = _snapshot(value)
        self.sizes[key] = size

    @precondition(lambda self: self.model)
    @rule(data=st.data(), cost=st.floats(0, 10, allow_nan=False))
    def set_cost(self, data: st.DataObject, cost: float) -> None:
        key = data.draw(st.sampled_from(sorted(self.model, key=repr)))
        self.c.set_cost(key, cost)
        assert self.c.engine.given_cost(key) == cost

    @rule(key=keys)
    def get(self, key: Hashable) -> None:
        if key in self.model:
            assert same(self.c[key], self.model[key])
        else:
            misses = self.c.stats.misses
            try:
                self.c[key]
            except KeyError:
                pass
            else:
                raise AssertionError(f"{key!r} was found after it was deleted")
            assert self.c.stats.misses == misses + 1

    @rule(key=keys)
    def delete(self, key: Hashable) -> None:
        if key in self.model:
            del self.c[key]
            del self.model[key]
            del self.sizes[key]
        else:
            try:
                del self.c[key]
            except KeyError:
                pass
            else:
                raise AssertionError(f"deleting absent {key!r} did not raise KeyError")

    @rule(key=keys)
    def pop(self, key: Hashable) -> None:
        got = self.c.pop(key, _ABSENT)
        expected = self.model.pop(key, _ABSENT)
        self.sizes.pop(key, None)
        assert (got is _ABSENT) == (expected is _ABSENT)
        if expected is not _ABSENT:
            assert same(got, expected)

    @rule(key=keys)
    def change_in_place(self, key: Hashable) -> None:
        """Change a list or array through the object the Chest hands back, as one may with a dict's values."""
        if key not in self.model:
            return
        value = self.c[key]
        if self.c.inmem.get(key) is not value:
            return  # larger than the budget, never held: a change to the copy read from disk dies with it
        if self.shares_object(key, value):
            return  # an alias (put_alias): a change would show under the other key too, as in a dict
        if isinstance(value, list):
            value.append(len(value))
        elif isinstance(value, np.ndarray) and value.size and value.flags.writeable:
            value[:1] += 1  # wraps around for int8: still a change
        else:
            return  # bytes and Unpicklable values have nothing to change
        self.model[key] = _snapshot(value)

    def shares_object(self, key: Hashable, value: Any) -> bool:
        """True when another key's value is ``value`` itself: resident, in flight, or spilled and alive."""
        engine = self.c.engine
        others = [other for name, other in self.c.inmem.items() if name != key]
        if engine._writer is not None:
            others += [write.value for name, write in engine._writer.pending.items() if name != key]
        others += [ref() for name, ref in engine._refs.items() if name != key]
        return any(other is value for other in others)

    @rule(key=keys)
    def pin(self, key: Hashable) -> None:
        """A running task's input (dask's callback pins them), present or not; pins add up."""
        self.c.engine.pin([key])
        self.pins[key] = self.pins.get(key, 0) + 1

    @precondition(lambda self: self.pins)
    @rule(data=st.data())
    def unpin(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.pins, key=repr)))
        self.c.engine.unpin([key])
        self.pins[key] -= 1
        if not self.pins[key]:
            del self.pins[key]
            self.held.discard(key)
        self.c.engine.settle()  # as the callback does when the task ends (an unpin spills nothing itself)

    def forget_pins(self) -> None:  # a Chest re-opened: a new engine, with no pins
        self.pins.clear()
        self.held.clear()

    @rule()
    def evict(self) -> None:
        """Spill one value, as a dask.distributed worker's memory monitor does (a file it has is reused)."""
        self.c.evict()

    @rule()
    def read_everything(self) -> None:
        items = dict(self.c.items())
        assert items.keys() == self.model.keys()
        for key, value in self.model.items():
            assert same(items[key], value)

    @rule()
    def cheap_views(self) -> None:
        self.c.wait_for_writes()  # a background write finishing now would change the stats
        before = self.c.stats.snapshot()
        assert len(self.c) == len(self.model)
        assert set(self.c) == set(self.model)
        assert all(key in self.c for key in self.model)
        assert self.c.stats.snapshot() == before

    @rule()
    def flush_close_reopen(self) -> None:
        bad = {key for key, value in self.model.items() if isinstance(value, NEVER_WRITTEN)}
        if bad:
            with pytest.raises(SpillError):
                self.c.flush()
            # Every other value was flushed: a restart after a crash right now (on a copy of
            # the directory, which self.c keeps using) has them all.
            view = self.open(crash_copy(self.c))
            assert set(view) == self.model.keys() - bad
            for key in view:
                assert same(view[key], self.model[key])
            self.remember_flush(exclude=bad)
            for key in bad:  # the caller's way out: delete what cannot be written
                del self.c[key]
                del self.model[key]
                del self.sizes[key]
        self.c.flush()
        self.remember_flush()
        self.c.close()
        self.chest = self.open()
        self.forget_pins()
        assert len(self.c) == len(self.model)
        assert self.c.memory_bytes == 0

    def remember_flush(self, exclude: frozenset[Hashable] | set[Hashable] = frozenset()) -> None:
        # Copies of what change_in_place may change: the flush holds the values as they are now.
        model = {key: _snapshot(value) for key, value in self.model.items() if key not in exclude}
        self.flushed = (model, {key: self.sizes[key] for key in model})

    @rule()
    def crash_and_reopen(self) -> None:
        """Abandon the Chest as a killed process would: re-opening gives exactly the last flush's state."""
        self.c.wait_for_writes()  # a killed process has no writer thread left to finish later
        abandon(self.c)  # and no lock: the kernel released it
        self.chest = None  # never closed, never used again (a Chest with a path has no finalizer)
        self.chest = self.open()
        self.forget_pins()
        model, sizes = self.flushed
        self.model, self.sizes = dict(model), dict(sizes)
        assert set(self.c) == self.model.keys()
        for key, value in self.model.items():
            assert same(self.c[key], value)
        assert not [name for name in os.listdir(self.path) if name.startswith(".tmp-")]

    @rule(batch=st.lists(st.tuples(keys, st.none() | values), min_size=1, max_size=8))
    def deferred_batch(self, batch: list[tuple[Hashable, Any]]) -> None:
        """Puts (and deletes, for None) inside ``deferred()``; memory may exceed the budget until it ends."""
        self.c.wait_for_writes()  # a background write finishing now would count as a spill
        spills = self.c.stats.spills
        with self.c.deferred():
            for key, value in batch:
                if value is None:
                    if key in self.model:
                        del self.c[key]
                        del self.model[key]
                        del self.sizes[key]
                else:
                    self.store(key, value)
            assert self.c.engine.deferred
            assert self.c.stats.spills == spills  # nothing is written while deferred
            self.check_contents()
        assert not self.c.engine.deferred

    # ---- invariants ---------------------------------------------------------------------
    @invariant()
    def contents(self) -> None:
        if self.chest is not None:
            self.check_contents()

    def check_contents(self) -> None:
        with self.c.engine.lock:  # the background writer commits under this lock: a still picture
            self._check_contents()

    def _check_contents(self) -> None:
        chest, model = self.c, self.model
        memory = set(chest.inmem)
        on_disk = set(chest._store)
        spilled = set(chest.engine.spilled_keys)
        writer = chest.engine._writer
        pending = {} if writer is None else writer.pending
        in_flight = {key for key, write in pending.items() if write.evicting}
        assert chest.engine.in_flight_bytes == sum(self.sizes[key] for key in in_flight)
        # A key in flight may still have its older file (loaded, changed in place, evicted again) until the
        # write commits over it: reads serve the write's value first, and that is always the current one.
        assert in_flight.isdisjoint(memory)
        for key, write in pending.items():
            assert same(write.value, model[key])  # a write in flight is always of the current value
        assert memory <= model.keys()
        assert memory | on_disk | in_flight == model.keys()  # every key is in memory, on its way, or has a file
        assert spilled.isdisjoint(memory)
        assert spilled == model.keys() - memory
        assert chest.spilled_total[0] == sum(self.sizes[key] for key in spilled)  # the running count is exact
        assert len(chest) == len(model)

        # Each resident object counts once, at its keys' size.
        by_id: dict[int, int] = {}
        for key, value in chest.inmem.items():
            by_id[id(value)] = self.sizes[key]  # (every key of one object has one size here: put_alias)
            assert self.sizes[key] <= chest.available_memory  # larger values never stay resident
        assert chest.memory_bytes == sum(by_id.values())
        unwritable = {id(value): by_id[id(value)] for value in chest.inmem.values() if isinstance(value, NEVER_WRITTEN)}
        pinned = {id(chest.inmem[key]): by_id[id(chest.inmem[key])] for key in self.pins if key in memory}
        assert chest.engine._pins == self.pins
        assert chest.engine.pinned_bytes == sum(pinned.values())  # each object once, as in memory_bytes
        self.held &= model.keys()  # deleted since (a put of the key discards it in store)
        assert self.held <= memory, f"pinned keys were spilled: {self.held - memory}"
        self.held |= self.pins.keys() & memory
        # Only values that cannot be written, and pinned ones (outside the budget), may hold memory beyond it;
        # unless the last round stopped at two objects whose writes failed in a row (spillkit.rounds: as far as
        # it can tell, the disk fails), which only two distinct values the disk refuses can make happen here.
        stopped = len(chest.engine._round_failed) >= 2
        if not chest.engine.deferred and not stopped:
            limit = chest.available_memory + sum(unwritable.values()) + sum(pinned.values())
            assert chest.memory_bytes <= limit, (chest.memory_bytes, limit)
        assert all(isinstance(model[key], Unpicklable) for key in chest.engine.unspillable_keys)

        assert_disk_files(chest)  # every file is a key's, a segment, or one the last flush's manifest still needs


ChestMachine.TestCase.settings = settings(
    max_examples=800,  # 200 missed a value the disk refuses that stopped all spilling (found with 800)
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    derandomize=True,
    report_multiple_bugs=False,  # shrink one failure well rather than several slowly
)
TestChestStateMachine = ChestMachine.TestCase
