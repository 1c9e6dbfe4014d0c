"""Least frequently used, with dynamic aging."""

from __future__ import annotations

from collections.abc import Hashable

from ._heap import LazyHeap
from .base import Policy

__all__ = ["LFU"]


class LFU(Policy):
    """Spill the key read least often; ties go to the least recently used.

    With ``aging=True`` (the default) this is LFU with Dynamic Aging (Arlitt et
    al., 2000): a key's priority is ``clock + frequency`` and the clock rises to
    each victim's priority, so a key that was popular long ago eventually
    yields to keys in current use instead of squatting forever. With
    ``aging=False`` it is plain LFU and spills keys in the order
    ``cachetools.LFUCache`` evicts them.

    A key's frequency starts at 1 when it enters memory (put or load) and is
    forgotten when it leaves. O(log n) per event. Not thread-safe on its own.

    Examples
    --------
    >>> p = LFU()
    >>> p.admitted("a", 1, 0.0); p.admitted("b", 1, 0.0); p.touched("a")
    >>> p.victim()
    'b'
    """

    name = "lfu"

    def __init__(self, aging: bool = True) -> None:
        self.aging = aging
        self._clock = 0.0
        self._counts: dict[Hashable, int] = {}
        self._heap = LazyHeap()

    def admitted(self, key: Hashable, nbytes: int, cost: float) -> None:
        self._counts[key] = 1
        self._heap.push(key, self._clock + 1)

    def touched(self, key: Hashable) -> None:
        count = self._counts[key] + 1
        self._counts[key] = count
        self._heap.push(key, self._clock + count)

    def recosted(self, key: Hashable, nbytes: int, cost: float) -> None:
        if key not in self._counts:  # cost does not matter to LFU, and is not a use
            raise KeyError(key)

    def removed(self, key: Hashable) -> None:
        self._heap.discard(key)
        del self._counts[key]

    def evicted(self, key: Hashable) -> None:
        if self.aging:
            self._clock = max(self._clock, self._heap.priority(key))
        self.removed(key)

    def victim(self) -> Hashable:
        return self._heap.peek()[0]

    def __len__(self) -> int:
        return len(self._counts)

    def __repr__(self) -> str:
        return f"LFU(aging={self.aging})"
