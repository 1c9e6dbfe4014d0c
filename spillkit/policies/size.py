"""Size-aware: GreedyDual-Size with unit cost."""

from __future__ import annotations

from ._greedy import GreedyDual

__all__ = ["SizeAware"]


class SizeAware(GreedyDual):
    """Spill large values first, but let small stale values age out.

    GreedyDual-Size with unit cost (Cao and Irani, 1997): priority is
    ``clock + 1 / nbytes`` and the clock rises to each victim's priority. Among
    keys last used at about the same time the largest goes first, which frees
    the most memory per write; unlike pure largest-first, a small key that is
    never read again is eventually spilled too (pure largest-first keeps such
    keys for ever). Ties go to the least recently used. O(log n) per event.
    Reads do not raise a key's frequency (it stays 1); a read only moves the
    key's clock base up to the current clock.

    Parameters
    ----------
    aging : bool, default True
        True: the clock rises to each victim's priority, as above. False: the
        clock stays at 0, so the priority is ``1 / nbytes`` alone: pure
        largest-first, ties to the least recently used.

    Notes
    -----
    As every :class:`~spillkit.policies.base.Policy`: ``KeyError`` for a key
    it does not hold (left unchanged); no lock of its own (the engine's lock
    serialises every call).

    Examples
    --------
    >>> p = SizeAware()
    >>> p.admitted("small", 10, 0.0); p.admitted("big", 1000, 0.0)
    >>> p.victim()
    'big'
    """

    name = "size"
    counts_reads = False

    def weight(self, nbytes: int, cost: float) -> float:
        return 1.0 / max(nbytes, 1)
