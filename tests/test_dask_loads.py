"""spillkit.dask_loads: under spilling(), dask's worker threads load the spilled inputs they need.

On the real threaded scheduler: the loads happen in worker threads (seen by a listener
that notes each load's thread), results are right, no marker ever reaches a task or the
caller, and every other way of computing (an explicit scheduler, another thread, a
configured scheduler, an error) gets plain values.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest

from spillkit import Chest, CorruptSpillFile
from spillkit.dask import spilling
from spillkit.dask_loads import OnDisk, WorkerLoads
from spillkit.events import LOAD, Event

BUDGET = 6 * 2_000_000  # six 500 x 500 float64 chunks of the 2,000 x 2,000 array below


def anomaly() -> Any:
    x = da.random.default_rng(0).random((2_000, 2_000), chunks=(500, 500))
    return (x - x.mean()).sum(axis=0)


class LoadThreads:
    """A listener noting the thread of every load from disk."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def __call__(self, event: Event) -> None:
        if event.kind == LOAD and event.disk_bytes:
            self.threads.append(threading.get_ident())


def test_spilled_inputs_are_loaded_by_worker_threads_and_results_are_right() -> None:
    expected = anomaly().compute(scheduler="threads", cache={})
    with spilling(available_memory=BUDGET) as chest:
        loads = LoadThreads()
        chest.add_listener(loads)
        result = anomaly().compute()
    assert np.allclose(result, expected)
    assert loads.threads, "nothing was loaded: the budget is too large for the test"
    main = threading.get_ident()
    assert any(ident != main for ident in loads.threads)  # before: every load in dask's scheduling thread


def test_with_an_explicit_scheduler_the_scheduling_thread_loads_as_before() -> None:
    expected = anomaly().compute(scheduler="threads", cache={})
    with spilling(available_memory=BUDGET) as chest:
        loads = LoadThreads()
        chest.add_listener(loads)
        result = anomaly().compute(scheduler="threads")  # dask's own get: it knows nothing of markers
    assert np.allclose(result, expected)
    assert loads.threads and set(loads.threads) == {threading.get_ident()}


def test_results_on_disk_come_back_as_values_never_markers() -> None:
    x = da.random.default_rng(1).random((2_000, 2_000), chunks=(500, 500))
    with spilling(available_memory=BUDGET):
        blocks = x.to_delayed().ravel().tolist()  # sixteen 2 MB results: most are on disk at the end
        values = dask.compute(*blocks, x.sum())
    assert len(values) == 17 and not any(isinstance(v, OnDisk) for v in values)
    assert np.allclose(np.block([[values[i * 4 + j] for j in range(4)] for i in range(4)]), x.compute())


def test_a_configured_scheduler_is_left_alone() -> None:
    with dask.config.set(scheduler="sync"), spilling(available_memory=BUDGET) as chest:
        loads = LoadThreads()
        chest.add_listener(loads)
        result = anomaly().compute()
    assert np.allclose(result, anomaly().compute(scheduler="sync"))
    assert set(loads.threads) == {threading.get_ident()}  # the synchronous scheduler: one thread


def test_a_damaged_input_fails_the_compute_naming_its_key_and_the_chest_goes_on(tmp_path: Path) -> None:
    x = da.random.default_rng(2).random((2_000, 2_000), chunks=(500, 500))
    chest = Chest(available_memory=BUDGET, path=tmp_path / "chest", pack_threshold=0)
    damaged: list[Hashable] = []

    def damage(event: Event) -> None:
        # The first chunk spilled while the mean is computed: its file goes bad before its reload.
        if event.kind == "spill" and not damaged and isinstance(event.key, tuple):
            damaged.append(event.key)
            path = tmp_path / "chest" / chest._store.names()[event.key]
            data = bytearray(path.read_bytes())
            data[-1] ^= 0xFF
            path.write_bytes(bytes(data))

    chest.add_listener(damage)
    with spilling(chest), pytest.raises(CorruptSpillFile) as info:
        (x - x.mean()).sum().compute()
    assert damaged and damaged[0] == info.value.key
    chest["after"] = 1
    assert chest["after"] == 1
    chest.drop()


def test_markers_only_go_to_the_thread_that_schedules(tmp_path: Path) -> None:
    chest = Chest(available_memory=10, sizeof=lambda v: 10)
    cache = WorkerLoads(chest)
    cache["a"] = "first"
    cache["b"] = "second"  # "a" goes to disk
    assert "a" not in chest.inmem
    assert cache["a"] == "first"  # not scheduling: a value (and "b" goes to disk)
    assert "b" not in chest.inmem
    seen: dict[str, Any] = {}

    def graph_task() -> str:
        seen["in_worker"] = cache["b"]
        return "done"

    assert cache.schedule({"t": (graph_task,)}, "t") == "done"
    assert seen["in_worker"] == "second"  # a task reading the cache itself gets values, loaded
    chest.close()


# ---- found by review: every other way of running a computation still gets values ----------------


def make_part(i: int) -> bytearray:
    return bytearray(1000) + bytes([i])


def total(*parts: bytearray) -> int:
    return sum(part[-1] for part in parts)


def pack(*parts: bytearray) -> list[bytearray]:
    return list(parts)


def part_size(value: Any) -> int:
    return len(value) if isinstance(value, (bytes, bytearray)) else 8


def parts(prefix: str) -> list[Any]:
    return [dask.delayed(make_part)(i, dask_key_name=f"{prefix}{i}") for i in range(4)]


def test_a_pool_that_runs_tasks_inline_gets_values() -> None:
    from dask.local import SynchronousExecutor

    with spilling(available_memory=1500, sizeof=part_size):
        assert dask.delayed(total)(*parts("p"), dask_key_name="t").compute(pool=SynchronousExecutor()) == 6
        with dask.config.set(pool=SynchronousExecutor()):
            packed = dask.delayed(pack)(*parts("q"), dask_key_name="packed").compute()
    assert [type(part) for part in packed] == [bytearray] * 4 and [p[-1] for p in packed] == [0, 1, 2, 3]


def test_a_process_pool_gets_values() -> None:
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(1) as pool, spilling(available_memory=1500, sizeof=part_size):
        assert dask.delayed(total)(*parts("m"), dask_key_name="t").compute(pool=pool) == 6


@pytest.mark.parametrize("how", ["keyword", "config"])
def test_rerun_exceptions_locally_raises_the_tasks_own_error(how: str) -> None:
    def pick(*inputs: bytearray) -> list[int]:
        return [x[5000] for x in inputs]  # IndexError on the real inputs

    keyword = {"rerun_exceptions_locally": True} if how == "keyword" else {}
    config = {} if how == "keyword" else {"rerun_exceptions_locally": True}
    with spilling(available_memory=1500, sizeof=part_size), dask.config.set(config), pytest.raises(IndexError):
        dask.delayed(pick)(*parts("r"), dask_key_name="pick").compute(**keyword)


def test_record_works_inside_spilling(tmp_path: Path) -> None:
    from spillkit.dask import record
    from spillkit.trace import read_trace

    with spilling(available_memory=BUDGET), record(tmp_path / "t.jsonl"):
        result = anomaly().compute()
    assert np.allclose(result, anomaly().compute(scheduler="sync"))
    assert any(op[0] == "put" for op in read_trace(tmp_path / "t.jsonl").ops)


def test_a_scheduler_setting_put_back_after_the_block_falls_back_to_dask_threads() -> None:
    with spilling(available_memory=BUDGET) as chest:
        stale = dask.config.get("scheduler")  # what a Client opened inside and closed after puts back
    assert chest.engine.closed
    with dask.config.set(scheduler=stale):
        assert dask.delayed(total)(*parts("s"), dask_key_name="t").compute() == 6  # not "the Chest is closed"


@pytest.mark.parametrize(
    ("options", "synchronous", "background"),
    [
        ({}, False, None),  # dask puts ended tasks' results; running tasks' inputs are pinned: no check
        ({"write_behind": True}, True, True),  # the Chest's default: a put returns before its write
        ({"verify_writes": True}, True, None),
        ({"write_behind": True, "verify_writes": False}, False, False),
    ],
)
def test_spilling_checks_writes_again_only_where_a_value_could_change_meanwhile(
    options: dict[str, Any], synchronous: bool, background: bool | None
) -> None:
    with spilling(available_memory="64 MiB", **options) as chest:
        assert chest._store.verify_writes is synchronous
        writer = chest.engine._writer
        assert (None if writer is None else writer.verify) is background
        x = da.random.default_rng(0).random((400, 400), chunks=(100, 100))
        np.testing.assert_allclose(
            (x - x.mean()).sum(axis=0).compute(), (x - x.mean()).sum(axis=0).compute(scheduler="sync")
        )
