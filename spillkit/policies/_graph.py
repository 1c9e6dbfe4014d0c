"""What a task graph says about each key's future: its remaining readers, in planned order."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence

__all__ = ["NEVER", "GraphPlan", "local_schedule"]

NEVER = float("inf")  # the next use of a key nobody will read again (or that the graph does not know)


class GraphPlan:
    """Readers of every key and the planned position of every task.

    Built from ``dependencies`` (task -> the keys it reads) and ``order``
    (task -> position in the planned execution order, e.g. ``dask.order``).
    :meth:`finished` is called when a task's result is stored: its inputs
    have then been read by it, so each loses that reader. This follows what
    happened, not the plan, so it stays exact when threads run tasks out of
    order. Pure bookkeeping; not thread-safe (the engine's lock covers it).
    """

    def __init__(self, dependencies: Mapping[Hashable, Sequence[Hashable]], order: Mapping[Hashable, int]) -> None:
        self.order = dict(order)
        self.dependencies = {key: list(deps) for key, deps in dependencies.items()}
        self._pending: dict[Hashable, list[float]] = {}
        self._readers: dict[Hashable, list[Hashable]] = {}  # each key's readers (its dependents)
        for task, deps in self.dependencies.items():
            position = float(self.order.get(task, NEVER))
            for dep in set(deps):
                self._pending.setdefault(dep, []).append(position)
                self._readers.setdefault(dep, []).append(task)
        for positions in self._pending.values():
            positions.sort()
        self.priority = self.order  # dask.order's, where the order is a prediction (for_local_scheduler)
        self._done: set[Hashable] = set()
        # Progress in planned positions: how many tasks have finished. Not the latest finished
        # task's position: schedulers run tasks somewhat out of order, and one early jump would
        # make every other key look overdue.
        self.now = 0.0

    def predict(
        self,
        ready: Sequence[Hashable],
        running: Iterable[Hashable],
        waiting: Mapping[Hashable, Collection[Hashable]],
    ) -> list[Hashable]:
        """The tasks still to run, in the order the local scheduler's real state predicts (see :meth:`reorder`).

        The first prediction assumes one worker; with several, a task that ends early
        pushes its dependents on top of dask's ready stack, above readers the plan put
        sooner, and a key whose reader was planned for "now" waits far longer. ``ready``
        is dask's stack (its top last), ``running`` the tasks under way (assumed to end
        first, pushing their dependents), ``waiting`` each task's inputs not yet
        computed. Dependents are pushed in :attr:`priority`'s order (dask.order's), as dask does.
        O(tasks + edges); changes nothing.
        """

        def rank(task: Hashable) -> int:
            return self.priority.get(task, 0)

        pending = {task: len(deps) for task, deps in waiting.items()}
        return _stack_order(list(ready), pending, self._readers, rank, sorted(running, key=rank))

    def reorder(self, tasks: Sequence[Hashable]) -> None:
        """Plan ``tasks`` to run next, in this order (from :meth:`predict`, or a trace's replan line).

        Positions follow the tasks run so far; tasks not named and not run keep theirs. O(tasks + edges).
        """
        if self.priority is self.order:  # a plan built by hand: dask.order's ranks are the positions given
            self.priority = dict(self.order)
        start = int(self.now) + 1
        for offset, task in enumerate(tasks):
            self.order[task] = start + offset
        for key, readers in self._readers.items():
            if self._pending.get(key):
                self._pending[key] = sorted(
                    float(self.order.get(task, NEVER)) for task in readers if task not in self._done
                )

    @classmethod
    def for_local_scheduler(
        cls,
        dependencies: Mapping[Hashable, Sequence[Hashable]],
        order: Mapping[Hashable, int],
        available: Iterable[Hashable] = (),
    ) -> GraphPlan:
        """A plan whose positions are the local scheduler's predicted execution order.

        dask.order's raw priorities are not the order tasks run in; on the traces
        shipped when this was written the prediction matched the synchronous
        scheduler's real order exactly (no script here repeats that check).
        """
        plan = cls(dependencies, local_schedule(dependencies, order, available))
        plan.priority = dict(order)
        return plan

    def next_use(self, key: Hashable) -> float:
        """Planned position of the key's next reader; ``NEVER`` when none remains."""
        pending = self._pending.get(key)
        return pending[0] if pending else NEVER

    def remaining(self, key: Hashable) -> int:
        """How many readers the key still has."""
        return len(self._pending.get(key, ()))

    def finished(self, task: Hashable) -> list[Hashable]:
        """Record that ``task`` ran; return the inputs whose future changed (once per task)."""
        if task in self._done or task not in self.dependencies:
            return []
        self._done.add(task)
        position = float(self.order.get(task, NEVER))
        self.now = float(len(self._done) - 1)
        changed = []
        for dep in set(self.dependencies[task]):
            pending = self._pending.get(dep)
            if not pending:
                continue
            index = bisect.bisect_left(pending, position)
            if index < len(pending) and pending[index] == position:
                del pending[index]
                changed.append(dep)
        return changed


def local_schedule(
    dependencies: Mapping[Hashable, Sequence[Hashable]],
    order: Mapping[Hashable, int],
    available: Iterable[Hashable] = (),
) -> dict[Hashable, int]:
    """Predict the order in which dask's local scheduler runs the tasks (one worker).

    dask.order's priorities are not the execution order: the local scheduler
    keeps a stack of ready tasks, pushes a finished task's newly ready
    dependents onto it (highest priority number first) and pops the top, so
    it runs depth-first. This replays that logic. ``available`` are keys
    present before the run (literal data). Returns key -> position.
    """
    dependents: dict[Hashable, list[Hashable]] = {}
    waiting: dict[Hashable, int] = {}
    done = set(available)
    for task, deps in dependencies.items():
        pending = {d for d in deps if d not in done}
        waiting[task] = len(pending)
        for dep in pending:
            dependents.setdefault(dep, []).append(task)

    def rank(key: Hashable) -> int:
        return order.get(key, 0)

    ready = sorted((t for t, n in waiting.items() if n == 0 and t not in done), key=rank, reverse=True)
    positions: dict[Hashable, int] = {key: -1 for key in done}
    for task in _stack_order(ready, {t: n for t, n in waiting.items() if n}, dependents, rank):
        positions[task] = len(positions)
    return positions


def _stack_order(
    stack: list[Hashable],
    pending: dict[Hashable, int],
    dependents: Mapping[Hashable, Iterable[Hashable]],
    rank: Callable[[Hashable], int],
    first: Iterable[Hashable] = (),
) -> list[Hashable]:
    """The order dask's local scheduler runs tasks in, one worker replayed from a state.

    ``first`` end first (tasks under way), then the top of ``stack`` (its last item) runs,
    and each task that ends pushes the dependents it made ready, highest ``rank`` first, so
    the lowest is on top. ``pending``: each waiting task's count of inputs yet to run
    (consumed). Shared by the first prediction and :meth:`GraphPlan.predict`.
    """
    tasks: list[Hashable] = []

    def ran(task: Hashable) -> None:
        tasks.append(task)
        for dependent in sorted(dependents.get(task, ()), key=rank, reverse=True):
            left = pending.get(dependent)
            if left is not None:
                if left <= 1:
                    del pending[dependent]
                    stack.append(dependent)
                else:
                    pending[dependent] = left - 1

    for task in first:
        ran(task)
    while stack:
        ran(stack.pop())
    return tasks
