"""Least recently used."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from .base import Policy

__all__ = ["LRU"]


class LRU(Policy):
    """Spill the key read or written longest ago; a read refreshes recency.

    O(1) per event (an ``OrderedDict``). Spills keys in the order
    ``cachetools.LRUCache`` evicts them. Takes no arguments; cost is ignored
    (``recosted`` only checks the key is held).

    Notes
    -----
    As every :class:`~spillkit.policies.base.Policy`: ``KeyError`` for a key
    it does not hold (left unchanged); no lock of its own (the engine's lock
    serialises every call).

    Examples
    --------
    >>> p = LRU()
    >>> p.admitted("a", 1, 0.0); p.admitted("b", 1, 0.0); p.touched("a")
    >>> p.victim()
    'b'
    """

    name = "lru"

    def __init__(self) -> None:
        self._order: OrderedDict[Hashable, None] = OrderedDict()
        # A read becomes one C call with no Python frame: the engine's hit path calls it on every get.
        self.touched = self._order.move_to_end  # type: ignore[method-assign]

    def admitted(self, key: Hashable, nbytes: int, cost: float) -> None:
        self._order[key] = None  # the engine admits only keys the policy does not hold: it goes last

    def touched(self, key: Hashable) -> None:
        self._order.move_to_end(key)

    def recosted(self, key: Hashable, nbytes: int, cost: float) -> None:
        if key not in self._order:  # cost does not matter to LRU, and is not a use
            raise KeyError(key)

    def removed(self, key: Hashable) -> None:
        del self._order[key]

    def victim(self) -> Hashable:
        for key in self._order:
            return key
        raise KeyError("no resident keys")

    def __len__(self) -> int:
        return len(self._order)
