"""Re-predicting a graph-aware policy's plan while dask's local scheduler runs (:class:`Replanner`).

Part of :mod:`spillkit.dask`. The plan a computation starts with predicts the order of one
worker. With two or more, a task that ends while another is still running pushes its
dependents on top of dask's ready stack, above readers the plan put first; a key whose
readers were planned for "now" can then wait dozens of tasks. NextUse counts such an
overdue key as due at once and keeps it, evicting others instead: in ``bench_dask``'s
rechunk one 107 MiB block was reloaded 9-10 times in some runs (1.0-1.5 GiB read against
0.37 GiB in others) while an overdue one stayed (session 14). After a task, when a
resident key is overdue, the plan is predicted again from dask's real stack; a trace
records the new order (a ``replan`` line) and a replay reorders its plan at the same point.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from .chest import Chest
from .policies import GraphAware

__all__ = ["REPLANS", "Replanner"]

# At most this many checks (and re-predictions) per computation: O(32 x graph) in all. helper-91 timed one
# re-prediction of a 167,200-task graph at 0.18 s, against 5.75 s to plan it first. On rechunk (130 tasks,
# 24 runs each) 32 and 64 read the same: at most 651 MiB either way (/work/notes/s15rechunk_replans.txt).
REPLANS = 32


class Replanner:
    """Re-predicts ``policy``'s plan from dask's state when a key it keeps is overdue.

    Checks after every ``every`` tasks (``len(graph) // REPLANS``, at least 1), so a
    large graph is re-predicted at most about :data:`REPLANS` times. Called in dask's
    scheduling thread; takes the engine's lock for the check and the re-prediction.
    """

    def __init__(self, policy: GraphAware, tasks: int) -> None:
        self.policy = policy
        self.plan = policy.graph_plan  # this computation's: a nested one's plan is not re-predicted from this state
        self.every = max(1, tasks // REPLANS)
        self._since = 0
        self.replans = 0  # how many times the plan was predicted again

    def after_task(self, chest: Chest, key: Hashable, state: Mapping[str, Any]) -> None:
        """Called once the task ``key``'s result is stored, before the Chest settles."""
        self._since += 1
        check = self._since >= self.every
        if check:
            self._since = 0
        ready, running, waiting = state.get("ready"), state.get("running"), state.get("waiting")
        with chest.engine.lock:
            if chest.policy is not self.policy or self.policy.graph_plan is not self.plan:
                return
            self.policy.ran(key)  # (a result written straight to disk was never admitted)
            if ready is None or running is None or waiting is None:  # not dask's local scheduler state
                return
            if check and self.policy.overdue():
                tasks = self.plan.predict(ready, running, waiting)
                self.policy.reorder(tasks)
                chest.engine.replanned(tuple(tasks))  # for a trace: a replay reorders its plan here too
                self.replans += 1
