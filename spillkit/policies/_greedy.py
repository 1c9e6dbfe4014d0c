"""The GreedyDual family shared by LFU, SizeAware and CostAware: one priority rule, three weights."""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import ClassVar

from ._heap import LazyHeap, remove_everywhere
from .base import Policy

__all__ = ["GreedyDual"]


class GreedyDual(Policy):
    """Priority ``clock + frequency * weight``; the lowest is spilled; the clock rises to each victim's.

    Subclasses choose ``weight(nbytes, cost)`` and whether reads raise the
    frequency. Raising the clock on eviction (the "dynamic aging" of LFU-DA and
    GreedyDual-Size) lets keys that stopped being read fall behind new ones.
    Ties go to the least recently used. O(log n) per event (a heap with lazy
    deletion).

    Parameters
    ----------
    aging : bool, default True
        Raise the clock to each victim's (finite) priority when it is evicted.
        False keeps the clock at 0, so a priority is ``frequency * weight``
        alone.

    Attributes
    ----------
    aging : bool
        The constructor's ``aging``.

    Raises
    ------
    KeyError
        From ``touched``, ``recosted``, ``removed`` and ``evicted`` for a key
        the policy does not hold, and from ``victim`` when none is resident,
        before anything changes.

    Notes
    -----
    Not thread-safe on its own: the engine's lock serialises calls.
    """

    counts_reads: ClassVar[bool] = True

    def __init__(self, aging: bool = True) -> None:
        self.aging = aging
        self._clock = 0.0
        self._weights: dict[Hashable, float] = {}
        self._counts: dict[Hashable, int] = {}
        self._bases: dict[Hashable, float] = {}  # the clock at each key's last use
        self._heap = LazyHeap()

    def weight(self, nbytes: int, cost: float) -> float:
        """How much one use of a value of this size and cost is worth keeping."""
        raise NotImplementedError

    def _push(self, key: Hashable, keep_age: bool = False) -> None:
        self._heap.push(key, self._bases[key] + self._counts[key] * self._weights[key], keep_age)

    def admitted(self, key: Hashable, nbytes: int, cost: float) -> None:
        self._weights[key] = self.weight(nbytes, cost)
        self._counts[key] = 1
        self._bases[key] = self._clock
        self._push(key)

    def touched(self, key: Hashable) -> None:
        count = self._counts[key]  # KeyError for a key the policy does not hold
        if self.counts_reads:
            self._counts[key] = count + 1
        self._bases[key] = self._clock
        self._push(key)

    def recosted(self, key: Hashable, nbytes: int, cost: float) -> None:
        weight = self.weight(nbytes, cost)
        if self._weights[key] != weight:  # a cost change is not a use: only the weight moves, not the age
            self._weights[key] = weight
            self._push(key, keep_age=True)  # (its place among equal priorities too: helper-107)

    def removed(self, key: Hashable) -> None:
        remove_everywhere(key, self._heap, self._weights, self._counts, self._bases)

    def evicted(self, key: Hashable) -> None:
        priority = self._heap.priority(key)
        if self.aging and math.isfinite(priority):  # an infinite one would stop every later key from aging
            self._clock = max(self._clock, priority)
        self.removed(key)

    def victim(self) -> Hashable:
        return self._heap.peek()[0]

    def __len__(self) -> int:
        return len(self._counts)
