"""The callback that makes a Chest a good cache for dask's local schedulers (:class:`ChestCallback`).

Part of :mod:`spillkit.dask`, which re-exports everything here: dask's local
schedulers store each task's result in ``cache[key]``, read it once per
dependent, and ``del`` it right after its last reader ran; but they store a
result *before* deleting the inputs it was the last reader of, so a budget
enforced inside ``__setitem__`` writes values that are about to be deleted.
:class:`ChestCallback` defers making room until dask's releases are done, pins
what running tasks use and what the graph itself holds, measures task
durations as recompute costs, gives graph-aware policies the graph, and lets
one computation at a time use a :func:`~spillkit.dask.spilling` Chest.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Hashable, Mapping
from typing import Any

from .extras import missing_extra

try:
    import dask
    from dask._task_spec import DataNode
    from dask.callbacks import Callback
except ImportError as error:  # (tests/test_extras.py)
    raise missing_extra("spillkit.dask", "dask", "dask") from error

from .chest import Chest
from .dask_client import warn_if_distributed
from .dask_loads import WorkerLoads
from .dask_owner import Run, _Unshared, forget_ended
from .dask_record import plan_from_dask
from .dask_replan import Replanner
from .picklers import is_partd_store
from .policies import GraphAware

__all__ = ["ChestCallback", "plan_from_dask"]


_OURS = "spillkit-chest-callbacks"  # in a computation's state: the callbacks whose Chest it uses
_REPLAN = "spillkit-replanners"  # in a computation's state: callback id -> its graph-aware policy's Replanner


class ChestCallback(Callback):
    """Makes a Chest a good cache for dask's local schedulers. Use as a context manager.

    While a computation runs, puts do not make room; after each task, once dask
    has deleted the inputs it no longer needs, the Chest settles back within
    its budget. With ``costs=True`` each task's duration (from just before it
    is submitted to just after its result is stored, as dask's own Profiler
    measures it) becomes its key's recompute cost before the policy first has
    to rank it. Only the task's own duration is used, not its inputs': the
    local scheduler reloads a spilled value and never recomputes it, so the
    cost only has to rank values against each other. Graph-aware policies
    receive the graph and dask's planned order when the computation starts.

    Parameters
    ----------
    chest : Chest
        The Chest computations use as ``cache=`` (given, or a :func:`~spillkit.dask.spilling` block's); an attribute.
    costs : bool, default True
        Measure each task's duration as its key's recompute cost (above); kept as the attribute ``measure``.

    Raises
    ------
    TypeError
        When ``chest`` is not a :class:`~spillkit.Chest`. Entering warns (RuntimeWarning) while a dask.distributed
        Client is active; so does a computation whose ``cache=`` is neither ``chest`` nor a ``spilling()`` one's.

    Notes
    -----
    When a computation raises (in a task, or here: a cycle in the graph a graph-aware policy plans, a full disk
    quota while settling), dask still ends it through this callback: its pins and its deferral go, and the Chest
    settles within its budget. What its tasks stored stays in the Chest (a ``spilling()`` block's takes it out)
    until a computation this callback starts later, with some of those keys in its graph, deletes them (none
    while another runs).

    Thread-safety: dask calls these hooks from its scheduling thread; the
    Chest's own lock covers the rest. Once its ``with`` block has ended it takes
    on no new computation (dask may still call it: see :meth:`_start`), and
    computations it began finish as usual.
    """

    def __init__(self, chest: Chest, costs: bool = True) -> None:
        if not isinstance(chest, Chest):
            raise TypeError(f"ChestCallback needs a spillkit.Chest, not {type(chest).__name__}")
        super().__init__()  # type: ignore[no-untyped-call]
        self.chest = chest
        self._entered = False  # inside its with block: registered in Callback.active
        self._over = False  # its with block has ended: new computations are not its
        self.measure = costs
        self._starts: dict[Hashable, float] = {}
        self._stored: set[Hashable] = set()  # keys computations stored in the Chest (results stay there)
        self._runs: dict[int, list[Run]] = {}  # per scheduling thread, innermost last: computations under way

    def _start(self, dsk: Mapping[Any, Any]) -> None:
        if self._over:
            # dask's local_callbacks puts back the set of callbacks it found when a computation
            # started, so a computation in another thread that outlived the block put this one
            # back in Callback.active: it is not this callback's, and the Chest may be closed.
            return
        if self._entered:
            # The same swap, with two computations in two threads that end out of order, put back
            # an empty set, and the rest of the block ran without this callback: each computation
            # that starts puts it back in the set in force (nested ones then meet it: role_for).
            Callback.active.add(self._callback)
        cache = dask.config.get("cache", None)
        if isinstance(cache, WorkerLoads) and cache.chest is self.chest and cache.active:
            run = Run(cache.role_for(dsk), cache, dsk)
        else:
            run = Run("plain", None, dsk)
            self._clear_leftovers(dsk)
        if run.role != "private":
            # Deferred from now, not from _start_state: dask stores the graph's literal data in between,
            # and making room for it would write it, freeing nothing (the graph holds it). Undone in
            # _start_state if the computation's cache turns out not to be this Chest.
            self._defer(1)
            run.deferred = True
        self._runs.setdefault(threading.get_ident(), []).append(run)

    def _clear_leftovers(self, dsk: Mapping[Any, Any]) -> None:
        # dask's local scheduler takes a key it finds in the cache for computed, and then its
        # dependents fail (KeyError): a key an earlier computation left (its result, or what a
        # failed one held) goes first, unless a computation is running on the Chest (then it may be that one's).
        chest = self.chest
        with chest.engine.lock:
            if chest.engine.deferred_blocks or not self._stored:
                return
            for key in [key for key in dsk if key in self._stored]:
                self._stored.discard(key)
                if key in chest:
                    del chest[key]

    def _run(self, dsk: Mapping[Any, Any], pop: bool = False) -> Run | None:
        """This thread's run of the computation of graph ``dsk`` (None if this callback did not start it)."""
        tid = threading.get_ident()
        runs = self._runs.get(tid, [])
        for at in range(len(runs) - 1, -1, -1):
            if runs[at].graph is dsk:
                if not pop:
                    return runs[at]
                run = runs.pop(at)
                if not runs:
                    self._runs.pop(tid, None)
                return run
        return None

    def _defer(self, change: int) -> None:
        engine = self.chest.engine
        with engine.lock:
            engine.deferred_blocks += change  # counted: computations on one Chest may overlap
            engine.deferred = engine.deferred_blocks > 0
            if not engine.deferred:
                engine.settle()

    def __enter__(self) -> ChestCallback:
        warn_if_distributed()
        forget_ended(ChestCallback)
        super().__enter__()  # type: ignore[no-untyped-call]
        self._entered, self._over = True, False
        return self

    def __exit__(self, *args: object) -> None:
        self._entered, self._over = False, True
        super().__exit__(*args)  # type: ignore[no-untyped-call]
        forget_ended(ChestCallback)

    def _start_state(self, dsk: Mapping[Any, Any], state: dict[str, Any]) -> None:
        # Here, not in _start: only now is the computation's cache known, and a computation that
        # does not use this Chest (another thread's, one spilling() handed a dict) is left alone.
        cache, run = state["cache"], self._run(dsk)
        if run is None:  # (a _start that raised, or one that left the computation alone)
            return
        if run.role == "private" and run.cache is not None:
            private = run.cache.end_private()
            if cache is run.cache:
                state["cache"] = private  # the computation keeps its dict, to the results it reads
            run.role = "own dict"
            return
        # A run _start found "plain" never uses a spilling() cache's Chest: dask read the cache after a block
        # ended (or began), and WorkerLoads serves its Chest only to the computation that claimed it.
        blocks = isinstance(cache, WorkerLoads) and cache.chest is self.chest and run.role != "plain"
        if cache is not self.chest and not blocks:
            if run.deferred:  # not this Chest after all (cache= given, keys put by hand): no deferral for it
                self._defer(-1)
                run.deferred = False
            if run.role == "claimed" and run.cache is not None:
                run.cache.release()  # it never uses the Chest: another computation may have it
                run.role = "plain"
            if not isinstance(cache, (_Unshared, WorkerLoads)):  # not another spilling() block's (a thread's)
                warnings.warn(
                    "this computation's cache= is not the Chest given to ChestCallback", RuntimeWarning, stacklevel=2
                )
            return
        engine, policy = self.chest.engine, self.chest.policy
        # Literal data (a numpy array given to from_array, a persisted collection's chunks) is held by
        # the graph: writing it would free nothing. Pinned for the computation, so it is never a victim.
        run.data = tuple(key for key, task in dsk.items() if isinstance(task, DataNode))
        if isinstance(policy, GraphAware):
            plan = plan_from_dask(dsk)  # if it raises (a cycle), _finish undoes the deferral
            with engine.lock:
                policy.plan(plan)
                # dask stored the literal data before this plan existed: it ran, as a replay's puts of it say
                # (helper-120: otherwise "now" lagged the plan's positions by one per literal key).
                for key in run.data:
                    policy.ran(key)
            state.setdefault(_REPLAN, {})[id(self)] = Replanner(policy, len(dsk))
        state.setdefault(_OURS, set()).add(id(self))  # _finish undoes the count only for these
        engine.pin(run.data)

    def _pretask(self, key: Hashable, dsk: Mapping[Any, Any], state: dict[str, Any]) -> None:
        if id(self) not in state.get(_OURS, ()):
            return
        # A running task holds its inputs, and may change them in place (dask's disk shuffle appends
        # to the partd object it is given): spilled meanwhile, the copy on disk would miss the change.
        inputs = tuple(state["dependencies"].get(key, ()))
        run = self._run(dsk)
        if inputs and run is not None:  # (the run's own: another computation's end leaves them pinned)
            self.chest.engine.pin(inputs)
            run.inputs[key] = inputs
        if self.measure:
            self._starts[key] = time.perf_counter()

    def _posttask(self, key: Hashable, result: Any, dsk: Mapping[Any, Any], state: dict[str, Any], wid: Any) -> None:
        if id(self) not in state.get(_OURS, ()):
            return
        run = self._run(dsk)
        inputs = () if run is None else run.inputs.pop(key, ())
        if inputs:
            self.chest.engine.unpin(inputs)
        start = self._starts.pop(key, None)
        self._stored.add(key)
        if run is not None and is_partd_store(result):
            # Appended to in place by the tasks given it (dask's disk shuffle), between them too: a spilled
            # copy would miss those appends (the picklers refuse it anyway). Pinned, so it is never a victim,
            # and recorded as a pin, so a replay keeps it in memory as the live run did.
            self.chest.engine.pin((key,))
            run.stores.append(key)
        if start is not None and key in self.chest:
            self.chest.set_cost(key, time.perf_counter() - start)
        replanner = state.get(_REPLAN, {}).get(id(self))
        if replanner is not None:  # a graph-aware policy: its plan, predicted again if a key it keeps is overdue
            replanner.after_task(self.chest, key, state)
        self.chest.settle()

    def _finish(self, dsk: Mapping[Any, Any], state: dict[str, Any], errored: bool) -> None:
        run = self._run(dsk, pop=True)
        if run is None:
            return
        try:
            if run.cache is not None and run.role == "claimed":
                # dask reads the results after this, when the Chest may be another computation's
                state["cache"] = run.cache.hand_back(dsk, keep=not errored)
            elif run.cache is not None and run.role == "private":
                run.cache.end_private()  # it failed before its state was made: the thread is routed no more
        finally:
            try:
                self._end(run, id(self) in state.get(_OURS, ()))
            finally:  # only now: released before its last settle, a block ending meanwhile closed the Chest under it
                if run.cache is not None:
                    if run.role == "claimed":
                        run.cache.release()
                    run.cache.close_if_due()  # its block ended while this computation had the Chest

    def _end(self, run: Run, ours: bool) -> None:
        # Whatever happened (a failed hand-back too): every pin and deferral of the computation goes.
        engine = self.chest.engine
        if run.data:
            engine.unpin(run.data)
        if ours:
            self._starts.clear()
            for inputs in run.inputs.values():  # tasks that never ended (the computation failed)
                engine.unpin(inputs)
            run.inputs.clear()
            engine.unpin(run.stores)
            run.stores.clear()
            self._stored = {key for key in self._stored if key in self.chest}  # what dask released is gone
        with engine.lock:
            if run.deferred:
                self._defer(-1)
            if ours:
                engine.settle()
