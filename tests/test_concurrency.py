"""Concurrency: an 8-thread stress at every policy, a threaded Hypothesis state machine, and the races of
a key overwritten or deleted while it is being spilled or loaded.

Every test runs once per entry of ``CONFIGS`` (the Chest keyword arguments under test), so a new engine
mode (write-behind, packing) is covered by adding one entry there.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_accounting
from helpers import crash_copy, run_threads
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import spillkit
from spillkit import Chest, SpillWarning
from spillkit.codecs import PickleCodec
from spillkit.dirlock import LOCK_NAME
from spillkit.manifest import MANIFEST_NAME
from spillkit.reserve import RESERVE_NAME
from spillkit.security import KEY_FILE_NAME

# ---- the Chest configurations every test here runs under ----------------------------------
# Packed small values (the default) with synchronous and background writes, and a file per value
# with background writes (temporary files written outside the lock), and a file per value written
# synchronously and loaded by mapping it (map_loads=1: every file, however small; reads without
# the lock). The state machine and test_chest_contract cover the file per value read as well.
CONFIGS: list[dict[str, Any]] = [
    {},
    {"write_behind": True},
    {"pack_threshold": 0, "write_behind": True},
    {"pack_threshold": 0, "map_loads": 1},
]


def config_id(config: dict[str, Any]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(config.items())) or "default"


@pytest.fixture(params=CONFIGS, ids=config_id)
def config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Keyword arguments for ``Chest``: one run per engine configuration."""
    return dict(request.param)


def quiesce(chest: Chest) -> None:
    """Return once no disk write is in flight, so the counters can be compared with the disk."""
    chest.wait_for_writes()


def reopened(chest: Chest) -> Chest:
    """A Chest on a copy of ``chest``'s directory, as a restart after a crash would see it (``chest``
    keeps its directory, locked, and goes on working)."""
    return Chest(path=crash_copy(chest), available_memory=10**6)


def assert_no_stray_files(chest: Chest) -> None:
    """Exact accounting, plus: no temporary file left behind, no file that no key owns."""
    quiesce(chest)
    assert_accounting(chest)
    store = chest._store
    hidden = {name for name in os.listdir(chest.path) if name.startswith(".")}
    known = {MANIFEST_NAME, KEY_FILE_NAME, LOCK_NAME, RESERVE_NAME, *store.segment_files()}  # segments: packed values
    assert hidden <= known, f"stray files: {sorted(hidden - known)}"
    owned = set(store.inner.names().values())  # keys with a file of their own
    visible = {name for name in os.listdir(chest.path) if not name.startswith(".")}
    assert visible == owned | store.inner.retained  # retained: the last flush's files (copy-on-write)


@pytest.fixture(autouse=True)
def frequent_thread_switches() -> Iterator[None]:
    """Switch threads far more often than the default 5 ms, so operations interleave."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


# ---- 1. the stress: 8 threads x 100 000 mixed operations on overlapping keys -------------------
# Size. The issue asks for 8 threads x 100 000 operations at every policy. On the project's 2-core
# machine an operation here costs about 60 us of CPU (one engine lock; a spill creates, renames and
# later unlinks a real file): 8 x 100 000 at all eleven policies took 522 s of CPU (19 min of wall
# time on a busy machine), far beyond this module's share of CI. CI runs LRU (the default) at
# 8 x LRU_OPS and every other policy at 8 x REDUCED_OPS; SPILLKIT_STRESS_FULL=1 runs 8 x FULL_OPS at
# every policy. Run that after changing the engine:
#   SPILLKIT_STRESS_FULL=1 python -m pytest -q tests/test_concurrency.py -k eight_threads
THREADS = 8
FULL_OPS = 100_000
LRU_OPS = 20_000
REDUCED_OPS = 4_000
BUDGET = 1_000  # about 9 of the 58 keys' values: a spill every 4 operations, a load every 7
PRIVATE = 6  # keys each thread owns: their contents are exact
COUNTERS = [f"count{i}" for i in range(5)]  # read-modify-write under a lock: no increment may be lost
RACY = [f"racy{i}" for i in range(5)]  # written and deleted by every thread without a lock
BIG = b"x" * (BUDGET + 100)  # over the budget: written straight to disk


class Stress:
    """The shared state of one stress run; ``work(tid)`` is one thread's share.

    Private keys (``p{tid}-{i}``) are written by one thread only, so every read is checked exactly.
    Counter values are ``(increments ever, current count)``, changed only under the counter's lock:
    readers without the lock must see the first number never go backwards (a stale copy coming back
    from disk would), and at the end ``current + banked`` must equal the increments exactly. Racy
    values are ``(key, tid, seq)`` with a fresh ``seq`` per write: any value read must have been
    issued for that very key. Each thread counts its own successful puts, deletes and reads, so
    ``stats`` can be checked exactly afterwards.
    """

    def __init__(self, chest: Chest, ops: int) -> None:
        self.chest = chest
        self.ops = ops
        self.start = threading.Barrier(THREADS)
        self.locks = {key: threading.Lock() for key in COUNTERS}
        self.issued = [0] * THREADS  # racy values issued per thread (the next seq)
        self.increments = {key: [0] * THREADS for key in COUNTERS}
        self.banked = {key: [0] * THREADS for key in COUNTERS}
        self.expected: list[dict[Hashable, Any]] = [{} for _ in range(THREADS)]
        self.puts = [0] * THREADS
        self.deletes = [0] * THREADS
        self.reads = [0] * THREADS
        self.universe = {f"p{t}-{i}" for t in range(THREADS) for i in range(PRIVATE)} | set(COUNTERS) | set(RACY)

    def racy_ok(self, key: Hashable, value: Any) -> bool:
        return (
            type(value) is tuple
            and value[0] == key
            and 0 <= value[1] < THREADS
            and 0 <= value[2] < self.issued[value[1]]
        )

    def work(self, tid: int) -> None:
        chest, rng = self.chest, random.Random(tid)
        mine = [f"p{tid}-{i}" for i in range(PRIVATE)]
        seen = dict.fromkeys(COUNTERS, 0)  # the highest increment count this thread has seen
        self.start.wait()
        for n in range(self.ops):
            roll = rng.random()
            if roll < 0.45:
                self.private_op(tid, rng, rng.choice(mine), n)
            elif roll < 0.65:
                self.counter_op(tid, rng, rng.choice(COUNTERS), seen)
            elif roll < 0.9:
                self.racy_op(tid, rng, rng.choice(RACY))
            else:
                self.global_op(rng)
        for key in mine:  # nobody else writes these: every update must have survived
            assert chest.get(key, None) == self.expected[tid].get(key)
            self.reads[tid] += 1

    def private_op(self, tid: int, rng: random.Random, key: str, n: int) -> None:
        chest, expected = self.chest, self.expected[tid]
        op = rng.randrange(12)
        if op <= 2:
            value: Any = BIG if rng.random() < 0.02 else n
            if op == 2:
                chest.put(key, value, cost=rng.random())
            else:
                chest[key] = value
            expected[key] = value
            self.puts[tid] += 1
        elif op <= 4:
            self.reads[tid] += 1
            if key in expected:
                assert chest[key] == expected[key]
            else:
                with pytest.raises(KeyError):
                    chest[key]
        elif op == 5:
            if key in expected:
                del chest[key]
                del expected[key]
                self.deletes[tid] += 1
            else:
                with pytest.raises(KeyError):
                    del chest[key]
        elif op == 6:
            assert chest.pop(key, None) == expected.get(key)
            self.deletes[tid] += expected.pop(key, None) is not None
        elif op == 7:
            assert (key in chest) == (key in expected)
        elif op == 8:
            got = chest.setdefault(key, -n)  # a read, and a put when absent
            self.reads[tid] += 1
            if key not in expected:
                expected[key] = -n
                self.puts[tid] += 1
            assert got == expected[key]
        elif op == 9:
            # Two keys holding one object (dask's aliases): it is counted once while resident.
            other = f"p{tid}-{rng.randrange(PRIVATE)}"
            value = (n, tid)
            chest.update({key: value, other: value})
            expected[key] = expected[other] = value
            self.puts[tid] += 2 if other != key else 1
        elif op == 10:
            if key in expected:
                chest.set_cost(key, rng.random())
            else:
                with pytest.raises(KeyError):
                    chest.set_cost(key, 1.0)
        else:
            assert chest.get(key, None) == expected.get(key)
            self.reads[tid] += 1

    def counter_op(self, tid: int, rng: random.Random, key: str, seen: dict[str, int]) -> None:
        chest = self.chest
        op = rng.randrange(10)
        if op < 6:  # increment
            with self.locks[key]:
                ever, current = chest.get(key, (0, 0))
                chest[key] = (ever + 1, current + 1)
            self.increments[key][tid] += 1
            self.reads[tid] += 1
            self.puts[tid] += 1
            seen[key] = ever + 1
        elif op == 6:  # bank the current count: pop it and put back zero
            with self.locks[key]:
                got = chest.pop(key, None)
                if got is not None:
                    self.banked[key][tid] += got[1]
                    self.deletes[tid] += 1
                    chest[key] = (got[0], 0)
                    self.puts[tid] += 1
        elif op == 7:  # increment two counters in one update, taking their locks in order
            other = rng.choice(COUNTERS)
            if other == key:
                return
            first, second = sorted([key, other])
            with self.locks[first], self.locks[second]:
                a, b = chest.get(first, (0, 0)), chest.get(second, (0, 0))
                chest.update({first: (a[0] + 1, a[1] + 1), second: (b[0] + 1, b[1] + 1)})
            for name, old in ((first, a), (second, b)):
                self.increments[name][tid] += 1
                seen[name] = old[0] + 1
            self.reads[tid] += 2
            self.puts[tid] += 2
        else:  # a read without the lock: never older than what this thread saw before
            self.reads[tid] += 1
            try:
                ever, current = chest[key]
            except KeyError:  # between a bank's pop and its put
                return
            assert ever >= seen[key], f"{key} went back from {seen[key]} to {ever}: a stale value"
            assert 0 <= current <= ever
            seen[key] = ever

    def racy_op(self, tid: int, rng: random.Random, key: str) -> None:
        chest = self.chest

        def fresh() -> tuple[str, int, int]:
            value = (key, tid, self.issued[tid])
            self.issued[tid] += 1  # issued before it is written, so a reader never sees it early
            return value

        op = rng.randrange(8)
        if op <= 1:
            chest[key] = fresh()
            self.puts[tid] += 1
        elif op == 2:
            self.reads[tid] += 1
            with contextlib.suppress(KeyError):
                assert self.racy_ok(key, chest[key])
        elif op == 3:
            try:
                del chest[key]
            except KeyError:
                pass
            else:
                self.deletes[tid] += 1
        elif op == 4:
            got = chest.pop(key, None)
            if got is not None:
                assert self.racy_ok(key, got)
                self.deletes[tid] += 1
        elif op == 5:
            default = fresh()
            got = chest.setdefault(key, default)
            self.reads[tid] += 1
            self.puts[tid] += got == default  # no other thread ever writes this (tid, seq)
            assert self.racy_ok(key, got)
        elif op == 6:
            other = rng.choice(RACY)
            first = fresh()
            second = first if other == key else (other, tid, first[2])
            chest.update({key: first, other: second})
            self.puts[tid] += 1 if other == key else 2
        else:
            with contextlib.suppress(KeyError):
                chest.set_cost(key, rng.random())

    def global_op(self, rng: random.Random) -> None:
        chest = self.chest
        op = rng.randrange(100)
        if op < 30:
            assert 0 <= len(chest) <= len(self.universe)
        elif op < 40:
            keys = list(chest)
            assert len(keys) == len(set(keys))
            assert set(keys) <= self.universe
        elif op < 70:
            assert (rng.choice(sorted(self.universe)) in chest) in (True, False)
        elif op < 95:
            assert chest.evict() >= -1
        elif op < 99:
            chest.settle()
        elif rng.random() < 0.2:  # once per 5 000 operations: it writes and fsyncs every resident value
            chest.flush()

    def check_final(self) -> None:
        """After every thread joined: contents, counters, stats and files are exact."""
        chest = self.chest
        quiesce(chest)
        stats = chest.stats
        assert stats.puts == sum(self.puts)
        assert stats.deletes == sum(self.deletes)
        assert stats.hits + stats.loads - stats.popped + stats.misses == sum(self.reads)  # a pop's read is no get
        assert stats.spills > self.ops  # the budget is tiny: values spilled constantly
        assert stats.direct_writes > 0
        assert stats.spill_failures == stats.load_failures == stats.unspillable == 0
        assert_no_stray_files(chest)
        assert chest.memory_bytes <= chest.available_memory

        expected: dict[Hashable, Any] = {}
        for mine in self.expected:
            expected.update(mine)
        for key in COUNTERS:
            total = sum(self.increments[key])
            ever, current = chest[key]
            assert ever == total, f"{key}: {total - ever} increment(s) lost"
            assert current + sum(self.banked[key]) == total
            expected[key] = (ever, current)
        for key in RACY:
            if key in chest:
                expected[key] = chest[key]
                assert self.racy_ok(key, expected[key])
        assert set(chest) == expected.keys()
        assert len(chest) == len(expected)
        assert dict(chest.items()) == expected
        assert_no_stray_files(chest)

        # The manifest written by flush() agrees: a second Chest on the directory has everything.
        chest.flush()
        assert dict(reopened(chest).items()) == expected


def stress_ops(policy: str) -> int:
    """Operations per thread for ``policy``: see the comment above THREADS."""
    if os.environ.get("SPILLKIT_STRESS_FULL"):
        return FULL_OPS
    return LRU_OPS if policy == "lru" else REDUCED_OPS


def test_eight_threads_of_mixed_operations(tmp_path: Path, policy_name: str, config: dict[str, Any]) -> None:
    chest = Chest(path=tmp_path / "c", available_memory=BUDGET, policy=policy_name, **config)
    try:
        stress = Stress(chest, stress_ops(policy_name))
        started = time.perf_counter()
        run_threads(stress.work, THREADS)
        print(
            f"{policy_name} {config_id(config)}: {THREADS} x {stress.ops} ops in "
            f"{time.perf_counter() - started:.1f} s, {chest.stats.spills} spills, {chest.stats.loads} loads"
        )
        stress.check_final()
    finally:
        chest.drop()


# ---- 2. a Hypothesis state machine whose rules run in several threads at once ------------------

_ABSENT: Any = object()
POOL: list[Hashable] = ["a", "b", "c", "d", "../up", ".hidden", 7, (1, "x")]
COUNTER = "counter"

# One operation: (kind, index into the keys the thread may use, payload for puts).
machine_ops = st.lists(
    st.tuples(
        st.sampled_from(["put", "put", "get", "delete", "pop", "setdefault", "in", "evict"]),
        st.integers(0, len(POOL) - 1),
        st.binary(max_size=120) | st.integers(-(2**40), 2**40),
    ),
    min_size=1,
    max_size=12,
)


class ThreadedChestMachine(RuleBasedStateMachine):
    """Each rule runs 2-4 threads started together at a barrier; the model is brought up to date
    after they joined, exactly where the keys were disjoint and by reading back where they overlapped.
    Values are ``(thread, step, payload)``, so every value written within a rule is distinct.
    """

    def __init__(self) -> None:
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="spillkit-threads-")
        self.model: dict[Hashable, Any] = {}
        self.chest: Chest | None = None
        self.options: dict[str, Any] = {}

    @initialize(
        policy=st.sampled_from(spillkit.policy_names()),
        budget=st.sampled_from([200, 400, 800]),  # values take 145-270 bytes: one to five resident
        config=st.sampled_from(CONFIGS),
    )
    def start(self, policy: str, budget: int, config: dict[str, Any]) -> None:
        self.options = dict(config, path=os.path.join(self.root, "chest"), available_memory=budget, policy=policy)
        self.chest = Chest(**self.options)

    def teardown(self) -> None:
        try:
            if self.chest is not None:
                self.chest.drop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def c(self) -> Chest:
        assert self.chest is not None
        return self.chest

    def apply(self, tid: int, ops: list[tuple[str, int, Any]], keys: list[Hashable], view: dict[Hashable, Any]) -> None:
        """Run ``ops`` on ``keys``; ``view`` is this thread's exact model of them when they are its own."""
        chest = self.c
        for step, (kind, index, payload) in enumerate(ops):
            key = keys[index % len(keys)]
            if kind == "put":
                chest[key] = view[key] = (tid, step, payload)
            elif kind == "get":
                assert chest.get(key, _ABSENT) == view.get(key, _ABSENT)
            elif kind == "delete":
                if key in view:
                    del chest[key]
                    del view[key]
                else:
                    with pytest.raises(KeyError):
                        del chest[key]
            elif kind == "pop":
                assert chest.pop(key, _ABSENT) == view.pop(key, _ABSENT)
            elif kind == "setdefault":
                assert chest.setdefault(key, (tid, step, payload)) == view.setdefault(key, (tid, step, payload))
            elif kind == "in":
                assert (key in chest) == (key in view)
            else:
                assert chest.evict() >= -1

    @rule(batches=st.lists(machine_ops, min_size=2, max_size=4))
    def disjoint_keys(self, batches: list[list[tuple[str, int, Any]]]) -> None:
        """Each thread owns every n-th key of the pool: every result is exact."""
        n = len(batches)
        barrier = threading.Barrier(n)
        views = [{key: self.model[key] for key in POOL[tid::n] if key in self.model} for tid in range(n)]

        def work(tid: int) -> None:
            barrier.wait()
            self.apply(tid, batches[tid], POOL[tid::n], views[tid])

        run_threads(work, n)
        for tid in range(n):
            for key in POOL[tid::n]:
                self.model.pop(key, None)
            self.model.update(views[tid])

    @rule(batches=st.lists(machine_ops, min_size=2, max_size=4))
    def overlapping_keys(self, batches: list[list[tuple[str, int, Any]]]) -> None:
        """Every thread uses every key. A key ends as the last change of one of the threads that
        changed it; reads may return the old value or anything written to that key in this rule."""
        n = len(batches)
        barrier = threading.Barrier(n)
        possible: dict[Hashable, list[Any]] = {key: [self.model.get(key, _ABSENT)] for key in POOL}
        for tid, ops in enumerate(batches):
            for step, (kind, index, payload) in enumerate(ops):
                if kind in ("put", "setdefault"):
                    possible[POOL[index]].append((tid, step, payload))
                elif kind in ("delete", "pop"):
                    possible[POOL[index]].append(_ABSENT)
        last: list[dict[Hashable, Any]] = [{} for _ in range(n)]  # each thread's latest change per key

        def work(tid: int) -> None:
            chest = self.c
            barrier.wait()
            for step, (kind, index, payload) in enumerate(batches[tid]):
                key = POOL[index]
                if kind == "put":
                    chest[key] = last[tid][key] = (tid, step, payload)
                elif kind == "get":
                    assert chest.get(key, _ABSENT) in possible[key]
                elif kind == "delete":
                    with contextlib.suppress(KeyError):
                        del chest[key]
                    last[tid][key] = _ABSENT
                elif kind == "pop":
                    assert chest.pop(key, _ABSENT) in possible[key]
                    last[tid][key] = _ABSENT
                elif kind == "setdefault":
                    got = chest.setdefault(key, (tid, step, payload))
                    assert got in possible[key]
                    if got == (tid, step, payload):
                        last[tid][key] = got  # it was this thread that stored it
                elif kind == "in":
                    assert (key in chest) in (True, False)
                else:
                    assert chest.evict() >= -1

        run_threads(work, n)
        for key in POOL:
            ends = [changes[key] for changes in last if key in changes]
            got = self.c.get(key, _ABSENT)
            if ends:
                assert got in ends, f"{key!r} holds {got!r}, which no thread left last"
            else:
                assert got == self.model.get(key, _ABSENT)
            if got is _ABSENT:
                self.model.pop(key, None)
            else:
                self.model[key] = got

    @rule(threads=st.integers(2, 4), increments=st.integers(1, 20))
    def locked_increments(self, threads: int, increments: int) -> None:
        """Read-modify-write under a lock of the caller's: not one increment may be lost."""
        lock = threading.Lock()
        barrier = threading.Barrier(threads)

        def work(tid: int) -> None:
            barrier.wait()
            for _ in range(increments):
                with lock:
                    self.c[COUNTER] = self.c.get(COUNTER, 0) + 1
                self.c.evict()

        run_threads(work, threads)
        self.model[COUNTER] = self.model.get(COUNTER, 0) + threads * increments
        assert self.c[COUNTER] == self.model[COUNTER]

    @precondition(lambda self: self.model)
    @rule(readers=st.integers(1, 3), rounds=st.integers(1, 20), flush=st.booleans())
    def reads_while_spilling(self, readers: int, rounds: int, flush: bool) -> None:
        """Readers load values while another thread evicts, settles or flushes: every read is exact."""
        barrier = threading.Barrier(readers + 1)
        keys = sorted(self.model, key=repr)

        def work(tid: int) -> None:
            barrier.wait()
            for i in range(rounds):
                if tid == readers:
                    if flush and i == rounds // 2:
                        self.c.flush()
                    else:
                        self.c.evict()
                else:
                    for key in keys[i % len(keys) :: readers]:
                        assert self.c[key] == self.model[key]

        run_threads(work, readers + 1)

    @rule()
    def flush_close_reopen(self) -> None:
        self.c.close()
        self.chest = Chest(**self.options)
        assert self.c.memory_bytes == 0

    @invariant()
    def contents_and_accounting(self) -> None:
        if self.chest is None:
            return
        assert_no_stray_files(self.c)
        assert set(self.c) == self.model.keys()
        assert len(self.c) == len(self.model)
        for key, value in self.model.items():
            assert self.c[key] == value
        assert_no_stray_files(self.c)
        assert self.c.memory_bytes <= self.c.available_memory


ThreadedChestMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
    report_multiple_bugs=False,
)
TestThreadedChestMachine = ThreadedChestMachine.TestCase


# ---- 3. a key overwritten or deleted while it is being spilled or loaded -----------------------
class SlowCodec(PickleCodec):
    """Pickle, but encoding or decoding the ``target`` value takes ``delay`` seconds and sets
    ``started`` first: timing injection that holds a spill or a load of one key open while
    another thread acts on that key. Whether the engine holds its lock meanwhile is its business:
    the other thread's operation must be correct either way."""

    def __init__(self, target: Any, delay: float = 0.05) -> None:
        super().__init__()
        self.target = target
        self.delay = delay
        self.encoding = threading.Event()
        self.decoding = threading.Event()

    def encode(self, obj: Any) -> list[Any]:
        if obj == self.target:
            self.encoding.set()
            time.sleep(self.delay)
        return super().encode(obj)

    def decode(self, data: memoryview) -> Any:
        value = super().decode(data)
        if value == self.target:
            self.decoding.set()
            time.sleep(self.delay)
        return value


OLD = b"old value " * 5  # 50 bytes by sizeof: a budget of 60 holds this or the filler, never both
NEW = b"new value " * 5
FILL = b"f" * 20


def race_chest(tmp_path: Path, config: dict[str, Any], policy: str = "lru") -> tuple[Chest, SlowCodec]:
    codec = SlowCodec(OLD)
    return Chest(path=tmp_path / "race", available_memory=60, policy=policy, codec=codec, **config), codec


def spill_everything(chest: Chest) -> None:
    # evict() returns -1 once nothing is left to spill; the bound only guards against a loop forever.
    for _ in range(10 * len(chest) + 10):
        if chest.evict() < 0:
            break
    quiesce(chest)


def assert_holds(chest: Chest, expected: dict[Hashable, Any]) -> None:
    """``chest`` holds exactly ``expected`` now, after every value was spilled, and after a reopen."""
    assert dict(chest.items()) == expected
    spill_everything(chest)
    assert not chest.inmem
    assert dict(chest.items()) == expected
    assert_no_stray_files(chest)
    chest.flush()
    assert dict(reopened(chest).items()) == expected


def during(wait_for: threading.Event, first: Callable[[], Any], second: Callable[[], Any]) -> list[Any]:
    """Run ``first`` in one thread and, once ``wait_for`` is set, ``second`` in another; return both results."""
    results: list[Any] = [None, None]

    def work(i: int) -> None:
        if i == 0:
            results[0] = first()
        else:
            assert wait_for.wait(10), "the slow encode or decode never started"
            results[1] = second()

    run_threads(work, 2, timeout=30)
    return results


SPILL_RACES: dict[str, tuple[Callable[[Chest], Any], dict[Hashable, Any]]] = {
    "overwrite": (lambda chest: chest.__setitem__("victim", NEW), {"victim": NEW, "pusher": FILL}),
    "delete": (lambda chest: chest.__delitem__("victim"), {"pusher": FILL}),
    "pop": (lambda chest: chest.pop("victim"), {"pusher": FILL}),
    "read": (lambda chest: chest["victim"], {"victim": OLD, "pusher": FILL}),
    "big overwrite": (lambda chest: chest.__setitem__("victim", BIG), {"victim": BIG, "pusher": FILL}),
}


@pytest.mark.parametrize("race", sorted(SPILL_RACES))
def test_key_changed_while_it_is_spilled(tmp_path: Path, config: dict[str, Any], race: str) -> None:
    act, expected = SPILL_RACES[race]
    chest, codec = race_chest(tmp_path, config)
    try:
        chest["victim"] = OLD
        # Storing "pusher" spills "victim"; the slow encode holds that spill open while ``act`` runs.
        _, got = during(codec.encoding, lambda: chest.__setitem__("pusher", FILL), lambda: act(chest))
        if race in ("pop", "read"):
            assert got == OLD  # the value being written is still the value of the key
        assert_holds(chest, expected)
    finally:
        chest.drop()


LOAD_RACES: dict[str, tuple[Callable[[Chest], Any], dict[Hashable, Any]]] = {
    "overwrite": (lambda chest: chest.__setitem__("victim", NEW), {"victim": NEW, "other": FILL}),
    "delete": (lambda chest: chest.__delitem__("victim"), {"other": FILL}),
    "pop": (lambda chest: chest.pop("victim"), {"other": FILL}),
    "evict": (lambda chest: chest.evict(), {"victim": OLD, "other": FILL}),
}


@pytest.mark.parametrize("race", sorted(LOAD_RACES))
def test_key_changed_while_it_is_loaded(tmp_path: Path, config: dict[str, Any], race: str) -> None:
    act, expected = LOAD_RACES[race]
    chest, codec = race_chest(tmp_path, config)
    try:
        chest["victim"] = OLD
        chest["other"] = FILL
        spill_everything(chest)
        # The slow decode holds the load of "victim" open while ``act`` runs.
        loaded, _ = during(codec.decoding, lambda: chest.get("victim", "absent"), lambda: act(chest))
        # Either order is a correct outcome for the reader; the key's final state is not negotiable.
        allowed = {"delete": (OLD, "absent"), "pop": (OLD, "absent"), "overwrite": (OLD, NEW), "evict": (OLD,)}
        assert loaded in allowed[race]
        assert_holds(chest, expected)
    finally:
        chest.drop()


def test_overwrite_during_flush(tmp_path: Path, config: dict[str, Any]) -> None:
    chest, codec = race_chest(tmp_path, config)
    try:
        chest["victim"] = OLD
        during(codec.encoding, chest.flush, lambda: chest.__setitem__("victim", NEW))
        assert_holds(chest, {"victim": NEW})
    finally:
        chest.drop()


def test_delete_during_flush_leaves_no_file_and_no_manifest_entry(tmp_path: Path, config: dict[str, Any]) -> None:
    chest, codec = race_chest(tmp_path, config)
    try:
        chest["victim"] = OLD
        chest["kept"] = FILL  # spills "victim" (slowly); the flush below writes it again only if it came back
        chest["victim"] = OLD
        during(codec.encoding, chest.flush, lambda: chest.__delitem__("victim"))
        # What a crash right now would leave: the state of the flush that completed, which may
        # still hold "victim" (the delete came after its commit; copy-on-write keeps its file
        # until the next flush), with its old value; never another value.
        with warnings.catch_warnings():
            warnings.simplefilter("error", SpillWarning)
            view = reopened(chest)
        assert set(view) in ({"kept"}, {"kept", "victim"})
        assert view["kept"] == FILL
        if "victim" in view:
            assert view["victim"] == OLD
        assert_holds(chest, {"kept": FILL})
    finally:
        chest.drop()


class JitterCodec(PickleCodec):
    """Pickle, with every encode and decode taking a little longer: spills and loads stay open
    long enough for other threads to act on the same keys (timing injection)."""

    def encode(self, obj: Any) -> list[Any]:
        time.sleep(2e-4)
        return super().encode(obj)

    def decode(self, data: memoryview) -> Any:
        time.sleep(1e-4)
        return super().decode(data)


def test_owners_change_keys_while_others_force_spills_and_loads(
    tmp_path: Path, policy_name: str, config: dict[str, Any]
) -> None:
    """Each owner thread overwrites and deletes its keys and checks its own reads exactly, while
    other threads keep loading those keys and spilling them. A deleted key that comes back, or an
    older version that reappears, fails the owner's read or a reader's never-backwards check."""
    owners, helpers, rounds = 3, 3, 150
    chest = Chest(path=tmp_path / "c", available_memory=500, policy=policy_name, codec=JitterCodec(), **config)
    barrier = threading.Barrier(owners + helpers)
    finals: list[dict[Hashable, Any]] = [{} for _ in range(owners)]

    def owner(tid: int) -> None:
        rng = random.Random(tid)
        keys = [f"o{tid}-{i}" for i in range(3)]
        model = finals[tid]
        barrier.wait()
        for version in range(0, 2 * rounds, 2):
            key = rng.choice(keys)
            model[key] = chest[key] = (key, version, b"v" * rng.randrange(40))
            time.sleep(rng.choice([0, 1e-4, 3e-4]))  # a helper may start spilling it now
            action = rng.randrange(3)
            if action == 0:
                model[key] = chest[key] = (key, version + 1, b"w")
            elif action == 1:
                del chest[key]
                del model[key]
            else:
                assert chest.pop(key) == model.pop(key)
            assert chest.get(key, None) == model.get(key)
        for key in keys:
            assert chest.get(key, None) == model.get(key)

    def helper(tid: int) -> None:
        rng = random.Random(100 + tid)
        keys = [f"o{t}-{i}" for t in range(owners) for i in range(3)]
        seen = dict.fromkeys(keys, -1)
        barrier.wait()
        while any(thread.is_alive() for thread in owner_threads):
            key = rng.choice(keys)
            if rng.random() < 0.4:
                chest.evict()
                continue
            value = chest.get(key, None)
            if value is not None:
                assert value[0] == key
                assert value[1] >= seen[key], f"{key}: version {value[1]} after {seen[key]}"
                seen[key] = value[1]

    owner_threads = [threading.Thread(target=lambda: None) for _ in range(owners)]

    def work(i: int) -> None:
        if i < owners:
            owner_threads[i] = threading.current_thread()
            owner(i)
        else:
            helper(i - owners)

    try:
        run_threads(work, owners + helpers, timeout=120)
        expected = {key: value for model in finals for key, value in model.items()}
        assert_holds(chest, expected)
    finally:
        chest.drop()


# ---- deferral from several threads ------------------------------------------------------------
def test_overlapping_deferred_blocks_in_two_threads(tmp_path: Path, config: dict[str, Any]) -> None:
    chest = Chest(path=tmp_path / "c", available_memory=100, **config)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()

    def work(i: int) -> None:
        if i == 0:
            with chest.deferred():
                first_in.set()
                assert second_in.wait(10)
            first_out.set()
        else:
            assert first_in.wait(10)
            with chest.deferred():
                second_in.set()
                assert first_out.wait(10)

    try:
        run_threads(work, 2, timeout=30)
        for i in range(20):
            chest[i] = bytes([i]) * 50  # 1 000 bytes in all, ten times the budget
        assert chest.memory_bytes <= chest.available_memory
        assert dict(chest.items()) == {i: bytes([i]) * 50 for i in range(20)}
    finally:
        chest.drop()
