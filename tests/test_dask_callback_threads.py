"""spillkit/dask_callback.py with computations in several threads (helper-67's findings; each failed before).

dask's ``local_callbacks`` empties ``Callback.active`` while a computation runs that was given no
callbacks (any ``scheduler=`` of dask's own) and puts back the set it found when it ends: for the
whole process, not per thread. Computations in two threads that overlap therefore hand each other
the wrong set. Real dask schedulers, real Chests, threads synchronised by events.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

da = pytest.importorskip("dask.array")
np = pytest.importorskip("numpy")

import dask  # noqa: E402
import dask.local  # noqa: E402
from dask.callbacks import Callback  # noqa: E402
from dask_helpers import WAIT, fails_in_one_block, matrix, waits_in_first_block  # noqa: E402

from spillkit import Chest  # noqa: E402
from spillkit.dask import ChestCallback, costs, spilling  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def chest_callbacks() -> list[ChestCallback]:
    return [cb[0].__self__ for cb in Callback.active if isinstance(getattr(cb[0], "__self__", None), ChestCallback)]


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as error:  # handed to the test
            out["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def holding(
    scheduler: str = "sync", **options: Any
) -> tuple[threading.Event, threading.Event, threading.Thread, dict[str, Any]]:
    """A computation in another thread that runs until released (started, and said so, on return)."""
    inside, release = threading.Event(), threading.Event()

    def hold(value: int) -> int:
        inside.set()
        assert release.wait(WAIT)
        return value

    thread, out = in_thread(lambda: dask.delayed(hold)(1).compute(scheduler=scheduler, **options))
    assert inside.wait(WAIT)
    return inside, release, thread, out


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_explicit_scheduler_computations_that_end_out_of_order_keep_the_callback(scheduler: str) -> None:
    # Before: the second computation, ending last, put back the empty set the first had left in force;
    # the rest of the block ran without ChestCallback, and a failed computation's keys stayed in the
    # Chest and made the next one sharing them fail with KeyError.
    x = matrix()
    expected = float((x @ x).sum().compute(scheduler="sync"))
    with spilling(available_memory="10 MiB") as chest:
        _, release_one, one, out_one = holding(scheduler)
        _, release_two, two, out_two = holding(scheduler)  # starts while the first runs
        release_one.set()
        one.join(WAIT)
        release_two.set()  # and ends last
        two.join(WAIT)
        assert out_one == {"value": 1} and out_two == {"value": 1}
        assert len(chest_callbacks()) == 1
        with pytest.raises(ZeroDivisionError):
            (x.map_blocks(fails_in_one_block) @ x).sum().compute(scheduler=scheduler)
        assert len(chest) == 0
        assert float((x @ x).sum().compute(scheduler=scheduler)) == pytest.approx(expected)


def test_a_thread_whose_computation_failed_while_another_had_the_chest_computes_again() -> None:
    # Before: the failed computation ran without ChestCallback (the other one had emptied the active
    # set), its keys stayed in its thread's dict, and that thread's next computation failed (KeyError).
    x = matrix()
    expected = float((x @ x).sum().compute(scheduler="sync"))
    with spilling(available_memory="10 MiB"):
        _, release, thread, out = holding()

        def twice() -> float:
            with pytest.raises(ZeroDivisionError):
                (x.map_blocks(fails_in_one_block) @ x).sum().compute(scheduler="sync")
            return float((x @ x).sum().compute(scheduler="sync"))

        second, got = in_thread(twice)
        second.join(WAIT)
        release.set()
        thread.join(WAIT)
        assert "error" not in got, got
        assert got["value"] == pytest.approx(expected) and out == {"value": 1}


def test_a_block_that_ends_while_another_thread_computes_leaves_no_callback_behind() -> None:
    # Before: the other thread's computation put the block's callback back when it ended, and every
    # later dask computation in the process, spillkit or not, failed: "this Chest is closed".
    x = da.ones((100, 100), chunks=(50, 50))
    with spilling(available_memory="10 MiB") as chest:
        _, release, thread, out = holding(cache={})  # another part of the program: a cache of its own
    assert chest.closed
    release.set()
    thread.join(WAIT)
    assert out == {"value": 1}
    assert float(x.sum().compute(scheduler="sync")) == 10_000.0
    assert float(x.sum().compute()) == 10_000.0
    for callback in chest_callbacks():  # dask may keep it registered; it takes no computation on
        assert callback.chest is chest and not callback._runs


def test_the_next_block_takes_ended_blocks_callbacks_and_their_closed_chests_out_of_dask() -> None:
    # Before: each block that ended while another thread computed stayed in Callback.active with its
    # closed Chest, for the life of the process (helper-103 counted 35 after one round of threads).
    ended = []
    for _ in range(3):
        with spilling(available_memory="10 MiB") as chest:
            _, release, thread, out = holding(cache={})
        release.set()
        thread.join(WAIT)
        assert out == {"value": 1}
        ended.append(chest)
    assert any(callback.chest is ended[-1] for callback in chest_callbacks())  # dask put the last one back
    with spilling(available_memory="10 MiB") as chest:
        assert [callback.chest for callback in chest_callbacks()] == [chest]
        assert float(da.ones((100, 100), chunks=(50, 50)).sum().compute()) == 10_000.0
    assert chest_callbacks() == []
    assert all(closed.closed for closed in ended)


def test_a_block_closes_its_chest_only_once_another_threads_computation_is_done_with_it() -> None:
    # dask.config is the process's: a computation in another thread took this block's Chest. Before,
    # the block closed it under that computation, which failed with "this Chest is closed".
    x = matrix()
    expected = float((x @ x).sum().compute(scheduler="sync"))
    inside, release, waits = waits_in_first_block()

    with spilling(available_memory="1 MiB") as chest:
        thread, out = in_thread(lambda: float((x.map_blocks(waits) @ x).sum().compute(scheduler="sync")))
        assert inside.wait(WAIT)
    assert not chest.closed  # the computation has it
    release.set()
    thread.join(WAIT)
    assert "error" not in out, out
    assert out["value"] == pytest.approx(expected)
    assert chest.closed and chest.stats.spills > 0  # it did spill in it, and was closed at its end


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_a_key_put_by_hand_is_left_alone_whatever_the_scheduler(scheduler: str) -> None:
    # Before, with a scheduler= of dask's own: dask took the user's value for the computed one (a
    # dependent computed 1000 instead of 20) and then deleted the user's key.
    y = dask.delayed(lambda v: v + 1, pure=True)(1)
    z = dask.delayed(lambda v: v * 10, pure=True)(y)
    with spilling(available_memory="1 MiB") as chest:
        chest[y.key] = 100
        with pytest.warns(RuntimeWarning, match="already in the spilling"):
            assert z.compute(optimize_graph=False, scheduler=scheduler) == 20
        assert chest[y.key] == 100 and len(chest) == 1
        assert float(matrix().sum().compute(scheduler=scheduler)) > 0  # the Chest is free again


def test_bad_arguments_to_spilling_and_costs_are_refused_at_once(tmp_path: Any) -> None:
    # Before: the budget and policy given beside a Chest were silently dropped, and a string or a
    # dict was accepted, to fail inside the next computation with an unrelated message.
    chest = Chest(path=tmp_path / "c", available_memory="1 MiB")
    with pytest.raises(TypeError, match="available_memory, policy"), spilling(chest, "5 GiB", policy="lrc"):
        pass
    budget = r"not str '4 GiB'; for a budget: spilling\(available_memory=...\)"
    with pytest.raises(TypeError, match=budget), spilling("4 GiB"):  # type: ignore[arg-type]
        pass
    for bad in ({}, "4 GiB"):
        with pytest.raises(TypeError, match=r"needs a spillkit\.Chest"):
            costs(bad)  # type: ignore[arg-type]
    with spilling(chest, policy=None) as same:  # nothing asked of a new one: the Chest given is used
        assert same is chest
    chest.drop()


# ---- record() beside computations spilling() runs in memory (helper-67 findings 4 and 7) --------


def test_record_leaves_computations_spilling_runs_in_memory_alone(tmp_path: Any) -> None:
    # Before: a computation nested in a task (or a key put by hand) ran with a dict of its own, and
    # record raised TypeError into it, failing the whole computation; the nested one also cut the
    # outer one's trace short.
    from spillkit.dask import record
    from spillkit.trace import read_trace

    y = matrix()

    def inner(block: Any) -> Any:
        return block + float(y.sum().compute())

    expected = float((y.map_blocks(inner, meta=np.empty((0, 0))) + y).sum().compute(scheduler="sync"))
    with spilling(available_memory="2 MiB") as chest, record(tmp_path / "t.trace") as rec:
        got = float((y.map_blocks(inner, meta=np.empty((0, 0))) + y).sum().compute(optimize_graph=False))
        z = y + 1
        chest[z.__dask_keys__()[0][0]] = np.zeros((100, 100))
        assert float(z.sum().compute(optimize_graph=False)) == pytest.approx(float((y + 1).sum().compute()))
    assert got == pytest.approx(expected)
    traces = [read_trace(path) for path in rec.paths]
    assert len(traces) == 2  # the outer computation, and the last one (the one in memory is not recorded)
    outer = traces[0]
    assert len(outer.dependencies) > 40 and any(op[0] == "put" for op in outer.ops)  # the whole graph, recorded


def test_record_with_computations_in_two_threads_raises_nothing(tmp_path: Any) -> None:
    # Before: the second computation's hooks detached the first one's recorder (its trace cut short),
    # and the two removed the same listener: ValueError from list.remove, at times from the block's exit.
    from spillkit.dask import record

    x = matrix()
    expected = float((x @ x).sum().compute(scheduler="sync"))
    inside, release, waits = waits_in_first_block()

    with spilling(available_memory="2 MiB"), record(tmp_path / "t.trace") as rec:
        first, out_first = in_thread(lambda: float((x.map_blocks(waits) @ x).sum().compute()))
        assert inside.wait(WAIT)
        second, out_second = in_thread(lambda: float((x @ x).sum().compute()))
        second.join(WAIT)
        release.set()
        first.join(WAIT)
    assert "error" not in out_first and "error" not in out_second, (out_first, out_second)
    assert out_first["value"] == pytest.approx(expected) and out_second["value"] == pytest.approx(expected)
    assert len(rec.paths) == 1


def test_record_writes_its_first_path_when_a_computation_brings_its_own_chest(tmp_path: Any) -> None:
    # Before: record attached to the configured Chest first and left `path` with a header and no
    # operations; the real trace went to `path-1`.
    from spillkit.dask import record
    from spillkit.trace import read_trace

    x = matrix()
    mine, configured = Chest(available_memory="1 MiB"), Chest(available_memory="1 MiB")
    with dask.config.set(cache=configured), record(tmp_path / "one.trace") as rec:
        (x @ x).sum().compute(scheduler="sync", cache=mine)
    assert rec.paths == [str(tmp_path / "one.trace")] and sorted(p.name for p in tmp_path.iterdir()) == ["one.trace"]
    assert sum(op[0] == "put" for op in read_trace(rec.paths[0]).ops) == mine.stats.puts > 0
    mine.drop()
    configured.drop()


def test_record_gives_each_computation_its_trace_after_one_whose_start_failed(tmp_path: Any) -> None:
    # Found by review (helper-78): a graph with a cycle made record's start raise; dask then calls no
    # finish for it, and every later computation of the block went into one trace without its graph.
    from spillkit.dask import record
    from spillkit.trace import read_trace

    inc = lambda x: x + 1
    chest = Chest(available_memory="1 MiB")
    with dask.config.set(cache=chest), record(tmp_path / "t.trace") as rec:
        with pytest.raises(RuntimeError, match=r"[Cc]ycle"):
            dask.threaded.get({"a": (inc, "b"), "b": (inc, "a")}, "a")
        for i in range(3):
            assert dask.threaded.get({f"x{i}": 1, f"y{i}": (inc, f"x{i}")}, f"y{i}") == 2
    traces = [read_trace(path) for path in rec.paths]
    assert len(traces) == 3 and all(len(trace.dependencies) == 2 for trace in traces)
    chest.drop()


def test_a_computation_nested_after_its_block_ended_leaves_the_running_one_its_chest() -> None:
    # Found by review (helper-78): each computation's run is found by its graph. Matched by thread order
    # instead, the nested computation (run by the ended block's callback, which another thread put back)
    # took the running computation's run, and its end closed the Chest under it.
    p_inside, p_go, q_inside, q_go = (threading.Event() for _ in range(4))
    nested: dict[str, Any] = {}

    def p_task(v: int) -> int:
        p_inside.set()
        assert p_go.wait(WAIT)
        nested["value"] = dask.delayed(lambda x: x * 2)(21).compute(scheduler="sync")
        return v + 1

    def q_task(v: int) -> int:
        q_inside.set()
        assert q_go.wait(WAIT)
        return v

    with spilling(available_memory="10 MiB") as chest:
        p, out_p = in_thread(lambda: dask.delayed(p_task)(1).compute(scheduler="sync"))  # takes the Chest
        assert p_inside.wait(WAIT)
        q, out_q = in_thread(lambda: dask.delayed(q_task)(2).compute(scheduler="sync"))  # runs in memory
        assert q_inside.wait(WAIT)
    assert not chest.closed  # P has it
    q_go.set()
    q.join(WAIT)  # Q ends: dask puts back the set it found, with the block's callback in it
    p_go.set()
    p.join(WAIT)
    assert out_p == {"value": 2} and out_q == {"value": 2} and nested == {"value": 42}
    assert chest.closed and not os.path.exists(chest.path)


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_a_computation_started_while_a_block_ends_never_meets_its_closed_chest(
    scheduler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # helper-102: the block's callback stopped taking computations before dask.config gave back the
    # block's cache=, and a computation another thread started in between used the Chest unclaimed;
    # the block closed it under it ("the Chest at ... is closed"). The gap is widened here.
    x = matrix()
    expected = float((x @ x).sum().compute(scheduler="sync"))
    ending, started = threading.Event(), threading.Event()
    real_exit = ChestCallback.__exit__

    def slow_exit(self: ChestCallback, *args: object) -> None:
        real_exit(self, *args)
        if threading.current_thread() is threading.main_thread():
            ending.set()
            assert started.wait(WAIT)  # the other computation starts now

    monkeypatch.setattr(ChestCallback, "__exit__", slow_exit)

    def late() -> float:
        assert ending.wait(WAIT)
        started.set()
        return float((x.map_blocks(lambda block: block + 0) @ x).sum().compute(scheduler=scheduler))

    with spilling(available_memory="1 MiB") as chest:
        thread, out = in_thread(late)
    thread.join(WAIT)
    assert "error" not in out, out
    assert out["value"] == pytest.approx(expected)
    assert chest.closed


def test_a_computation_on_a_blocks_chest_settles_it_before_the_block_may_close_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # helper-102: the computation gave the Chest up before its last settle; the block, ending in
    # between, closed the Chest, and the settle raised "this Chest is closed" after the results were in.
    from spillkit.dask_loads import WorkerLoads

    x = matrix()
    expected = float((x @ x).sum().compute(scheduler="sync"))
    released, closed = threading.Event(), threading.Event()
    real_release = WorkerLoads.release

    def release(self: WorkerLoads) -> None:
        real_release(self)
        if threading.current_thread().name == "other":
            released.set()
            closed.wait(WAIT)  # the block ends here

    monkeypatch.setattr(WorkerLoads, "release", release)
    out: dict[str, Any] = {}

    def other() -> None:
        try:
            out["value"] = float((x @ x).sum().compute(scheduler="threads"))
        except BaseException as error:  # handed to the test
            out["error"] = error

    thread = threading.Thread(target=other, name="other")
    with spilling(available_memory="1 MiB") as chest:
        thread.start()
        assert released.wait(WAIT)
    closed.set()
    thread.join(WAIT)
    assert "error" not in out, out
    assert out["value"] == pytest.approx(expected)
    assert chest.closed


def slow_order_in(thread_name: str, until: threading.Event, reached: threading.Event) -> Callable[..., Any]:
    """dask.local.order, held in thread ``thread_name`` (once) until ``until``: dask calls it between the
    callbacks' start, which read dask.config's cache=, and start_state_from_dask, which reads it again."""
    real = dask.local.order

    def order(dsk: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == thread_name and not reached.is_set():
            reached.set()
            assert until.wait(WAIT)
        return real(dsk, *args, **kwargs)

    return order


def test_a_computation_that_meets_another_blocks_cache_unclaimed_never_uses_its_chest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # helper-103: thread A's callbacks decided for A's block; another thread's block began before dask read
    # dask.config's cache=, so A's computation ran on B's Chest, claimed by no one; B's block closed it at
    # once under A ("the Chest at ... is closed"). Unclaimed, A now runs in a dict of its own.
    a_in_order, b_installed, inside, release = (threading.Event() for _ in range(4))
    monkeypatch.setattr(dask.local, "order", slow_order_in("A", b_installed, a_in_order))

    def hold(x: int) -> int:
        inside.set()
        assert release.wait(WAIT)
        return x + 1

    out: dict[str, Any] = {}

    def thread_a() -> None:
        try:
            with spilling(available_memory=1_000_000):
                out["value"] = (dask.delayed(hold)(dask.delayed(lambda: 1)()) + 1).compute(scheduler="threads")
        except BaseException as error:  # handed to the test
            out["error"] = error

    def thread_b() -> None:
        assert a_in_order.wait(WAIT)
        with spilling(available_memory=1_000_000) as chest:
            b_installed.set()
            assert inside.wait(WAIT)  # A's computation runs now, with B's cache in force
        out["B closed"] = chest.closed
        release.set()

    threads = [threading.Thread(target=thread_a, name="A"), threading.Thread(target=thread_b, name="B")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert out == {"value": 3, "B closed": True}


def test_two_unclaimed_computations_with_the_same_keys_never_share_a_chest(monkeypatch: pytest.MonkeyPatch) -> None:
    # helper-103: A (as above) and B, which started while thread C's computation had dask's empty set of
    # callbacks in force, both ran on B's Chest unclaimed; their graphs share key names, so one's releases
    # deleted the other's inputs (KeyError). Each now runs in its thread's own dict.
    import spillkit.dask_callback as dask_callback

    events = {name: threading.Event() for name in ("a_in_order", "b_installed", "a_holds", "c_swapped", "b_done")}
    monkeypatch.setattr(dask.local, "order", slow_order_in("A", events["b_installed"], events["a_in_order"]))
    real_start = dask_callback.ChestCallback._start

    def start(self: ChestCallback, dsk: Any) -> None:
        if threading.current_thread().name == "C" and not events["c_swapped"].is_set():
            events["c_swapped"].set()  # dask's local_callbacks has put an empty set in force for now
            assert events["b_done"].wait(WAIT)
        real_start(self, dsk)

    monkeypatch.setattr(dask_callback.ChestCallback, "_start", start)

    def hold(x: int) -> int:
        events["a_holds"].set()
        assert events["b_done"].wait(WAIT)
        return x

    def graph(second: Callable[[int], int]) -> Any:  # the same key names in both threads
        x = dask.delayed(lambda: 41, pure=True)(dask_key_name="x")
        middle = dask.delayed(second)(x, dask_key_name="h")
        return dask.delayed(lambda h, x: h + x)(middle, x, dask_key_name="out")

    out: dict[str, Any] = {}

    def thread_a() -> None:
        try:
            with spilling(available_memory=1_000_000):
                out["A"] = graph(hold).compute(scheduler="threads")
        except BaseException as error:  # handed to the test
            out["A error"] = error

    def thread_b() -> None:
        assert events["a_in_order"].wait(WAIT)
        with spilling(available_memory=1_000_000):
            events["b_installed"].set()
            assert events["a_holds"].wait(WAIT)  # A runs now, with B's cache in force
            threading.Thread(target=lambda: dask.delayed(lambda: 0)().compute(scheduler="sync"), name="C").start()
            assert events["c_swapped"].wait(WAIT)
            try:
                out["B"] = graph(lambda x: x).compute(scheduler="threads")  # with no callback at all
            except BaseException as error:  # handed to the test
                out["B error"] = error
            events["b_done"].set()
            a.join(WAIT)

    a, b = threading.Thread(target=thread_a, name="A"), threading.Thread(target=thread_b, name="B")
    a.start()
    b.start()
    a.join(WAIT)
    b.join(WAIT)
    assert out == {"A": 82, "B": 82}


def test_a_computation_starting_as_a_block_gives_back_its_settings_never_settles_the_chest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # helper-104: started after the block's cache went inactive but before dask.config was restored, a
    # computation was "plain" to the callback, yet dask read the block's cache, and the callback took the
    # run for the Chest's own (deferred, pinned, settled it). The block closed the Chest, no one having
    # it, and the computation's next settle raised "this Chest is closed". The gap is widened here.
    import spillkit.dask

    gap, started, inside, go = (threading.Event() for _ in range(4))
    real_loads_of = spillkit.dask._loads_of

    def slow_loads_of(setting: Any) -> Any:
        if threading.current_thread() is threading.main_thread() and not gap.is_set():
            gap.set()  # the cache is inactive, and dask.config not yet restored
            assert started.wait(WAIT)
        return real_loads_of(setting)

    monkeypatch.setattr(spillkit.dask, "_loads_of", slow_loads_of)

    def first(x: int) -> int:
        started.set()  # the computation's state is made by now
        return x + 1

    def second(x: int) -> int:
        inside.set()
        assert go.wait(WAIT)  # the block closes its Chest meanwhile
        return x + 1

    def late() -> int:
        assert gap.wait(WAIT)
        return int(dask.delayed(second)(dask.delayed(first)(1)).compute(scheduler="sync"))

    thread, out = in_thread(late)
    with spilling(available_memory="1 MiB") as chest:
        pass
    assert inside.wait(WAIT)
    assert chest.closed
    go.set()
    thread.join(WAIT)
    assert out == {"value": 3}


def test_one_computations_end_leaves_the_pins_of_another_on_the_same_callback() -> None:
    # helper-104: the pins of running tasks' inputs and of partd stores were the callback's, not each
    # computation's: the first of two computations on one costs(chest) to end unpinned the other's.
    partd = pytest.importorskip("partd")
    chest = Chest(available_memory="10 MiB")
    made, go = threading.Event(), threading.Event()

    def use(store: Any) -> int:
        made.set()
        assert go.wait(WAIT)
        return 1

    store = dask.delayed(partd.Dict)(dask_key_name="store")
    graph = dask.delayed(use)(store, dask_key_name="a")
    with costs(chest):
        thread, out = in_thread(lambda: graph.compute(cache=chest, scheduler="sync"))
        assert made.wait(WAIT)
        assert chest.engine._pins == {"store": 2}  # the running task's input, and the partd store
        assert dask.delayed(lambda: 2)().compute(cache=chest, scheduler="sync") == 2
        assert chest.engine._pins == {"store": 2}  # before: {} (the second computation's end took them)
        go.set()
        thread.join(WAIT)
    assert out == {"value": 1}
    assert not chest.engine._pins
    chest.close()


def test_a_dask_config_set_that_outlives_a_block_does_not_leave_its_scheduler_in_force() -> None:
    # helper-104: a dask.config.set entered during a block and left after it put back the ended block's
    # scheduler; the next block then took it for a scheduler of the user's and did not load in workers.
    import spillkit.dask

    first = spilling(available_memory="1 MiB")
    first.__enter__()
    user = dask.config.set(scheduler="threads")
    user.__enter__()
    first.__exit__(None, None, None)
    user.__exit__(None, None, None)  # puts back what it found: the first block's scheduler
    stale = spillkit.dask._loads_of(dask.config.get("scheduler", None))
    assert stale is not None and not stale.active
    with spilling(available_memory="1 MiB") as chest:
        current = spillkit.dask._loads_of(dask.config.get("scheduler", None))
        assert current is not None and current.chest is chest  # before: the ended block's, left in force
        x = matrix()
        assert float((x @ x).sum().compute()) == pytest.approx(float((x @ x).sum().compute(scheduler="sync")))
    assert "scheduler" not in dask.config.config  # what the first block found: nothing


def test_blocks_entered_and_left_while_another_thread_uses_dask_callbacks_never_raise(tmp_path: Any) -> None:
    # Before (helper-108): taking ended callbacks out iterated Callback.active in Python while another
    # thread entered and left a dask Callback: "Set changed size during iteration" out of `with spilling()`.
    chest = Chest(path=tmp_path / "c")
    stop, errors, rounds = threading.Event(), [], [0]

    def other_thread() -> None:  # e.g. a ProgressBar in another part of the program
        while not stop.is_set():
            with Callback(pretask=lambda *args: None):
                pass

    def blocks() -> None:
        try:
            while not stop.is_set() and rounds[0] < 20_000:
                with ChestCallback(chest):
                    rounds[0] += 1
        except BaseException as error:  # handed to the test
            errors.append(error)
        finally:
            stop.set()

    threads = [threading.Thread(target=other_thread), threading.Thread(target=blocks)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads switch often: the window is a few bytecodes wide
    try:
        for thread in threads:
            thread.start()
        stop.wait(5)
    finally:
        stop.set()
        sys.setswitchinterval(interval)
    for thread in threads:
        thread.join(WAIT)
    assert errors == [] and rounds[0] > 1000
    assert chest_callbacks() == []
    chest.drop()
