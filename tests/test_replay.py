"""Replay drives the same engine as a live Chest: recorded decisions are reproduced exactly."""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import warnings
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from helpers import ConstRepr

import spillkit
from spillkit import Chest, policy_names
from spillkit.dask import costs, record
from spillkit.replay import MODES, DiskModel, replay
from spillkit.trace import Trace, TraceRecorder, read_trace

SHIPPED = sorted((Path(__file__).parent.parent / "experiments" / "traces").glob("*.trace.gz"))


def workload() -> Any:
    x = da.random.default_rng(3).random((1_500, 1_500), chunks=(300, 300))
    return (x.dot(x.T) - x.mean(axis=0)).sum(axis=1)


def random_value(rng: np.random.Generator) -> np.ndarray:
    """An array of 2000, 4000 or 6000 bytes (the random drivers below)."""
    return np.zeros(int(rng.choice([250, 500, 750])))


def sized_chest(policy: str, budget: int, tmp_path: Path) -> Chest:
    """A Chest that measures arrays by their bytes, under ``tmp_path/chest``."""
    return Chest(available_memory=budget, policy=policy, sizeof=lambda v: v.nbytes, path=tmp_path / "chest")


def random_key(rng: np.random.Generator, keys: list[Hashable]) -> Hashable:
    return keys[rng.integers(len(keys))]


def recorded_decisions(trace: Trace) -> list[tuple[str, Hashable]]:
    out: list[tuple[str, Hashable]] = []
    for op in trace.ops:
        if op[0] in ("spill", "evict"):
            out.append((op[0], op[1]))
        elif op[0] == "get" and op[3] in ("load", "reuse"):
            out.append((op[3], op[1]))
    return out


@pytest.mark.parametrize("policy", policy_names())
@pytest.mark.parametrize("settled", [False, True], ids=["strict", "settled"])
def test_replay_reproduces_a_live_run_exactly(policy: str, settled: bool, tmp_path: Path) -> None:
    budget = 3 * 2**20
    chest = Chest(available_memory=budget, policy=policy, path=tmp_path / "chest")
    path = tmp_path / "live.trace.gz"
    with record(path, workload="dot"):
        if settled:
            with costs(chest):
                workload().compute(scheduler="threads", cache=chest)
        else:
            workload().compute(scheduler="threads", cache=chest)
    # graph-aware policies get the graph only through the callback (settled runs), live and in replay
    assert_replay_matches(read_trace(path), chest, policy, budget, "settled" if settled else "strict", plan=settled)


def assert_replay_matches(trace: Trace, chest: Chest, policy: str, budget: int, mode: str, plan: bool) -> None:
    """The replay takes the recorded decisions, and counts what the live Chest counted."""
    live = recorded_decisions(trace)
    assert len(live) > 20, "the budget must force spilling"
    result = replay(trace, policy, budget, mode=mode, keep_decisions=True, plan=plan)
    assert result.decisions == live
    assert result.spills == chest.stats.spills
    assert result.loads == chest.stats.loads  # a reuse of a live object is no load, in the replay too
    assert result.hits == chest.stats.hits
    assert result.evictions == chest.stats.evictions
    assert result.loads == sum(1 for kind, _ in live if kind == "load")


@pytest.mark.parametrize("policy", policy_names())
def test_replay_reproduces_a_chest_that_stores_values_read_back_under_other_keys(policy: str, tmp_path: Path) -> None:
    # Before: a load's line named no object, so a put of the value read back under a second key was
    # replayed as a new object: counted twice, it pushed out values the live Chest kept.
    from spillkit.trace import TraceRecorder

    budget, rng = 5 * 4000, np.random.default_rng(7)
    chest = sized_chest(policy, budget, tmp_path)
    recorder = TraceRecorder(tmp_path / "alias.trace", {"workload": "alias"})
    chest.add_listener(recorder)
    for step in range(300):
        keys = sorted(chest)
        roll = rng.random()
        if len(keys) < 4 or roll < 0.3:
            chest[f"v{step}"] = random_value(rng)
        elif roll < 0.6:  # read a value (from disk, often) and store it again under another key
            chest[f"v{step}"] = chest[random_key(rng, keys)]
        elif roll < 0.85:
            chest[random_key(rng, keys)]
        else:
            del chest[random_key(rng, keys)]
    recorder.close()
    assert_replay_matches(read_trace(tmp_path / "alias.trace"), chest, policy, budget, "strict", plan=False)
    chest.drop()


def _stack(*parts: np.ndarray) -> np.ndarray:
    return np.full(500, sum(float(part[:10].sum()) for part in parts))  # 4000 bytes, whatever the inputs


@pytest.mark.parametrize("policy", policy_names())
def test_replay_reproduces_dask_aliases_of_values_read_back(policy: str, tmp_path: Path) -> None:
    # dask stores an alias task's input object under the alias's key; its input was often loaded first.
    dsk: dict[str, Any] = {"x0": (np.ones, 500)}
    for i in range(1, 40):
        dsk[f"x{i}"] = (_stack, f"x{i - 1}", f"x{max(0, i - 7)}")
        dsk[f"a{i}"] = f"x{max(0, i - 5)}"  # an alias of a value stored five steps earlier
    dsk["total"] = (_stack, *(f"a{i}" for i in range(1, 40)))
    budget = 5 * 4000
    chest = sized_chest(policy, budget, tmp_path)
    with record(tmp_path / "dask.trace", workload="aliases"):
        dask.get(dsk, "total", cache=chest)  # the synchronous scheduler: one order, live and recorded
    assert_replay_matches(read_trace(tmp_path / "dask.trace"), chest, policy, budget, "strict", plan=False)
    chest.drop()


def test_modes_and_cost_model() -> None:
    trace = read_trace(SHIPPED[0])
    peak = trace.peak_bytes()
    model = DiskModel(write_bandwidth=1e9, read_bandwidth=2e9, latency=1e-3)
    results = {mode: replay(trace, "lru", peak // 10, mode=mode, disk=model) for mode in MODES}
    for result in results.values():
        assert result.io_bytes == result.bytes_written + result.bytes_read
        expected = result.bytes_written / 1e9 + result.bytes_read / 2e9 + (result.writes + result.loads) * 1e-3
        assert result.io_seconds == pytest.approx(expected)
    assert results["dead-skip"].bytes_written <= results["strict"].bytes_written
    with pytest.raises(ValueError, match="unknown mode"):
        replay(trace, "lru", peak, mode="lazy")


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name.split(".")[0] for p in SHIPPED])
def test_shipped_traces_replay_with_every_policy(path: Path) -> None:
    trace = read_trace(path)
    peak = trace.peak_bytes()
    assert trace.header["format"] == "spillkit-trace" and trace.dependencies
    unlimited = replay(trace, "lru", peak)
    assert unlimited.spills == 0 and unlimited.bytes_read == 0  # the peak fits: nothing to spill
    put_bytes = sum(op[2] for op in trace.ops if op[0] == "put")
    for policy in policy_names():
        result = replay(trace, policy, peak // 4)
        assert result.requests == len(list(trace.requests()))
        assert result.bytes_written <= put_bytes  # files are reused: each stored value is written at most once
        assert (result.loads == 0) == (result.bytes_read == 0)
        assert result.recompute_seconds >= 0


def test_a_value_without_a_cost_does_not_take_its_predecessors() -> None:
    # Before: the overwritten value's 5 s were counted for reloading the new one.
    ops = [
        ("put", "a", 10, 5.0, 0.0, 1),  # a's first value takes 5 s to recompute
        ("put", "a", 10, None, 0.0, 2),  # overwritten by a value of unknown cost
        ("put", "b", 10, None, 0.0, 3),  # pushes a out (budget 10)
        ("get", "a", 0.0, "load"),
    ]
    result = replay(Trace({}, ops=ops), "lru", 10, mode="strict")
    assert result.loads == 1 and result.recompute_seconds == 0.0


def test_a_policy_registered_with_capitals_is_found_by_any_case() -> None:
    name = "MyLRU-" + str(id(object()))  # unique: the registry is the process's
    spillkit.register_policy(name, spillkit.LRU)
    assert isinstance(spillkit.make_policy(name), spillkit.LRU)  # before: ValueError, unknown policy
    assert isinstance(spillkit.make_policy(name.lower()), spillkit.LRU)
    with pytest.raises(ValueError, match="already registered"):
        spillkit.register_policy(name.upper(), spillkit.LRU)


def test_traces_named_alike_keep_apart_in_a_comparison(tmp_path: Path) -> None:
    from spillkit.compare import compare

    source = os.path.join(os.path.dirname(__file__), "..", "experiments", "traces", "matmul.trace.gz")
    paths = []
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        paths.append(str(tmp_path / folder / "matmul.trace.gz"))
        shutil.copyfile(source, paths[-1])
    rows = compare(paths, ["50%"], ["lru"], modes=["strict"], bounds=False)
    assert sorted(row["trace"] for row in rows) == ["matmul", "matmul-2"]  # before: both "matmul", one table


def test_at_a_bound_of_zero_a_policy_without_io_is_at_the_bound(tmp_path: Path) -> None:
    from spillkit.compare import compare

    trace = os.path.join(os.path.dirname(__file__), "..", "experiments", "traces", "matmul.trace.gz")
    rows = compare([trace], ["100%"], ["lru", "nextuse"], modes=["strict"], bounds=True)
    foo = next(row for row in rows if row["policy"] == "bound:foo")
    assert foo["io_bytes"] == 0  # everything fits: nothing needs to move
    for row in rows:
        assert row["io_bytes"] == 0 and row["ratio_to_bound"] == 1.0  # before: NaN, as if there were no bound
    from spillkit.compare import _ratio

    assert _ratio(10, 0) == float("inf") and _ratio(10, None) != _ratio(10, None)  # any I/O over none; no bound: NaN


def test_pop_of_a_spilled_value_is_a_counted_read_that_replay_reproduces(tmp_path: Path) -> None:
    # pop() read a spilled value's file and counted nothing (no load, no bytes read, no event):
    # metrics and traces missed the read, and a replay missed it too.
    from spillkit.trace import TraceRecorder

    chest = Chest(available_memory=300, sizeof=lambda v: 100, pack_threshold=0)
    recorder = TraceRecorder(tmp_path / "pops.jsonl", {"workload": "pops"})
    chest.add_listener(recorder)
    for i in range(8):
        chest[i] = bytes([i]) * 100
    spilled = [key for key in chest if key not in chest.inmem]
    loads, read = chest.stats.loads, chest.stats.load_bytes
    files = sum(chest._store.file_bytes(key) for key in spilled)
    for key in spilled:
        assert chest.pop(key) == bytes([key]) * 100
    assert chest.stats.loads - loads == len(spilled) > 0  # before: 0
    assert chest.stats.load_bytes - read == files  # before: 0
    recorder.close()
    result = replay(read_trace(tmp_path / "pops.jsonl"), "lru", 300, mode="strict")
    assert (result.loads, result.spills, result.hits) == (chest.stats.loads, chest.stats.spills, chest.stats.hits)
    chest.drop()


@pytest.mark.parametrize("policy", ["lru", "fifo"])
def test_replay_starts_literal_data_spilled_before_recording_on_disk(policy: str, tmp_path: Path) -> None:
    # dask stores a graph's literal data before record() attaches (given cache=); some of it is spilled by
    # then. Before, it was recorded as puts (object 0) in graph order and replayed as resident: the replay
    # re-decided those spills and took other decisions (repro_6: no load of d3, no spill of d1). The trace
    # holds what is resident in the order it was admitted, which is all LRU and FIFO rank by; a policy
    # whose ranking also depends on the evictions before recording (GreedyDual's clock, ARC) can differ.
    dsk: dict[str, Any] = {f"d{i}": np.full(500, float(i)) for i in range(12)}  # 4000 bytes each
    for i in range(12):
        dsk[f"s{i}"] = (_stack, f"d{(5 * i) % 12}", f"d{(5 * i + 3) % 12}")
    dsk["total"] = (_stack, *(f"s{i}" for i in range(12)))
    budget = 5 * 4000
    chest = sized_chest(policy, budget, tmp_path)
    with record(tmp_path / "literal.trace", workload="literal"):
        dask.get(dsk, "total", cache=chest)
    trace = read_trace(tmp_path / "literal.trace")
    on_disk = [op[1] for op in trace.ops if op[0] == "ondisk"]
    assert len(on_disk) >= 7  # 12 literals, room for 5
    live = recorded_decisions(trace)
    result = replay(trace, policy, budget, mode="strict", keep_decisions=True, plan=False)
    assert result.decisions == live
    assert result.spills == chest.stats.spills - len(on_disk)  # those were written before the recording began
    assert result.loads == chest.stats.loads
    assert result.hits == chest.stats.hits and result.evictions == chest.stats.evictions
    chest.drop()


@pytest.mark.parametrize("policy", policy_names())
def test_replay_reproduces_a_chest_alone_that_defers_puts_and_is_asked_to_evict(policy: str, tmp_path: Path) -> None:
    # A recorder given the Chest marks where its puts were deferred, and evict() is a request of its own.
    # Before, a strict replay made room at the deferred puts (spilling values the block then deleted) and
    # could not take evict()'s spills at all; a settled replay deferred every put.
    from spillkit.trace import TraceRecorder

    budget, rng = 5 * 4000, np.random.default_rng(11)
    chest = sized_chest(policy, budget, tmp_path)
    with TraceRecorder(tmp_path / "alone.trace", {"workload": "alone"}, chest=chest):
        for step in range(250):
            keys = sorted(chest)
            roll = rng.random()
            if roll < 0.15:
                with chest.deferred():  # a result stored before the inputs it replaces are deleted
                    chest[f"r{step}"] = random_value(rng)
                    for key in keys[: rng.integers(0, 3)]:
                        del chest[key]
            elif roll < 0.25:
                chest.evict()
            elif len(keys) < 4 or roll < 0.45:
                chest[f"v{step}"] = random_value(rng)
            elif roll < 0.6:
                chest[f"v{step}"] = chest[random_key(rng, keys)]
            elif roll < 0.9:
                chest[random_key(rng, keys)]
            else:
                del chest[random_key(rng, keys)]
    trace = read_trace(tmp_path / "alone.trace")
    assert sum(op[0] == "defer" for op in trace.ops) > 20 and sum(op[0] == "free" for op in trace.ops) > 10
    assert_replay_matches(trace, chest, policy, budget, "strict", plan=False)
    chest.put("after", np.zeros(10))  # the recorder stopped listening when it closed
    assert read_trace(tmp_path / "alone.trace").ops == trace.ops
    chest.drop()


@pytest.mark.parametrize("policy", policy_names())
def test_replay_reproduces_a_chest_alone_that_flushes_and_has_values_changed_in_place(
    policy: str, tmp_path: Path
) -> None:
    # helper-97: a flush left no line, so a replay wrote values the live Chest only dropped (their files
    # were the flush's); and a value changed in place after a load was written again live (check_in_place)
    # but dropped in the replay, whose values are sizes. Now ["flush", t] and ["changed", id, t] say so.
    from spillkit.trace import TraceRecorder

    budget, rng = 5 * 4000, np.random.default_rng(5)
    chest = sized_chest(policy, budget, tmp_path)
    with TraceRecorder(tmp_path / "flush.trace", {"workload": "flush"}, chest=chest):
        for step in range(300):
            keys = sorted(chest)
            roll = rng.random()
            if roll < 0.05:
                chest.flush()
            elif len(keys) < 4 or roll < 0.4:
                chest[f"v{step}"] = random_value(rng)
            elif roll < 0.6:  # a read (often a load), then a change in place through the object read
                chest[random_key(rng, keys)][0] += 1
            elif roll < 0.9:
                chest[random_key(rng, keys)]
            else:
                del chest[random_key(rng, keys)]
    trace = read_trace(tmp_path / "flush.trace")
    assert sum(op[0] == "flush" for op in trace.ops) > 5 and sum(op[0] == "changed" for op in trace.ops) > 5
    assert_replay_matches(trace, chest, policy, budget, "strict", plan=False)
    assert replay(trace, policy, budget).writes == chest.stats.disk_writes  # the flushes' writes too
    chest.drop()


class Unpicklable:
    """A value pickle refuses (it holds a lock), measured like the arrays beside it."""

    def __init__(self, nbytes: int) -> None:
        self.lock = threading.Lock()
        self.nbytes = nbytes


@pytest.mark.parametrize("policy", policy_names())
def test_replay_keeps_in_memory_the_values_the_live_chest_could_not_serialize(policy: str, tmp_path: Path) -> None:
    # helper-120: the live Chest keeps such a value in memory, out of the policy's reach; the trace said
    # nothing, so the replay spilled it and evicted others in its place. ["unwritable", id, t] says so now.
    from spillkit.trace import TraceRecorder

    budget, rng = 5 * 4000, np.random.default_rng(11)
    chest = sized_chest(policy, budget, tmp_path)
    recorder = TraceRecorder(tmp_path / "unwritable.trace", {"workload": "unwritable"}, chest=chest)
    with recorder, warnings.catch_warnings():
        warnings.simplefilter("ignore", spillkit.SpillWarning)  # "cannot be serialized; it stays in memory"
        for step in range(300):
            keys = sorted(chest)
            roll = rng.random()
            if roll < 0.04:
                chest[f"v{step}"] = Unpicklable(int(rng.choice([2000, 4000])))
            elif len(keys) < 4 or roll < 0.4:
                chest[f"v{step}"] = random_value(rng)
            elif roll < 0.9:
                chest[random_key(rng, keys)]
            else:
                del chest[random_key(rng, keys)]
    trace = read_trace(tmp_path / "unwritable.trace")
    assert chest.stats.unspillable > 0 and sum(op[0] == "unwritable" for op in trace.ops) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a replay refusing those writes warns no one: the live run did
        assert_replay_matches(trace, chest, policy, budget, "strict", plan=False)
    chest.drop()


def test_a_replay_at_a_budget_below_an_unwritable_value_keeps_it_in_memory(tmp_path: Path) -> None:
    # helper-121: the replay wrote a value over its budget straight to disk, which now raises for an unwritable
    # one: replay, and spillkit compare (its belady-size bound replays too), ended in a PicklingError.
    from spillkit.cli import EXIT_OK, main
    from spillkit.trace import TraceRecorder

    chest = sized_chest("lru", 20_000, tmp_path)
    with TraceRecorder(tmp_path / "big.trace", {"workload": "big"}, chest=chest), warnings.catch_warnings():
        warnings.simplefilter("ignore", spillkit.SpillWarning)
        chest["u"] = Unpicklable(8000)
        for i in range(6):
            chest[f"x{i}"] = np.zeros(500)
        chest["u"]
    trace = read_trace(tmp_path / "big.trace")
    assert [op for op in trace.ops if op[0] == "unwritable"]
    for mode in MODES:
        result = replay(trace, "lru", 5000, mode=mode, keep_decisions=True)
        assert ("spill", "u") not in result.decisions and ("load", "u") not in result.decisions, mode
    assert (
        main(["compare", str(tmp_path / "big.trace"), "--budgets", "10%", "--no-plots", "-o", str(tmp_path)]) == EXIT_OK
    )
    chest.drop()


@pytest.mark.parametrize("how", ["before the recorder", "by a flush"])
def test_values_refused_before_the_recorder_or_by_a_flush_are_traced_as_unwritable(how: str, tmp_path: Path) -> None:
    # helper-121: a value refused before the recorder attached was traced as an ordinary put (the replay's first
    # decision spilled it), and one refused only by flush() left no line (the replay's flush wrote it).
    from spillkit.trace import TraceRecorder

    chest = sized_chest("lru", 6000, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", spillkit.SpillWarning)
        if how == "before the recorder":
            chest["u"] = Unpicklable(4000)
            chest["p"] = np.zeros(500)  # spills nothing it could write: u is set aside, p fits
            assert "u" in chest.engine.unspillable_keys
        writes = chest.stats.disk_writes
        with TraceRecorder(tmp_path / "t.trace", {"workload": how}, chest=chest):
            if how == "by a flush":  # nothing evicts u: only the flush tries to write it
                chest["u"] = Unpicklable(1000)
                chest["y"] = np.zeros(125)
                with pytest.raises(spillkit.SpillError, match="flush could not write 1 value"):
                    chest.flush()
                chest["y"]
            else:
                for i in range(8):
                    chest[f"x{i}"] = np.zeros(250)
                for i in range(8):
                    chest[f"x{i}"]
            chest["u"]
    trace = read_trace(tmp_path / "t.trace")
    assert {op[1] for op in trace.ops if op[0] == "unwritable"} == {"u"}
    result = replay(trace, "lru", 6000, mode="strict", keep_decisions=True)
    assert result.decisions == recorded_decisions(trace)
    assert result.writes == chest.stats.disk_writes - writes  # the flush's refused write is no write
    chest.drop()


@pytest.mark.parametrize("policy", ["lru", "fifo", "arc"])
def test_a_key_put_again_with_a_value_pickle_takes_is_written_again_in_the_replay(policy: str, tmp_path: Path) -> None:
    # helper-122: the unwritable mark must end with the value it was for.
    from spillkit.trace import TraceRecorder

    chest = sized_chest(policy, 4 * 2000, tmp_path)
    with TraceRecorder(tmp_path / "t.trace", {"workload": "again"}, chest=chest), warnings.catch_warnings():
        warnings.simplefilter("ignore", spillkit.SpillWarning)
        chest["u"] = Unpicklable(2000)
        for i in range(6):
            chest[f"x{i}"] = np.zeros(250)
        chest["u"] = np.zeros(250)  # writable now
        for i in range(6, 30):
            chest[f"x{i}"] = np.zeros(250)
            chest[f"x{i - 3}"]
        chest["u"]
    trace = read_trace(tmp_path / "t.trace")
    assert ("spill", "u") in recorded_decisions(trace)
    assert_replay_matches(trace, chest, policy, 4 * 2000, "strict", plan=False)
    chest.drop()


def test_an_unwritable_line_for_a_key_never_put_is_harmless(tmp_path: Path) -> None:
    header = {"format": "spillkit-trace", "version": 1}
    lines = [header, ["k", 0, "a"], ["k", 1, "b"], ["unwritable", 0, 0.0], ["put", 1, 100, None, 0.1, 1],
             ["get", 1, 0.2, "hit"]]  # fmt: skip
    (tmp_path / "t.trace").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    trace = read_trace(tmp_path / "t.trace")
    assert trace.unwritable_puts() == set()
    assert replay(trace, "lru", 500).hits == 1


@pytest.mark.parametrize("policy", ["lru", "nextuse"])
def test_replay_of_dask_runs_keeps_what_pickle_refused_in_memory(policy: str, tmp_path: Path) -> None:
    # helper-120: a task's result holding a lock (18 spills live, 14 replayed), and a disk shuffle's store
    # over a 1-byte budget, refused as it was stored (26 loads live, 42 replayed).
    from dask.delayed import Delayed
    from dask.sizeof import sizeof

    from spillkit.dask import spilling

    @sizeof.register(Unpicklable)
    def _(value: Unpicklable) -> int:
        return value.nbytes

    graph: dict[Hashable, Any] = {f"a{i}": (np.full, 50_000, float(i)) for i in range(12)}
    graph["h"] = (Unpicklable, 400_000)
    for i in range(1, 12):
        graph[f"s{i}"] = (lambda h, a, b: a + b, "h", f"a{i}", f"a{i - 1}")
    graph["out"] = (lambda *xs: float(sum(x.sum() for x in xs)), *(f"s{i}" for i in range(1, 12)))
    frame = pd.DataFrame({"a": np.arange(20_000) % 37, "b": np.random.default_rng(0).random(20_000)})
    shuffled = dd.from_pandas(frame, npartitions=8).shuffle("a").b.sum()
    for name, budget, collection in (("held", 1_300_000, Delayed("out", graph)), ("shuffle", 1, shuffled)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", spillkit.SpillWarning)
            with spilling(available_memory=budget, policy=policy) as chest:
                with record(tmp_path / f"{name}.trace"):
                    collection.compute(scheduler="sync")
                live = (chest.stats.spills, chest.stats.loads, chest.stats.hits)
        trace = read_trace(tmp_path / f"{name}.trace")
        if policy == "lru" or name == "shuffle":  # (nextuse never picks the held value, read by every step)
            assert [op for op in trace.ops if op[0] == "unwritable"], name
        result = replay(trace, policy, budget, mode="settled")
        assert (result.spills, result.loads, result.hits) == live, name


@pytest.mark.parametrize("policy", ["lru", "nextuse", "s3fifo", "arc"])
def test_replay_reproduces_dask_groupby_whose_shuffle_object_stays_in_memory(policy: str, tmp_path: Path) -> None:
    # The disk shuffle's partd store is one value that every partition's task appends to, in place. It was
    # spilled, found changed and written again at each eviction (the trace's ``changed`` lines); but a copy
    # from disk can miss the appends (helper-102: at budgets under its size every row was lost), so
    # ChestCallback pins it until the computation ends (and the picklers refuse it): a pin the trace
    # records, so the replay keeps it in memory too, and still matches the live run.
    from spillkit import SpillWarning, workloads

    budget = 720_000  # about a tenth of its peak (7.2 MB)
    x = workloads.build("groupby", 0.02, 0)
    chest = Chest(available_memory=budget, policy=policy, path=tmp_path / "chest")
    with record(tmp_path / "groupby.trace", workload="groupby"), costs(chest), warnings.catch_warnings():
        warnings.simplefilter("error", SpillWarning)  # pinned, the store is never offered to the picklers
        x.compute(scheduler="threads", cache=chest)
    trace = read_trace(tmp_path / "groupby.trace")
    assert not [op for op in trace.ops if op[0] == "changed"]
    pinned = {op[1] for op in trace.ops if op[0] == "pin"}
    assert [key for key in pinned if isinstance(key, tuple) and str(key[0]).startswith("zpartd-")]
    assert_replay_matches(trace, chest, policy, budget, "settled", plan=True)
    chest.drop()


@pytest.mark.parametrize("found_by", ["put", "flush", "settle"])
def test_a_change_found_by_a_put_a_flush_or_a_settle_is_replayed_where_it_was_found(
    found_by: str, tmp_path: Path
) -> None:
    # helper-98: every changed line was applied one request early, right only for settle (and free), whose
    # line comes before the evictions it makes; after a put or a flush that request was the flush that gave
    # the key its file, and the mark was lost (live spilled the changed value, the replay only dropped it).
    from spillkit.trace import TraceRecorder

    budget = 10_000
    chest = Chest(available_memory=budget, policy="lru", sizeof=lambda v: v.nbytes, path=tmp_path / "c")
    with TraceRecorder(tmp_path / "t.trace", {"workload": "x"}, chest=chest):
        stored = np.zeros(750)  # 6000 bytes: resident
        chest["a"] = stored
        chest.flush()  # its file
        stored[0] = 1.0  # changed through the caller's own object, with no read in between
        if found_by == "put":
            chest["b"] = np.zeros(750)  # evicts "a": found changed, written again
        elif found_by == "flush":
            chest.flush()  # found changed, written again
        else:
            with chest.deferred():
                chest["b"] = np.zeros(750)
            chest.settle()  # evicts "a" after the settle's line
    trace = read_trace(tmp_path / "t.trace")
    assert [op[0] for op in trace.ops].count("changed") == 1
    result = replay(trace, "lru", budget, keep_decisions=True)
    assert result.decisions == recorded_decisions(trace)
    assert (result.spills, result.evictions) == (chest.stats.spills, chest.stats.evictions)
    assert result.writes == chest.stats.disk_writes == 2
    chest.drop()


def test_a_flush_of_a_spilled_value_changed_while_held_elsewhere_leaves_no_stale_mark(tmp_path: Path) -> None:
    # helper-98: the flush also rewrites spilled values still alive elsewhere that changed; its changed line
    # marked them in the replay, which models resident values only, and a later eviction there wrote what
    # live only dropped. Such a rewrite is no longer a changed line (one write fewer in the replay's count).
    from spillkit.trace import TraceRecorder

    budget = 10_000
    chest = Chest(available_memory=budget, policy="lru", sizeof=lambda v: v.nbytes, path=tmp_path / "c")
    with TraceRecorder(tmp_path / "t.trace", {"workload": "x"}, chest=chest):
        stored = np.zeros(750)
        chest["a"] = stored
        chest["b"] = np.zeros(750)  # spills "a", which the caller still holds
        stored[0] = 1.0
        chest.flush()  # writes "a" again, and "b"
        chest["a"]  # the held object, read back: "b" is dropped for its file
        chest["c"] = np.zeros(750)  # "a" is dropped too: the flush's file holds it
    trace = read_trace(tmp_path / "t.trace")
    assert "changed" not in [op[0] for op in trace.ops]
    result = replay(trace, "lru", budget, keep_decisions=True)
    assert result.decisions == recorded_decisions(trace)
    assert result.writes == chest.stats.disk_writes - 1  # the rewrite of the value held elsewhere
    chest.drop()


def test_a_listener_that_fails_never_stops_a_flush_or_a_close(tmp_path: Path) -> None:
    # helper-98: with warnings as errors, a listener failing at the new FLUSH event stopped the flush before its
    # commit (a listener's failure is a SpillWarning); FLUSH and CHANGED are told as FREE is, never raising.
    import warnings

    from spillkit import SpillWarning

    def broken(event: Any) -> None:
        if event.kind in ("flush", "changed"):
            raise RuntimeError("listener bug")

    chest = Chest(path=tmp_path / "c", available_memory=1000)
    chest.add_listener(broken)
    chest["a"] = held = np.zeros(100)
    with pytest.warns(SpillWarning, match="listener bug"):  # told, as for any event
        chest.flush()
    held[0] = 5.0  # found changed by the next flush: a CHANGED event too
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpillWarning)
        chest.flush()
        chest.close()
    assert chest.closed
    with Chest(path=tmp_path / "c") as again:
        assert again["a"][0] == 5.0


@pytest.mark.parametrize("policy", ["lru", "fifo"])
def test_a_recorder_given_a_chest_that_holds_values_already_starts_with_them(policy: str, tmp_path: Path) -> None:
    # Found by review (helper-79): the values held before the recorder attached were not in the trace,
    # so a strict replay missed every read of them (8 loads live, 8 misses replayed). Resident ones are
    # put in admission order, which LRU and FIFO rank by when nothing was read meanwhile.
    from spillkit.trace import TraceRecorder

    budget = 4 * 4000
    chest = sized_chest(policy, budget, tmp_path)
    for i in range(8):
        chest[f"old{i}"] = np.full(500, i)  # 4000 bytes each: four stay, four are spilled
    before = chest.stats.spills
    with TraceRecorder(tmp_path / "t.trace", {"workload": "held"}, chest=chest):
        for i in range(8):
            assert chest[f"old{i}"][0] == i
        chest["new"] = np.zeros(500)
    trace = read_trace(tmp_path / "t.trace")
    assert sum(op[0] == "ondisk" for op in trace.ops) == 4
    result = replay(trace, policy, budget, mode="strict", keep_decisions=True, plan=False)
    assert result.misses == 0 and result.loads == chest.stats.loads == 8
    assert result.spills == chest.stats.spills - before
    assert result.decisions == recorded_decisions(trace)
    chest.drop()


def test_a_recorder_starting_on_a_chest_carries_its_costs_and_a_deferred_block_under_way(tmp_path: Path) -> None:
    # Found by review (helper-80): costs given before the recorder attached were left out (the replay
    # spilled the wrong value, then loaded it), and a deferred() block under way was marked after the
    # starting puts (the replay made room at them, which the deferred Chest had not).
    from spillkit.trace import TraceRecorder

    budget = 4 * 4000
    chest = Chest(available_memory=budget, policy="cost", sizeof=lambda v: v.nbytes, path=tmp_path / "a")
    for i, seconds in enumerate([100.0, 0.001, 100.0, 100.0]):
        chest.put(f"old{i}", np.full(500, i), cost=seconds)
    with TraceRecorder(tmp_path / "a.trace", {"workload": "costs"}, chest=chest):
        chest["new"] = np.zeros(500)  # one must go: the cheap one
        for i in (0, 2, 3):
            chest[f"old{i}"]
    trace = read_trace(tmp_path / "a.trace")
    result = replay(trace, "cost", budget, mode="strict", keep_decisions=True, plan=False)
    assert result.decisions == recorded_decisions(trace) == [("spill", "old1")]
    chest.drop()

    chest = Chest(available_memory=budget, policy="lru", sizeof=lambda v: v.nbytes, path=tmp_path / "b")
    with chest.deferred():
        for i in range(6):  # over the budget while deferred
            chest[f"old{i}"] = np.full(500, i)
        with TraceRecorder(tmp_path / "b.trace", {"workload": "deferred"}, chest=chest):
            chest["old5"]
    trace = read_trace(tmp_path / "b.trace")
    result = replay(trace, "lru", budget, mode="strict", keep_decisions=True, plan=False)
    assert result.decisions == recorded_decisions(trace) == []
    chest.drop()


def test_keys_spelt_alike_stay_two_keys_in_their_trace(tmp_path: Path) -> None:
    # Before (helper-106): both read back as the str "<ConstRepr()>", one key, and the replay
    # reported only hits where the live Chest spilled and loaded at every read.
    from spillkit.trace import TraceRecorder

    chest = Chest(available_memory=150, sizeof=lambda value: 100, path=tmp_path / "c")
    recorder = TraceRecorder(tmp_path / "t.trace", {"workload": "alike"}, chest=chest)
    a, b = ConstRepr(1), ConstRepr(2)  # (a class whose repr leaves out what tells two keys apart)
    chest[a], chest[b], chest["<ConstRepr()>"] = "A", "B", "a str spelt like them"
    for _ in range(5):
        assert (chest[a], chest[b]) == ("A", "B")  # each read loads one and spills another
    chest["x", a], chest["x", b] = "xA", "xB"  # in tuples too (helper-108: refused as one key defined twice)
    recorder.close()
    trace = read_trace(tmp_path / "t.trace")
    assert len(set(trace.keys)) == 5
    result = replay(trace, "lru", 150, mode="strict")
    stats = chest.stats
    assert (result.hits, result.loads, result.spills) == (stats.hits, stats.loads, stats.spills)
    assert stats.loads == 10
    chest.drop()


def test_a_trace_that_defines_one_key_under_two_ids_is_refused(tmp_path: Path) -> None:
    from spillkit.trace import TraceError

    path = tmp_path / "twice.trace"
    header = '{"format": "spillkit-trace", "version": 1}'
    path.write_text(header + '\n["k", 0, "a"]\n["k", 1, "a"]\n["put", 0, 10, null, 0.0, 1]\n')
    with pytest.raises(TraceError, match=r"twice.trace:3: key id 1 defines the key of id 0 again, 'a'"):
        read_trace(path)


def add_one(array: Any) -> Any:
    return array + 1


@pytest.mark.parametrize("mode", ["settled", "strict"])
def test_a_later_computations_trace_holds_what_earlier_ones_left_in_the_chest(tmp_path: Path, mode: str) -> None:
    # Before (helper-112): dask leaves each result in cache=; the next computation's trace knew nothing of
    # it, though it took budget and was spilled live, so the replay left out that spill.
    budget = 1_500_000
    chest = Chest(path=tmp_path / "c", available_memory=budget, policy="lru")
    first = {"r1": (np.ones, 100_000)}  # an 800 kB result, left in the Chest
    second = {"b0": (np.ones, 100_000), "b1": (add_one, "b0"), "b2": (add_one, "b1")}
    with record(str(tmp_path / "t.trace")) as recording:
        for graph, key in ((first, "r1"), (second, "b2")):
            if mode == "settled":
                with costs(chest):
                    dask.get(graph, key, cache=chest)
            else:
                dask.get(graph, key, cache=chest)
    later = read_trace(recording.paths[1])
    live = recorded_decisions(later)
    assert ("spill", "r1") in live
    result = replay(later, "lru", budget, mode=mode, keep_decisions=True, plan=mode == "settled")
    assert result.decisions == live
    chest.drop()


def test_a_read_of_a_value_held_elsewhere_replays_as_no_disk_read(tmp_path: Path) -> None:
    # Before (helper-112): the trace wrote such a read as a load, and the replay counted its bytes
    # (here 48,000 bytes read where the live run read none).
    from spillkit.bounds import foo_lower_bound
    from spillkit.trace import TraceRecorder

    chest = Chest(path=tmp_path / "c", available_memory=10_000, sizeof=lambda value: value.nbytes)
    recorder = TraceRecorder(tmp_path / "t.trace", {"workload": "held"}, chest=chest)
    held = [np.full(1000, i, dtype=np.float64) for i in range(2)]  # 8 kB each: one fits
    chest["a"], chest["b"] = held
    for _ in range(3):
        assert chest["a"] is held[0] and chest["b"] is held[1]  # each read spills the other
    recorder.close()
    stats = chest.stats
    assert (stats.loads, stats.load_bytes, stats.reused) == (0, 0, 6)
    trace = read_trace(tmp_path / "t.trace")
    assert sum(1 for op in trace.ops if op[0] == "get" and op[3] == "reuse") == 6
    for policy in policy_names():
        result = replay(trace, policy, 10_000, mode="strict", keep_decisions=True)
        assert (result.loads, result.bytes_read) == (0, 0), policy
        assert foo_lower_bound(trace, 10_000).io_bytes <= result.io_bytes, policy
    live = replay(trace, "lru", 10_000, mode="strict", keep_decisions=True)
    assert live.decisions == recorded_decisions(trace) and live.spills == stats.spills
    chest.drop()


@pytest.mark.parametrize("field", ["write_bandwidth", "read_bandwidth", "latency"])
@pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf, "fast", True])
def test_a_disk_model_refuses_what_it_cannot_divide_by(field: str, value: Any) -> None:
    # Before (helper-133): DiskModel(write_bandwidth=0) was made, and seconds() raised ZeroDivisionError.
    if field == "latency" and value == 0:
        assert DiskModel(latency=0).seconds(10, 1, 10, 1) > 0  # no per-file cost: allowed
        return
    with pytest.raises(ValueError, match=f"^{field} must be a finite number"):
        DiskModel(**{field: value})


def test_a_disk_model_takes_any_real_number() -> None:
    from fractions import Fraction

    model = DiskModel(np.float32(1e9), np.int64(2 * 10**9), Fraction(1, 1000))  # (refused at first, helper-135)
    assert model.seconds(10**9, 1, 2 * 10**9, 1) == pytest.approx(2.002)


def test_trace_headers_cannot_replace_the_format_and_leave_no_file_when_refused(tmp_path: Path) -> None:
    # Before (helper-133): a header's "format" or "version" replaced the recorder's (the trace no longer
    # read back), and a header JSON cannot encode raised after the file was made, leaving it empty.
    for header, error in (({"format": "mine"}, ValueError), ({"version": 2}, ValueError), ({"x": object()}, TypeError)):
        with pytest.raises(error):
            TraceRecorder(tmp_path / "t.trace", header)
    with pytest.raises(ValueError, match="the trace format's own"):
        record(tmp_path / "r.trace", format="mine")  # at once, not as a computation starts
    assert list(tmp_path.iterdir()) == []
    with TraceRecorder(tmp_path / "ok.trace", {"machine": "mine", "workload": "w"}):
        pass
    assert read_trace(str(tmp_path / "ok.trace")).header["machine"] == "mine"
