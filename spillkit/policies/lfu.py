"""Least frequently used, with dynamic aging."""

from __future__ import annotations

from ._greedy import GreedyDual

__all__ = ["LFU"]


class LFU(GreedyDual):
    """Spill the key read least often; ties go to the least recently used.

    With ``aging=True`` (the default) this is LFU with Dynamic Aging (Arlitt et
    al., 2000): a key's priority is ``clock + frequency`` and the clock rises to
    each victim's priority, so a key that was popular long ago eventually
    yields to keys in current use instead of squatting forever. With
    ``aging=False`` it is plain LFU and spills keys in the order
    ``cachetools.LFUCache`` evicts them, except after an overwrite.

    A key's frequency starts at 1 when it enters memory (put or load) and is
    forgotten when it leaves. An overwrite of a resident key is a new value
    entering (the engine calls ``removed`` then ``admitted``, as for every
    policy), so its count starts again at 1, where ``cachetools.LFUCache``
    counts the assignment as one more use. O(log n) per event.

    Parameters
    ----------
    aging : bool, default True
        True: LFU with Dynamic Aging, as above. False: plain LFU (the clock
        stays at 0, so the priority is the frequency alone).

    Notes
    -----
    As every :class:`~spillkit.policies.base.Policy`: ``KeyError`` for a key
    it does not hold (left unchanged); no lock of its own (the engine's lock
    serialises every call).

    Examples
    --------
    >>> p = LFU()
    >>> p.admitted("a", 1, 0.0); p.admitted("b", 1, 0.0); p.touched("a")
    >>> p.victim()
    'b'
    """

    name = "lfu"

    def weight(self, nbytes: int, cost: float) -> float:
        return 1.0

    def __repr__(self) -> str:
        return f"LFU(aging={self.aging})"
