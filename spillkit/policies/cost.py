"""Cost-aware: GreedyDual-Size-Frequency over measured recompute cost."""

from __future__ import annotations

from collections.abc import Hashable

from ._heap import LazyHeap
from .base import Policy

__all__ = ["CostAware"]


class CostAware(Policy):
    """Keep what is expensive to rebuild per byte; spill what is cheap.

    GreedyDual-Size-Frequency (Cherkasova, 1998): priority is
    ``clock + frequency * cost / nbytes`` and the clock rises to each victim's
    priority, so keys that stopped being read age out. ``cost`` is the key's
    recompute time in seconds (``chest.put(key, value, cost=s)`` or
    ``chest.set_cost(key, s)``); when none was given the Chest passes the
    estimated time to reload the value from disk. A cost change keeps the
    key's frequency. O(log n) per event. Not thread-safe on its own.

    Examples
    --------
    >>> p = CostAware()
    >>> p.admitted("cheap", 100, 0.001); p.admitted("dear", 100, 5.0)
    >>> p.victim()
    'cheap'
    """

    name = "cost"

    def __init__(self) -> None:
        self._clock = 0.0
        self._weights: dict[Hashable, float] = {}  # cost / nbytes
        self._counts: dict[Hashable, int] = {}
        self._heap = LazyHeap()

    def admitted(self, key: Hashable, nbytes: int, cost: float) -> None:
        self._weights[key] = max(cost, 0.0) / max(nbytes, 1)
        self._counts[key] = 1
        self._heap.push(key, self._clock + self._weights[key])

    def touched(self, key: Hashable) -> None:
        count = self._counts[key] + 1
        self._counts[key] = count
        self._heap.push(key, self._clock + count * self._weights[key])

    def recosted(self, key: Hashable, nbytes: int, cost: float) -> None:
        count = self._counts[key]  # KeyError for an unknown key, before anything changes
        self._weights[key] = max(cost, 0.0) / max(nbytes, 1)
        self._heap.push(key, self._clock + count * self._weights[key])

    def removed(self, key: Hashable) -> None:
        self._heap.discard(key)
        del self._weights[key]
        del self._counts[key]

    def evicted(self, key: Hashable) -> None:
        self._clock = max(self._clock, self._heap.priority(key))
        self.removed(key)

    def victim(self) -> Hashable:
        return self._heap.peek()[0]

    def __len__(self) -> int:
        return len(self._weights)
