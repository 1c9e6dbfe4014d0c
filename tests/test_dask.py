"""The dask integration on real dask graphs and the real threaded and synchronous schedulers."""

from __future__ import annotations

import time
import warnings
from collections.abc import Hashable
from typing import Any

import dask
import dask.array as da
import dask.callbacks
import numpy as np
import pytest

from spillkit import Chest, CostAware, SpillWarning, policy_names
from spillkit.dask import ChestCallback, costs, record, spilling
from spillkit.events import Event
from spillkit.trace import read_trace
from spillkit.workloads import build, workload_names

ANOMALY_SCALE = 0.01  # a 2,000 x 2,000 array in 1,000 x 1,000 chunks: 32 MB, 8 MB per chunk


def anomaly() -> Any:
    x = da.random.default_rng(0).random((2_000, 2_000), chunks=(500, 500))
    return (x - x.mean()).sum(axis=0)


def peak_bytes(collection: Any, tmp_path: Any) -> tuple[int, int]:
    """(peak intermediate bytes, largest value) of a computation, from a trace of an unlimited run."""
    path = tmp_path / "peak.trace"
    chest = Chest(available_memory=10**15)
    with record(path):
        collection.compute(scheduler="sync", cache=chest)
    trace = read_trace(path)
    chest.close()
    return trace.peak_bytes(), max(op[2] for op in trace.ops if op[0] == "put")


class Peak:
    """A listener that tracks the most bytes a Chest held in memory within its budget (all but pinned ones)."""

    def __init__(self, chest: Chest) -> None:
        self.chest = chest
        self.peak = 0
        self.pinned = 0  # the most bytes pinned (running tasks' inputs, outside the budget)

    def __call__(self, event: Event) -> None:
        engine = self.chest.engine
        self.peak = max(self.peak, engine.memory_bytes - engine.pinned_bytes)
        self.pinned = max(self.pinned, engine.pinned_bytes)


@pytest.mark.parametrize("policy", policy_names())
@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_results_equal_dict_cache_within_budget(policy: str, scheduler: str, tmp_path: Any) -> None:
    expr = anomaly()
    expected = expr.compute(scheduler=scheduler, cache={})
    peak, largest = peak_bytes(expr, tmp_path)
    budget = peak // 10
    chest = Chest(available_memory=budget, policy=policy, path=tmp_path / "chest")
    watch = Peak(chest)
    chest.add_listener(watch)
    with costs(chest):
        got = expr.compute(scheduler=scheduler, cache=chest)
    np.testing.assert_array_equal(got, expected)
    assert chest.stats.spills > 0, "a 10% budget must spill"
    assert watch.peak <= budget + largest
    assert 0 < watch.pinned <= 2 * largest * 4  # at most the inputs (largest 4) of the tasks running at once
    assert chest.memory_bytes <= budget and chest.engine.pinned_bytes == 0


def test_strict_chest_without_callback_stays_within_budget(tmp_path: Any) -> None:
    expr = anomaly()
    peak, _ = peak_bytes(expr, tmp_path)
    chest = Chest(available_memory=peak // 10)
    watch = Peak(chest)
    chest.add_listener(watch)
    np.testing.assert_array_equal(expr.compute(scheduler="threads", cache=chest), expr.compute(scheduler="sync"))
    assert watch.peak <= peak // 10


def test_config_cache_and_spilling_context(tmp_path: Any) -> None:
    expr = anomaly()
    expected = expr.compute(scheduler="sync")
    chest = Chest(available_memory="4 MiB")
    with dask.config.set(cache=chest):
        np.testing.assert_array_equal(expr.compute(scheduler="threads"), expected)
    assert chest.stats.puts > 0
    with spilling(available_memory="4 MiB") as made:
        np.testing.assert_array_equal(expr.compute(scheduler="threads"), expected)
        assert made.policy.name == "nextuse"
        assert made.stats.puts > 0
    assert not made.path or not __import__("os").path.exists(made.path)


def test_no_dead_key_is_ever_written(tmp_path: Any) -> None:
    """With the callback, a value deleted by dask right after it was stored never reaches disk."""
    expr = anomaly()
    peak, _ = peak_bytes(expr, tmp_path)
    chest = Chest(available_memory=peak // 10, path=tmp_path / "c")
    written: list[Hashable] = []
    deleted_at: dict[Hashable, int] = {}
    events: list[Event] = []
    chest.add_listener(events.append)
    with ChestCallback(chest):
        expr.compute(scheduler="threads", cache=chest)
    for i, event in enumerate(events):
        if event.kind == "spill":
            written.append(event.key)
        if event.kind == "delete":
            deleted_at[event.key] = i
    # every spilled key was read again afterwards (or is an output): nothing written was dead
    for i, event in enumerate(events):
        if event.kind == "spill":
            later = [e for e in events[i + 1 :] if e.key == event.key and e.kind in ("load", "delete")]
            assert later and later[0].kind == "load", f"{event.key} was written and then deleted unread"
    assert written


def test_every_intermediate_is_deleted_when_released(tmp_path: Any) -> None:
    expr = anomaly()
    chest = Chest(available_memory="4 MiB", path=tmp_path / "c")
    graphs: list[Any] = []
    with costs(chest), dask.callbacks.Callback(start_state=lambda dsk, state: graphs.append(state)):
        expr.compute(scheduler="threads", cache=chest)
    state = graphs[0]
    outputs = {key for key, readers in state["dependents"].items() if not readers}
    assert len(state["dependents"]) > 50
    assert set(chest) == outputs
    names = {f for f in __import__("os").listdir(chest.path) if not f.startswith(".")}
    assert len(names) <= len(outputs)


class LoggingDict(dict[Hashable, Any]):
    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[str, Hashable]] = []

    def __setitem__(self, key: Hashable, value: Any) -> None:
        self.log.append(("put", key))
        super().__setitem__(key, value)

    def __getitem__(self, key: Hashable) -> Any:
        self.log.append(("get", key))
        return super().__getitem__(key)

    def get(self, key: Hashable, default: Any = None) -> Any:
        self.log.append(("get", key))
        return super().get(key, default)

    def __delitem__(self, key: Hashable) -> None:
        self.log.append(("del", key))
        super().__delitem__(key)


def test_trace_has_exactly_the_operations_a_logging_mapping_sees(tmp_path: Any) -> None:
    expr = anomaly()
    logged = LoggingDict()
    expr.compute(scheduler="sync", cache=logged)
    path = tmp_path / "anomaly.trace.gz"
    with record(path, workload="anomaly"):
        expr.compute(scheduler="sync", cache=Chest(available_memory="4 MiB"))
    trace = read_trace(path)

    def normal(key: Hashable) -> Hashable:  # the finalize task's name is random per compute
        return "finalize" if isinstance(key, str) and key.startswith("finalize-") else key

    recorded = [(op[0], normal(op[1])) for op in trace.requests() if op[0] not in ("cost", "settle")]
    assert len(recorded) > 100
    assert recorded == [(op, normal(key)) for op, key in logged.log]
    assert trace.header["workload"] == "anomaly"
    assert trace.header["budget"] == 4 * 2**20
    assert trace.header["dask"] == dask.__version__
    tuple_keys = [k for k in trace.dependencies if isinstance(k, tuple)]
    assert len(tuple_keys) > 50  # tuple keys survive the round trip, as tuples
    assert {k for _, k in logged.log if isinstance(k, tuple)} <= set(tuple_keys)
    assert set(trace.order) == set(trace.dependencies)


def test_literal_data_and_aliases_are_recorded(tmp_path: Any) -> None:
    data = np.arange(100_000.0)
    graph = {"x": data, "y": "x", "z": (np.sum, "y"), "w": (np.add, "x", "z")}
    path = tmp_path / "alias.trace"
    chest = Chest(available_memory="100 MiB")
    with record(path):
        result = dask.get(graph, "w", cache=chest)
    np.testing.assert_array_equal(result, data + data.sum())
    trace = read_trace(path)
    puts = {op[1]: op for op in trace.ops if op[0] == "put"}
    assert "x" in puts and "y" in puts
    assert puts["x"][5] == puts["y"][5] != 0  # the same object under two keys
    assert trace.peak_bytes() < 2 * data.nbytes + 10_000  # counted once


class SpyCost(CostAware):
    """Records the order of admitted / recosted / victim calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Hashable, float]] = []

    def admitted(self, key: Hashable, nbytes: int, cost: float) -> None:
        self.calls.append(("admitted", key, cost))
        super().admitted(key, nbytes, cost)

    def recosted(self, key: Hashable, nbytes: int, cost: float) -> None:
        self.calls.append(("recosted", key, cost))
        super().recosted(key, nbytes, cost)

    def victim(self) -> Hashable:
        key = super().victim()
        self.calls.append(("victim", key, 0.0))
        return key


def slow_square(x: np.ndarray) -> np.ndarray:
    time.sleep(0.05)
    return x * x


def test_costs_reach_the_policy_before_it_ranks(tmp_path: Any) -> None:
    graph: dict[Hashable, Any] = {("a", i): (np.full, 100_000, float(i)) for i in range(6)}
    graph.update({("b", i): (slow_square, ("a", i)) for i in range(6)})
    graph["total"] = (sum, [(np.sum, ("b", i)) for i in range(6)])
    spy = SpyCost()
    chest = Chest(available_memory=3 * 800_000, policy=spy)
    with costs(chest):
        assert dask.get(graph, "total", cache=chest) == sum(float(i) ** 2 * 100_000 for i in range(6))
    for key in [("b", i) for i in range(6)]:
        calls = [c for c in spy.calls if c[1] == key or c[0] == "victim"]
        first = next(i for i, c in enumerate(calls) if c[0] == "admitted" and c[1] == key)
        after = calls[first + 1 :]
        recost = next(i for i, c in enumerate(after) if c[0] == "recosted")
        assert after[recost][2] >= 0.05
        assert all(c[0] != "victim" for c in after[:recost]), f"{key} was ranked before its cost arrived"
    assert sum(c[0] == "recosted" for c in spy.calls) >= 6  # the spy saw every measured cost


def test_distributed_client_is_detected_with_a_warning() -> None:
    distributed = pytest.importorskip("distributed")
    with distributed.Client(
        processes=False,
        n_workers=1,
        threads_per_worker=1,
        dashboard_address="127.0.0.1:0",  # (None still serves HTTP, on every interface: loopback only here)
        worker_dashboard_address="127.0.0.1:0",
    ):
        chest = Chest(available_memory="1 MiB")
        with pytest.warns(RuntimeWarning, match="ignores cache="), ChestCallback(chest):
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with ChestCallback(Chest(available_memory="1 MiB")):
            pass


def test_record_needs_a_chest(tmp_path: Any) -> None:
    with pytest.raises(TypeError, match="needs a Chest"), record(tmp_path / "t.trace"):
        anomaly().compute(scheduler="sync", cache={})


@pytest.mark.parametrize("name", workload_names())
def test_workloads_build_and_compute_small(name: str) -> None:
    small = build(name, scale=0.002, seed=1)
    chest = Chest(available_memory="2 MiB")
    with spilling(chest):
        got = small.compute(scheduler="threads")
    expected = build(name, scale=0.002, seed=1).compute(scheduler="sync")
    if hasattr(got, "sort_index"):
        got, expected = got.sort_index(), expected.sort_index()
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected))


@pytest.mark.parametrize("policy", ["nextuse", "lru"])
def test_an_input_a_running_task_changes_in_place_is_not_spilled_under_it(policy: str) -> None:
    # A slow task changes its input in place (as dask's disk shuffle does with its partd object)
    # while other tasks fill memory. Before, the input was spilled while the task ran: the task's
    # later change went to an object nothing kept, and the task reading the input afterwards got
    # the copy from disk, without the change (0.0 here against 1000000.0).
    import threading

    from dask import delayed

    filled, count = threading.Event(), [0]
    lock = threading.Lock()

    def make(n: int) -> np.ndarray:
        return np.zeros(n)

    def change_later(a: np.ndarray) -> int:
        assert filled.wait(30)  # every filler has run: memory was full meanwhile
        a += 1.0
        return 0

    def filler(i: int) -> np.ndarray:
        with lock:
            count[0] += 1
            if count[0] == 6:
                filled.set()
        return np.ones(1_000_000)  # 8 MB each

    def read(a: np.ndarray, token: int, *filled: np.ndarray) -> float:
        return float(a.sum())

    a = delayed(make)(1_000_000)  # 8 MB
    changed = delayed(change_later)(a)
    total = delayed(read)(a, changed, *[delayed(filler)(i) for i in range(6)])  # 48 MB held until read runs
    with dask.config.set(num_workers=4), spilling(available_memory="10 MB", policy=policy) as chest:
        assert total.compute() == 1_000_000.0
        assert chest.stats.spills > 0  # memory was short: values did go to disk


def test_a_trace_gives_literal_data_spilled_before_recording_began_an_object_each(tmp_path: Any) -> None:
    # Literal chunks are stored before any hook runs; those already spilled were recorded with
    # id(None) as their object, so all shared one token: a replay took them for one value (peak
    # 8 MB of 32, and no I/O at the recorded budget, against 32 MB written live).
    from spillkit.replay import replay

    x = da.from_array(np.random.default_rng(0).random((2000, 2000)), chunks=(500, 500))  # 16 chunks of 2 MB
    chest = Chest(available_memory=6_000_000)
    with record(tmp_path / "t.trace.gz") as recording:
        (x - x.mean()).sum(axis=0).compute(scheduler="threads", cache=chest)
    trace = read_trace(recording.paths[0])
    assert trace.peak_bytes() >= 32_000_000
    on_disk = [op for op in trace.ops if op[0] == "ondisk"]  # each its own value, written before recording began
    assert on_disk
    result = replay(trace, chest.policy.name, 6_000_000, mode="settled")
    assert result.spills + len(on_disk) == chest.stats.spills
    written = result.bytes_written + sum(op[2] for op in on_disk)
    assert written == pytest.approx(chest.stats.spill_bytes, rel=1e-3)  # (replay counts no headers)
    chest.close()


@pytest.mark.parametrize("scheduler", [None, "sync"])
def test_literal_data_the_graph_holds_is_never_written(scheduler: str | None) -> None:
    # dask stores a graph's literal data (from_array's chunks, a persisted collection's) before any
    # hook ran, so puts made room: they wrote it, and settles wrote it again, freeing nothing (the
    # graph and the user hold it): 58 writes of 2 MB chunks for a 128 MB array at 16 MiB before.
    arr = np.random.default_rng(0).random((2000, 2000))  # 32 MB in 16 chunks of 2 MB
    x = da.from_array(arr, chunks=(500, 500))
    written: list[Hashable] = []
    with spilling(available_memory="6 MiB") as chest:
        chest.add_listener(lambda event: written.append(event.key) if event.kind == "spill" else None)
        options = {} if scheduler is None else {"scheduler": scheduler}
        result = (x - x.mean()).sum(axis=0).compute(**options)
        assert not [key for key in written if str(key).startswith("('array-")]
        assert not chest.engine._pins  # every pin undone when the computation ended
    assert np.allclose(result, (arr - arr.mean()).sum(axis=0))


@pytest.mark.parametrize("recorder_first", [True, False])
def test_a_trace_has_the_pins_made_before_recording_attached(tmp_path: Any, recorder_first: bool) -> None:
    # dask keeps its active callbacks in a set: when ChestCallback's hook runs before record()'s, the
    # literal data is pinned before the recorder listens. Before, the trace then had 212 pins for 228
    # unpins, and its replay spilled 60 values and loaded 151 where the live run wrote nothing.
    from spillkit.replay import replay

    arr = np.random.default_rng(0).random((1200, 1200))  # 11.5 MB of literal data, 16 chunks
    budget = 3 * 2**20
    chest = Chest(available_memory=budget, policy="lru", path=tmp_path / "c")
    pinning, recording = ChestCallback(chest), record(tmp_path / "t.trace")
    hooks = [recording._callback, pinning._callback]
    y = da.from_array(arr, chunks=(300, 300))
    (y @ y.T).sum(axis=1).compute(scheduler="sync", cache=chest, callbacks=hooks if recorder_first else hooks[::-1])
    recording._detach()
    trace = read_trace(tmp_path / "t.trace")
    assert sum(op[0] == "pin" for op in trace.ops) == sum(op[0] == "unpin" for op in trace.ops) > 0
    result = replay(trace, "lru", budget, mode="settled")
    assert (result.spills, result.loads) == (chest.stats.spills, chest.stats.loads)
    chest.drop()


def test_chunks_of_dask_array_full_spill_as_the_few_bytes_dask_counts_them_at() -> None:
    # da.full's (and ones', zeros') chunks are np.broadcast_to of one element: dask.sizeof counts
    # them at 8 bytes. Before spillkit.broadcasts each spill of one wrote 2 MB, and its load
    # brought back 2 MB counted at 8 (30 spills wrote 124 MB here, 92 MB after).
    x = da.full((2_000, 2_000), 2.0, chunks=(500, 500))
    y = da.random.default_rng(0).random((2_000, 2_000), chunks=(500, 500))
    spilled: list[tuple[int, int]] = []
    with spilling(available_memory="4 MiB") as chest:
        chest.add_listener(lambda e: spilled.append((e.nbytes, e.disk_bytes)) if e.kind == "spill" else None)
        result = da.concatenate([x * y, x], axis=0).compute(optimize_graph=False)  # unfused: x's chunks are stored
    broadcasts = [written for counted, written in spilled if counted == 8]
    assert len(broadcasts) >= 8
    assert max(broadcasts) < 4096  # a header and one float, not 500 x 500 of them
    assert np.array_equal(result[2_000:], np.full((2_000, 2_000), 2.0))
    assert np.allclose(result[:2_000], 2.0 * y.compute())


@pytest.mark.parametrize("budget", [0, 50, "1 MiB"])
@pytest.mark.parametrize("method", ["disk-shuffle", "set-index"])
def test_a_disk_shuffle_keeps_every_row_whatever_the_budget(budget: Any, method: str) -> None:
    # helper-102: dask's disk shuffle appends to a partd store each task is given; under a budget below
    # the store's 56 bytes it went to disk as a copy, the tasks appended to copies served unheld, and every
    # row was lost (0 of 20,000, no warning). A partd store now stays in memory (SpillWarning).
    dd = pytest.importorskip("dask.dataframe")
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"k": rng.integers(0, 50, 20_000), "v": rng.random(20_000)})
    df = dd.from_pandas(frame, npartitions=4)
    shuffled = (
        df.shuffle("k", shuffle_method="disk") if method == "disk-shuffle" else df.set_index("k", shuffle_method="disk")
    )
    expected = shuffled.compute(scheduler="sync")
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        with spilling(available_memory=budget):
            result = shuffled.compute()
    assert len(result) == len(expected) == 20_000
    assert sorted(result["v"]) == sorted(expected["v"])
    if budget != "1 MiB":  # (a store that fits is never a victim)
        assert any("partd store is changed in place" in str(w.message) for w in log)


def test_a_result_whose_size_cannot_be_measured_is_counted_at_a_megabyte_not_a_failed_computation() -> None:
    # helper-102: plain dask computes this; under spilling() the computation failed with the
    # __sizeof__'s error. Counted now as dask.distributed's safe_sizeof counts it, with a warning.
    class BadSizeof:
        def __sizeof__(self) -> int:
            raise ValueError("bad sizeof")

    def kind(value: Any) -> str:
        return type(value).__name__

    graph = dask.delayed(kind)(dask.delayed(BadSizeof, pure=False)())
    with spilling(available_memory="10 MiB") as chest:
        with pytest.warns(SpillWarning, match=r"could not measure a .*BadSizeof.*counted as 1000000 bytes"):
            assert graph.compute() == "BadSizeof"
        assert len(chest) == 0
    own = Chest(available_memory=100, sizeof=lambda value: BadSizeof().__sizeof__())
    with pytest.raises(ValueError, match="bad sizeof"):  # a sizeof of the caller's own: its error is theirs
        own["k"] = 1
    assert "k" not in own
    own.close()


class OddlyMeasured:
    """A value whose size a function registered with dask.sizeof gives as ``OddlyMeasured.size``."""

    size: Any = -5


@pytest.mark.parametrize("size", [-5, float("nan"), float("inf"), "12"])
def test_a_registered_sizeof_that_gives_no_size_counts_a_megabyte_not_a_failed_computation(size: Any) -> None:
    # helper-105: plain dask computes this; the Chest refused the size, and the computation failed.
    from dask.sizeof import sizeof

    sizeof.register(OddlyMeasured)(lambda value: value.size)
    OddlyMeasured.size = size
    try:
        graph = dask.delayed(type)(dask.delayed(OddlyMeasured, pure=False)())
        measured = r"could not measure a OddlyMeasured \(it measured .*\): counted as"
        with spilling(available_memory="10 MiB"), pytest.warns(SpillWarning, match=measured):
            assert graph.compute() is OddlyMeasured
    finally:
        sizeof._lookup.pop(OddlyMeasured)


def test_a_memoryview_result_comes_back_a_memoryview() -> None:
    # helper-102: spilled through cloudpickle, it came back as bytes. It stays in memory now.
    def make() -> memoryview:
        return memoryview(bytearray(500_000))

    def kind(value: Any, *pads: Any) -> str:
        return type(value).__name__

    view = dask.delayed(make, pure=False)()
    graph = dask.delayed(kind)(view, *[dask.delayed(np.full)(50_000, float(i)) for i in range(4)])
    with spilling(available_memory="100 kB"), pytest.warns(SpillWarning, match="cannot be serialized; it stays in"):
        assert graph.compute() == "memoryview"
