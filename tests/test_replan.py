"""GraphPlan.replan and spillkit/dask_replan.py: the plan predicted again from dask's real ready stack."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import pytest

from spillkit.policies import NextUse
from spillkit.policies._graph import NEVER, GraphPlan

da = pytest.importorskip("dask.array")

from dask.callbacks import Callback  # noqa: E402

from spillkit import Chest  # noqa: E402
from spillkit.dask import costs, plan_from_dask, record, spilling  # noqa: E402
from spillkit.dask_replan import REPLANS, Replanner  # noqa: E402
from spillkit.replay import replay  # noqa: E402
from spillkit.trace import read_trace  # noqa: E402

MiB = 1 << 20


def two_readers() -> tuple[GraphPlan, NextUse]:
    """x read by tx, y by ty: planned tx (2) before ty (3); x and y resident."""
    plan = GraphPlan({"x": [], "y": [], "tx": ["x"], "ty": ["y"]}, {"x": 0, "y": 1, "tx": 2, "ty": 3})
    policy = NextUse(plan)
    for key in ("x", "y"):
        policy.admitted(key, MiB, 0.0)
    return plan, policy


def test_a_reader_pushed_down_the_stack_makes_its_input_the_victim() -> None:
    plan, policy = two_readers()
    assert policy.victim() == "y"  # as planned: y is read last
    policy.reorder(plan.predict(["tx", "ty"], [], {}))  # dask's real stack: ty on top, runs first
    assert plan.next_use("y") == 2 and plan.next_use("x") == 3
    assert policy.victim() == "x" and not policy.overdue()


def test_running_tasks_end_first_and_push_their_readers_on_top() -> None:
    deps = {"a": [], "b": [], "r": ["a"], "s": ["b"], "t": ["r"]}
    plan = GraphPlan(deps, {"a": 0, "b": 1, "r": 2, "s": 3, "t": 4})
    for task in ("a", "b"):
        plan.finished(task)
    assert plan.predict(["s"], ["r"], {"t": {"r"}}) == ["r", "t", "s"]  # r still runs; t waits for it
    plan.reorder(["r", "t", "s"])
    assert [plan.order[task] for task in ("r", "t", "s")] == [2, 3, 4]  # r, then t (on top of s), then s
    plan.finished("r")
    assert plan.next_use("b") == 4 and plan.next_use("r") == 3 and plan.next_use("a") == NEVER


def test_a_hand_built_plan_keeps_its_first_positions_as_dask_s_priorities_after_a_reorder() -> None:
    # dask pushes a finished task's readers in dask.order's priority, which a reorder does not change;
    # a plan built from positions alone takes them as that priority, and must not follow its new ones.
    plan = GraphPlan({"a": [], "b": [], "ra": ["a"], "rb": ["b"]}, {"a": 0, "b": 1, "ra": 2, "rb": 3})
    state: tuple[list[Hashable], list[Hashable], dict[Hashable, set[Hashable]]] = (
        [],
        ["a", "b"],
        {"ra": {"a"}, "rb": {"b"}},
    )
    before = plan.predict(*state)
    plan.reorder(["b", "a", "rb", "ra"])
    assert plan.order == {"a": 2, "b": 1, "ra": 4, "rb": 3}
    assert plan.priority == {"a": 0, "b": 1, "ra": 2, "rb": 3}
    assert plan.predict(*state) == before == ["a", "b", "rb", "ra"]


def test_an_overdue_key_is_seen() -> None:
    plan, policy = two_readers()
    for task in ("x", "y", "ty", "other"):
        plan.finished(task)  # ("other" is no task of the graph: ignored)
    for task in ("z1", "z2"):  # tasks the plan did not foresee
        plan.dependencies[task] = []
        plan.finished(task)
    assert not policy.overdue()  # now is 4: tx (2) is late by OVERDUE, no more
    plan.dependencies["z3"] = []
    plan.finished("z3")
    assert policy.overdue()


class Recorder(Callback):
    """Re-predicts the plan from dask's real state after every task; records predictions and the real order."""

    def __init__(self) -> None:
        super().__init__()
        self.plan, self.ran, self.predicted = GraphPlan({}, {}), [], []

    def _start(self, dsk: Mapping[Any, Any]) -> None:
        self.plan = plan_from_dask(dsk)  # the graph dask runs (with its finalize task), as ChestCallback does

    def _posttask(self, key: Hashable, result: Any, dsk: Mapping[Any, Any], state: dict[str, Any], wid: Any) -> None:
        self.ran.append(key)
        self.plan.finished(key)
        self.plan.reorder(self.plan.predict(state["ready"], state["running"], state["waiting"]))
        self.predicted.append(dict(self.plan.order))


def test_with_one_worker_the_prediction_from_any_point_is_the_real_order() -> None:
    # Against dask's own local scheduler (sync: one worker): the stack replayed from its real state
    # after any task gives every later task the position it then really ran at.
    x = da.random.RandomState(0).random((60, 60), chunks=(10, 30))
    collection = (x.rechunk((30, 10)) + x.T).sum(axis=0)
    recorder = Recorder()
    with recorder:
        collection.compute(scheduler="sync")
    position = {key: i for i, key in enumerate(recorder.ran)}
    assert len(position) > 40
    for i, predicted in enumerate(recorder.predicted):
        later = recorder.ran[i + 1 :]
        offset = predicted[later[0]] - position[later[0]] if later else 0
        assert [predicted[key] - offset for key in later] == [position[key] for key in later], i


class Finish(Callback):
    def __init__(self) -> None:
        super().__init__()
        self.states: list[dict[str, Any]] = []

    def _finish(self, dsk: Mapping[Any, Any], state: dict[str, Any], errored: bool) -> None:
        self.states.append(state)


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_a_computation_under_a_graph_aware_policy_has_a_replanner(scheduler: str) -> None:
    x = da.random.RandomState(1).random((400, 400), chunks=(50, 400))
    collection = x.rechunk((400, 50)).sum(axis=0)
    expected = collection.compute(scheduler="sync")
    finish = Finish()
    with spilling(available_memory=int(0.5 * MiB), policy=NextUse()) as chest, finish:
        got = collection.compute(scheduler=scheduler)
        assert isinstance(chest, Chest) and chest.stats.spills > 0
    assert (got == expected).all()
    (state,) = finish.states
    (replanner,) = state["spillkit-replanners"].values()
    assert isinstance(replanner, Replanner) and replanner.policy is chest.policy
    assert replanner.every == max(1, len(state["finished"]) // REPLANS)
    if scheduler == "sync":  # one worker runs the plan as predicted: nothing is ever overdue
        assert replanner.replans == 0


def test_a_result_written_straight_to_disk_still_counts_as_run() -> None:
    # A merge block of 5 MB over a 1 MiB budget goes straight to disk, never admitted: its 16 inputs kept it
    # as a pending reader, overdue for the rest of the run, and a sync run re-predicted 39-55 times (helper-91).
    x = da.random.RandomState(0).random((800, 800), chunks=(50, 800))
    collection = (x.rechunk((800, 50)) + x.T).sum(axis=0)
    finish = Finish()
    with spilling(available_memory=MiB) as chest, finish:
        collection.compute(scheduler="sync")
        assert chest.stats.direct_writes > 0
        (state,) = finish.states
        (replanner,) = state["spillkit-replanners"].values()
        plan = replanner.plan
        assert replanner.replans == 0
        assert {task for task in plan.dependencies if task in state["finished"]} <= plan._done
        assert not any(plan._pending.values())


class PlanLag(Callback):  # type: ignore[misc]
    """After each task of a sync run: its planned position minus the plan's "now" (0 when they line up)."""

    def __init__(self, chest: Chest) -> None:
        super().__init__()
        self.chest = chest
        self.lags: set[float] = set()

    def _posttask(self, key: Hashable, result: Any, dsk: Any, state: Any, worker: Any) -> None:
        plan = self.chest.policy.graph_plan
        self.lags.add(plan.order[key] - plan.now)


@pytest.mark.parametrize("literal", [False, True], ids=["computed input", "persisted input"])
def test_the_plans_now_lines_up_with_its_positions_after_literal_data(literal: bool) -> None:
    # helper-120: dask stores the literal data (a persisted array's chunks) before the plan is made, so they
    # never counted as run: "now" lagged the positions by one per literal key (20 here), the replay's did not
    # (it runs every put), replays of NextUse diverged, and nothing looked overdue, so no replan.
    with spilling(available_memory=MiB, policy="nextuse") as chest:
        x = da.random.RandomState(0).random((2000, 200), chunks=(100, 100))
        source = x.persist() if literal else x
        lag = PlanLag(chest)
        with lag:
            collection = source[:, :50].sum() + source.sum()
            collection.compute(scheduler="sync")
        assert lag.lags == {0.0}  # before, persisted: {20.0}


def overdue_setup() -> tuple[GraphPlan, NextUse, Chest, Replanner]:
    """x and y resident, read by tx (planned 2) and ty (3); four other tasks z1-z4 are yet to run."""
    deps: dict[Hashable, list[Hashable]] = {"x": [], "y": [], "tx": ["x"], "ty": ["y"]}
    deps.update({f"z{i}": [] for i in range(1, 5)})
    plan = GraphPlan(deps, {"x": 0, "y": 1, "tx": 2, "ty": 3, "z1": 4, "z2": 5, "z3": 6, "z4": 7})
    policy = NextUse(plan)
    chest = Chest(available_memory=MiB, policy=policy)
    chest["x"], chest["y"] = b"x" * 10, b"y" * 10  # admitted: x and y ran
    return plan, policy, chest, Replanner(policy, 1)  # a check after every task


def test_an_overdue_key_makes_the_replanner_predict_again() -> None:
    plan, policy, chest, replanner = overdue_setup()
    state = {"ready": ["ty", "tx"], "running": set(), "waiting": {}}  # dask's stack: tx on top
    for task in ("z1", "z2", "z3"):  # the other worker ran these first: tx is now 2 late, no more
        replanner.after_task(chest, task, state)
    assert replanner.replans == 0 and plan.next_use("x") == 2
    replanner.after_task(chest, "z4", state)  # 3 late: predicted again from the stack
    assert replanner.replans == 1 and plan.order["tx"] == 6 and plan.order["ty"] == 7
    assert plan.next_use("x") == 6 and not policy.overdue()
    chest.close()


def test_a_nested_computation_s_plan_is_not_re_predicted_from_the_outer_state() -> None:
    outer, policy, chest, replanner = overdue_setup()
    nested = GraphPlan({f"n{i}": [] for i in range(6)} | {"tx": ["x"]}, {"tx": 0} | {f"n{i}": i + 1 for i in range(6)})
    for i in range(6):
        nested.finished(f"n{i}")  # x is overdue in this plan too: its reader tx was planned first
    with chest.engine.lock:
        policy.plan(nested)  # a nested computation's, in force now
    before = dict(nested.order)
    replanner.after_task(chest, "z1", {"ready": ["ty", "tx"], "running": set(), "waiting": {}})
    assert policy.overdue() and replanner.replans == 0 and nested.order == before
    assert "z1" not in outer._done  # neither plan touched
    chest.close()


class ForcedReplan(Callback):
    """After the ``at``-th task, reorders the Chest's graph-aware plan (the remaining tasks reversed), as a
    Replanner would with another prediction, and tells listeners: a replan at a known point of a sync run."""

    def __init__(self, chest: Chest, at: int) -> None:
        super().__init__()
        self.chest, self.at, self.done = chest, at, 0

    def _posttask(self, key: Hashable, result: Any, dsk: Mapping[Any, Any], state: dict[str, Any], wid: Any) -> None:
        self.done += 1
        if self.done == self.at:
            policy = self.chest.policy
            assert isinstance(policy, NextUse)
            tasks = policy.graph_plan.predict(state["ready"], state["running"], state["waiting"])[::-1]
            with self.chest.engine.lock:
                policy.reorder(tasks)
                self.chest.engine.replanned(tuple(tasks))


def test_a_replan_is_recorded_and_a_replay_reorders_its_plan_there(tmp_path: Path) -> None:
    x = da.random.default_rng(3).random((1_500, 1_500), chunks=(300, 300))
    collection = (x.dot(x.T) - x.mean(axis=0)).sum(axis=1)
    budget = 3 * MiB
    chest = Chest(available_memory=budget, policy="nextuse", path=tmp_path / "chest")
    path = tmp_path / "live.trace.gz"
    with record(path, workload="dot"), costs(chest), ForcedReplan(chest, at=20):
        collection.compute(scheduler="sync", cache=chest)
    trace = read_trace(path)
    assert [op[0] for op in trace.ops].count("replan") >= 1  # (the Replanner may follow with its own)
    live = [(op[0], op[1]) for op in trace.ops if op[0] in ("spill", "evict")]
    replayed = replay(trace, "nextuse", budget, mode="settled", keep_decisions=True)
    assert [d for d in replayed.decisions if d[0] not in ("load", "reuse")] == live
    trace.ops = [op for op in trace.ops if op[0] != "replan"]  # the line is what the replay followed
    without = replay(trace, "nextuse", budget, mode="settled", keep_decisions=True)
    assert [d for d in without.decisions if d[0] not in ("load", "reuse")] != live
    chest.drop()


def test_a_replay_counts_a_result_written_straight_to_disk_as_run(tmp_path: Path) -> None:
    # The live callback records every task that ends (GraphAware.ran); a replay must too, or the inputs of a
    # result over the budget keep it as a reader and rank differently (helper-92: skipping it passed).
    x = da.random.RandomState(0).random((800, 800), chunks=(50, 800))
    collection = (x.rechunk((800, 50)) + x.T).sum(axis=0)
    budget = MiB
    chest = Chest(available_memory=budget, policy="nextuse", path=tmp_path / "chest")
    path = tmp_path / "live.trace.gz"
    with record(path, workload="merge"), costs(chest):
        collection.compute(scheduler="sync", cache=chest)
    assert chest.stats.direct_writes > 0
    trace = read_trace(path)
    live = [(op[0], op[1]) for op in trace.ops if op[0] in ("spill", "evict")]
    assert len(live) > 20
    replayed = replay(trace, "nextuse", budget, mode="settled", keep_decisions=True)
    assert [d for d in replayed.decisions if d[0] not in ("load", "reuse")] == live
    chest.drop()
