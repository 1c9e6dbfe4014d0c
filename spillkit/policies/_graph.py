"""What a task graph says about each key's future: its remaining readers, in planned order."""

from __future__ import annotations

import bisect
from collections.abc import Hashable, Mapping, Sequence

__all__ = ["NEVER", "GraphPlan"]

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
        for task, deps in self.dependencies.items():
            position = float(self.order.get(task, NEVER))
            for dep in set(deps):
                self._pending.setdefault(dep, []).append(position)
        for positions in self._pending.values():
            positions.sort()
        self._done: set[Hashable] = set()

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
