"""Cost-aware: GreedyDual-Size-Frequency over measured recompute cost."""

from __future__ import annotations

from ._greedy import GreedyDual

__all__ = ["CostAware"]


class CostAware(GreedyDual):
    """Keep what is expensive to rebuild per byte; spill what is cheap.

    GreedyDual-Size-Frequency (Cherkasova, 1998): priority is
    ``clock + frequency * cost / nbytes`` and the clock rises to each victim's
    priority, so keys that stopped being read age out. ``cost`` is the key's
    recompute time in seconds (``chest.put(key, value, cost=s)`` or
    ``chest.set_cost(key, s)``); when none was given the Chest passes the
    estimated time to reload the value from disk. A cost change keeps the
    key's frequency. O(log n) per event. A negative cost counts as 0, a size
    of 0 bytes as 1.

    Parameters
    ----------
    aging : bool, default True
        True: the clock rises to each victim's priority, as above. False: the
        clock stays at 0, so the priority is ``frequency * cost / nbytes``.

    Notes
    -----
    As every :class:`~spillkit.policies.base.Policy`: ``KeyError`` for a key
    it does not hold (left unchanged); no lock of its own (the engine's lock
    serialises every call).

    Examples
    --------
    >>> p = CostAware()
    >>> p.admitted("cheap", 100, 0.001); p.admitted("dear", 100, 5.0)
    >>> p.victim()
    'cheap'
    """

    name = "cost"

    def weight(self, nbytes: int, cost: float) -> float:
        return max(cost, 0.0) / max(nbytes, 1)
