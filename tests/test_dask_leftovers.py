"""Several computations under one ``spilling()`` block (review findings: each failed before).

dask's local scheduler takes a key it finds in its cache for computed. With a Chest shared by the
computations of a block, a key one of them left there (a result, or what a failed one held) made the
next computation that shares it fail with KeyError, and two computations at once deleted each
other's keys. Real dask schedulers and arrays throughout.
"""

from __future__ import annotations

import threading
import time
import warnings
from typing import Any

import pytest

da = pytest.importorskip("dask.array")
np = pytest.importorskip("numpy")

import dask  # noqa: E402
from dask_helpers import fails_in_one_block, matrix  # noqa: E402

from spillkit import Chest  # noqa: E402
from spillkit.dask import spilling  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::dask.array.core.PerformanceWarning")


SCHEDULERS = {"default": {}, "sync": {"scheduler": "sync"}, "threads": {"scheduler": "threads"}}


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_a_computation_after_a_failed_one_that_shares_its_keys_succeeds(scheduler: str) -> None:
    x = matrix()
    expected = float((x @ x).sum().compute(scheduler="sync"))
    with spilling(available_memory="10 MiB"):
        with pytest.raises(ZeroDivisionError):
            (x.map_blocks(fails_in_one_block) @ x).sum().compute(**SCHEDULERS[scheduler])
        assert float((x @ x).sum().compute(**SCHEDULERS[scheduler])) == pytest.approx(expected)


def test_a_computation_after_a_persist_that_shares_its_keys_succeeds() -> None:
    x = matrix()
    expected = float((x @ x).sum().compute(scheduler="sync"))
    with spilling(available_memory="10 MiB") as chest:
        kept = x.persist()
        assert len(chest) == 0  # the persisted values are the collection's, not the cache's
        assert float((x @ x).sum().compute()) == pytest.approx(expected)
        np.testing.assert_array_equal(kept.compute(), x.compute(scheduler="sync"))


def test_results_do_not_pile_up_in_the_chest() -> None:
    with spilling(available_memory="64 MiB") as chest:
        for i in range(5):
            result = (da.random.RandomState(i).random((1000, 1000), chunks=(250, 250)) + i).compute()
            assert result.shape == (1000, 1000)
            assert len(chest) == 0 and chest.disk_bytes == 0  # before: every result stayed (and spilled)


def test_computations_in_several_threads_at_once_all_succeed() -> None:
    x = matrix()
    expected = float((x @ x).sum().compute(scheduler="sync"))
    results: list[float] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                results.append(float((x @ x).sum().compute()))
        except BaseException as error:
            errors.append(error)

    with spilling(available_memory="2 MiB"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "another computation is using this spilling() Chest"
        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert errors == []  # before: KeyError in 11 of 12
    assert results == [pytest.approx(expected)] * 12


def test_a_computation_nested_in_a_task_succeeds() -> None:
    y = matrix()

    def inner(block: Any) -> Any:
        return block + float(y.sum().compute())

    with spilling(available_memory="2 MiB"), pytest.warns(RuntimeWarning, match="another computation"):
        total = (y.map_blocks(inner) + y).sum().compute(optimize_graph=False)
    assert total == pytest.approx(float((y.map_blocks(inner) + y).sum().compute(scheduler="sync")))


def test_a_graph_that_cannot_be_planned_leaves_the_chest_spilling() -> None:
    chest = Chest(available_memory=1000, sizeof=lambda v: 400, policy="nextuse")  # plans from the graph
    with spilling(chest):
        with pytest.raises(RuntimeError, match=r"[Cc]ycle"):
            dask.get({"a": (lambda v: v, "b"), "b": (lambda v: v, "a")}, "a", cache=chest)
        assert not chest.engine.deferred  # before: deferred for good, so puts never made room
        for i in range(6):
            chest[i] = i
        assert chest.memory_bytes <= 1000
    chest.close()


def test_two_blocks_in_two_threads_leave_later_computations_working() -> None:
    x = matrix()
    expected = float(x.sum().compute(scheduler="sync"))
    inside, left = threading.Event(), threading.Event()

    def other_block() -> None:
        with spilling(available_memory="10 MiB"):
            inside.set()
            assert left.wait(60)
            float(x.sum().compute())  # may find its config put back by the first block: still a result

    with spilling(available_memory="10 MiB"):
        thread = threading.Thread(target=other_block)
        thread.start()
        assert inside.wait(60)
        assert float(x.sum().compute()) == pytest.approx(expected)
    left.set()
    thread.join(60)
    assert float(x.sum().compute()) == pytest.approx(expected)  # before: SpillError (a closed Chest)


def test_a_computation_starting_while_another_cleans_up_keeps_its_results(monkeypatch: pytest.MonkeyPatch) -> None:
    # The first computation let go of the Chest before deleting its keys: the second one then shared the
    # Chest and had its results deleted under it. Timing only: the first's cleanup waits for the second.
    from dask import delayed
    from dask.callbacks import Callback

    x = delayed(lambda v: v * 10, pure=True)(1)
    z = x * 2
    cleaning, second_done = threading.Event(), threading.Event()
    real = Chest.__delitem__

    def slow_delete(self: Chest, key: Any) -> None:
        if threading.current_thread().name == "first" and not cleaning.is_set():
            cleaning.set()
            second_done.wait(5)
        real(self, key)

    monkeypatch.setattr(Chest, "__delitem__", slow_delete)

    class PauseBeforeResults(Callback):  # type: ignore[misc]
        def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
            if threading.current_thread().name == "second":
                second_done.set()
                time.sleep(0.3)

    outcome: dict[str, Any] = {}

    def run(name: str, *collections: Any) -> None:
        try:
            outcome[name] = dask.compute(*collections, optimize_graph=False)
        except BaseException as error:
            outcome[name] = error

    with spilling(available_memory="1 MiB"), PauseBeforeResults(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        first = threading.Thread(target=run, args=("first", x), name="first")
        first.start()
        assert cleaning.wait(10)
        second = threading.Thread(target=run, args=("second", x, z), name="second")
        second.start()
        first.join(30)
        second.join(30)
    assert outcome == {"first": (10,), "second": (10, 20)}  # before: KeyError in the second


def test_a_key_put_by_hand_that_the_graph_computes_is_left_alone() -> None:
    from dask import delayed

    y = delayed(lambda v: v + 1, pure=True)(1)
    with spilling(available_memory="1 MiB") as chest:
        chest[y.key] = "mine"
        with pytest.warns(RuntimeWarning, match="already in the spilling"):
            assert dask.compute(y)[0] == 2  # before: KeyError, and the value replaced
        assert chest[y.key] == "mine"


@pytest.mark.parametrize("other", ["sync", "threads"])
def test_a_default_and_an_explicit_scheduler_computation_at_once_both_succeed(other: str) -> None:
    # With scheduler= given, dask used the block's cache directly, past WorkerLoads.schedule's
    # one-at-a-time guard: the two computations deleted each other's keys (KeyError).
    x = da.random.default_rng(0).random((800, 800), chunks=(100, 100))
    expected = float((x @ x).sum().compute(scheduler="sync"))
    results: list[float] = []
    errors: list[BaseException] = []

    def work(options: dict[str, Any]) -> None:
        try:
            for _ in range(3):
                results.append(float((x @ x).sum().compute(**options)))
        except BaseException as error:
            errors.append(error)

    with spilling(available_memory="1 MiB") as chest, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "another computation is using this spilling() Chest"
        threads = [threading.Thread(target=work, args=({},)), threading.Thread(target=work, args=(SCHEDULERS[other],))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert len(chest) == 0  # nothing left behind by either
    assert errors == []
    assert results == [pytest.approx(expected)] * 6


def test_a_computation_with_a_scheduler_of_its_own_nested_in_a_task_succeeds() -> None:
    # The usual advice for a compute() inside a task: scheduler="sync". dask runs it without
    # callbacks, on the block's cache: it released keys the outer computation still needed.
    y = matrix()

    def inner(block: Any) -> Any:
        return block + float(y.sum().compute(scheduler="sync"))

    expected = float((y.map_blocks(inner) + y).sum().compute(scheduler="sync"))
    for optimize in (False, True):
        with spilling(available_memory="2 MiB"), pytest.warns(RuntimeWarning, match="another computation"):
            got = float((y.map_blocks(inner) + y).sum().compute(optimize_graph=optimize))
        assert got == pytest.approx(expected)


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_results_of_explicit_scheduler_computations_leave_the_chest_to_the_next_one(scheduler: str) -> None:
    # dask reads the results after the computation's callbacks end, so they stayed in the Chest:
    # they piled up (and spilled), and the next default computation sharing a key ran in memory.
    x = da.random.default_rng(1).random((1000, 1000), chunks=(250, 250))
    with spilling(available_memory="4 MiB") as chest, warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # before: "... already in the spilling() Chest"
        for i in range(3):
            assert (x + i).compute(scheduler=scheduler).shape == (1000, 1000)
            assert len(chest) == 0  # before: every result stayed
        kept = x.persist(scheduler=scheduler)
        assert len(chest) == 0
        puts = chest.stats.puts
        assert float((x @ x).sum().compute()) == pytest.approx(float((kept @ kept).sum().compute(scheduler="sync")))
        assert chest.stats.puts > puts  # the default computation did use the Chest


@pytest.mark.parametrize("inner", ["spilling", "costs"])
def test_two_callbacks_on_one_chest_compute_as_one(inner: str) -> None:
    # Both blocks' callbacks see every computation: the second found the Chest taken by the
    # first's own computation, routed it to an empty dict, and dask failed with KeyError.
    from spillkit.dask import costs

    chest = Chest(available_memory="64 MiB")
    x = da.from_array(np.arange(1_000_000, dtype=float), chunks=100_000)
    second = spilling(chest) if inner == "spilling" else costs(chest)
    with spilling(chest), second, warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # before: "another computation is using ..."
        assert float((x + 1).sum().compute()) == pytest.approx(500000500000.0)
    assert not chest.engine._pins and not chest.engine.deferred and len(chest) == 0
    chest.close()


@pytest.mark.parametrize("scheduler", [None, "sync", "threads"])
def test_a_cache_given_to_compute_inside_a_block_is_used(scheduler: str | None) -> None:
    # compute(cache={}) in a spilling() block: the callback claimed the Chest from the config's cache,
    # then handed back "results" from the Chest, which held none (KeyError).
    x = da.from_array(np.arange(1_000_000, dtype=float), chunks=100_000)
    options: dict[str, Any] = {} if scheduler is None else {"scheduler": scheduler}
    with spilling(available_memory="64 MiB") as chest:
        with pytest.warns(RuntimeWarning, match="is not the Chest given to ChestCallback"):  # (true: it is a dict)
            assert float((x + 1).sum().compute(cache={}, **options)) == pytest.approx(500000500000.0)
        assert dask.config.get("cache")._owner is None and not chest.engine.deferred


class _Unloadable:
    """A result that is spilled at once and fails to load back.

    No weak reference to it can be taken (``__slots__``): the Chest cannot hand the object back while dask
    still holds it, as it does with a value written straight to disk, so the read loads it.
    """

    __slots__ = ()

    def __reduce__(self) -> Any:
        return (_refuse, ())

    def __sizeof__(self) -> int:
        return 32_000_000


def _refuse() -> Any:
    raise RuntimeError("cannot load")


@pytest.mark.parametrize("scheduler", [None, "sync"])
def test_a_result_that_fails_to_load_leaves_the_chest_clean(scheduler: str | None) -> None:
    # With scheduler= given, the results are handed back as the computation ends; a load failing
    # there skipped the rest of the cleanup: the Chest stayed deferred (45 MiB held at 8) for good.
    x = da.from_array(np.ones(1000), chunks=100)
    with spilling(available_memory="8 MiB") as chest:
        with pytest.raises(RuntimeError, match="cannot load"):
            dask.compute(dask.delayed(_Unloadable)(), x.sum(), scheduler=scheduler)
        assert not chest.engine.deferred and not chest.engine._pins and len(chest) == 0
        for i in range(6):
            chest[f"v{i}"] = np.ones(1_000_000)  # 48 MB by hand: the budget holds again
        assert chest.memory_bytes <= chest.available_memory


def test_literal_data_is_not_written_through_costs_and_an_explicit_cache() -> None:
    arr = np.random.default_rng(0).random((2000, 2000))
    x = da.from_array(arr, chunks=(500, 500))
    chest = Chest(available_memory="6 MiB")
    written: list[Any] = []
    chest.add_listener(lambda event: written.append(event.key) if event.kind == "spill" else None)
    from spillkit.dask import costs

    with costs(chest):
        result = (x - x.mean()).sum(axis=0).compute(scheduler="threads", cache=chest)
    assert np.allclose(result, (arr - arr.mean()).sum(axis=0))
    assert not [key for key in written if str(key).startswith("('array-")]  # before: 13 chunks written
    chest.close()


def _chest_callback_active() -> bool:
    from dask.callbacks import Callback

    return any(type(getattr(callback[0], "__self__", None)).__name__ == "ChestCallback" for callback in Callback.active)


def test_a_computation_that_outlives_the_one_using_the_chest_keeps_its_values() -> None:
    # Before: thread B (dask's own scheduler=) started while A had the Chest, so dask had emptied the
    # active callbacks and B was routed to a dict of its thread; when A ended, that dict was dropped
    # and B's later reads went to the Chest: KeyError.
    started, a_done, b_running = threading.Event(), threading.Event(), threading.Event()

    def slow_first(block: Any) -> Any:
        started.set()
        assert block.size == 0 or b_running.wait(30)  # A keeps the Chest until B runs (not dask's meta)
        return block

    def double(block: Any) -> Any:
        if block.size:
            b_running.set()
        return block * 2

    def after_a(block: Any) -> Any:
        assert block.size == 0 or a_done.wait(30)  # B's later tasks run only once A has ended (not dask's meta)
        return block + 1

    a = da.ones((100, 100), chunks=50).map_blocks(slow_first, dtype=float).sum()
    b = da.ones((400, 100), chunks=(100, 100)).map_blocks(double, dtype=float)
    b = (b.map_blocks(after_a, dtype=float) + b).sum()
    a_done.set()
    expected = float(b.compute(scheduler="sync", optimize_graph=False))
    a_done.clear()
    b_running.clear()
    out: dict[str, Any] = {}

    def run(name: str, collection: Any, **kwargs: Any) -> None:
        try:
            out[name] = float(collection.compute(optimize_graph=False, **kwargs))
        except BaseException as error:  # the failure is the test's result
            out[name] = error
        if name == "A":
            a_done.set()

    with spilling(available_memory="10 MiB") as chest, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "another computation is using this spilling() Chest"
        thread_a = threading.Thread(target=run, args=("A", a))
        thread_b = threading.Thread(target=run, args=("B", b), kwargs={"scheduler": "threads"})
        thread_a.start()
        assert started.wait(30)
        thread_b.start()
        thread_a.join(60)
        thread_b.join(60)
        assert out == {"A": 10000.0, "B": pytest.approx(expected)}
        assert len(chest) == 0  # nothing of B's left in the Chest either
        assert float(b.compute(optimize_graph=False)) == pytest.approx(expected)  # and the next run has it


def test_two_overlapping_computations_leave_the_callback_for_the_rest_of_the_block() -> None:
    # Before: each computation made dask empty the process's active callbacks while it ran and put
    # back what it found; the second, ending last, put back the empty set, so the rest of the block
    # ran without ChestCallback: no deferral, no pins (an in-place change was lost, tests/test_dask.py).
    one_running, two_running, one_done = threading.Event(), threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def first(value: int) -> int:
        one_running.set()
        assert two_running.wait(30)  # the two computations overlap
        return value

    def second(value: int) -> int:
        two_running.set()
        assert one_done.wait(30)  # and the second ends last
        return value

    def run_one() -> None:
        results["one"] = dask.delayed(first)(1).compute()
        one_done.set()

    def run_two() -> None:
        results["two"] = dask.delayed(second)(2).compute()

    with spilling(available_memory="10 MiB"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert _chest_callback_active()
        one, two = threading.Thread(target=run_one), threading.Thread(target=run_two)
        one.start()
        assert one_running.wait(30)
        two.start()
        one.join(60)
        two.join(60)
        assert results == {"one": 1, "two": 2}
        assert _chest_callback_active()  # so the computations after them defer and pin again
