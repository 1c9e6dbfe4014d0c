"""The score of dask's opportunistic cache, cachey, kept in log space.

Matthew Rocklin et al., cachey: "Caching for Analytic Computations",
https://github.com/dask/cachey (2015; version 0.2.1, the cache behind
``dask.cache.Cache``), ``cachey/score.py`` and ``cachey/cache.py``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

from ._heap import LazyHeap, remove_everywhere
from .base import Policy

__all__ = ["CacheyScore"]

_TINY = 1e-300  # a cost of zero still ranks by its reads: log(0) would flatten every such key to -inf


def _log_add(a: float, b: float) -> float:
    """log(exp(a) + exp(b)) without leaving log space."""
    high, low = (a, b) if a >= b else (b, a)
    if low == -math.inf:
        return high
    return high + math.log1p(math.exp(low - high))


class CacheyScore(Policy):
    """Spill the key with the lowest cachey score: cheap to recompute per byte, read rarely and long ago.

    cachey adds ``cost / nbytes * (1 + log(2) / halflife) ** tick`` to a key's
    score on each access (its put, and every read), where ``tick`` counts the
    accesses to all keys; the cache drops the lowest score first. A key's
    score therefore grows with every read, and older reads weigh half as
    much every ``halflife`` accesses relative to new ones. ``cost`` is the
    key's recompute time in seconds (as for :class:`CostAware`; the engine
    passes the estimated reload time when none was given).

    **Log space.** cachey keeps ``(1 + log(2) / halflife) ** tick`` as a plain
    float, which overflows to ``inf`` after about ``710 * halflife / log(2)``
    accesses (~1,000,000 at its default halflife of 1000, ~10,000 at a
    halflife of 10); from then on every new score is ``inf`` (or ``nan`` for a
    zero cost) and the ranking is lost. Here a score is kept as its logarithm,
    ``log(cost / nbytes) + log(sum over accesses of growth ** tick)``, whose
    terms are added with a stable log-add-exp; the exponent is never taken,
    so scores stay finite and exact in order for any number of accesses.

    Differences from cachey, because the engine owns admission and memory:
    every put is admitted (cachey may refuse a value whose score is below
    the lowest resident one); a key's history is dropped when it leaves
    memory (cachey's ``Scorer`` keeps every key it ever saw, without bound),
    so a value loaded back from disk starts with one access at the current
    tick. A cost change (``recosted``) keeps the key's accesses.

    Complexity: O(log n) per event (a heap with lazy deletion). A cost that
    is not above 1e-300 (zero, negative or nan) counts as 1e-300, a size of
    0 bytes as 1.

    Parameters
    ----------
    halflife : float, default 1000.0
        Accesses (to all keys) after which an access weighs about half as
        much as a new one (cachey's ``halflife``); must be positive.

    Attributes
    ----------
    halflife : float
        The constructor's ``halflife``.

    Raises
    ------
    ValueError
        From the constructor, when ``halflife`` is not positive (or is nan).
    KeyError
        From ``touched``, ``recosted``, ``removed``, ``evicted`` and
        :meth:`score` for a key the policy does not hold, and from ``victim``
        when none is resident; the policy is left unchanged.

    Notes
    -----
    Thread-safety: none on its own; the engine's lock serialises every call.
    Deterministic.

    Examples
    --------
    >>> p = CacheyScore()
    >>> p.admitted("transpose", 8_000_000, 0.01); p.admitted("std", 8, 2.0)
    >>> p.victim()   # huge and cheap goes first; tiny and costly stays
    'transpose'
    >>> for _ in range(20_000):
    ...     p.touched("std")
    >>> math.isfinite(p.score("std"))
    True
    """

    name = "cachey"

    def __init__(self, halflife: float = 1000.0) -> None:
        if not halflife > 0:
            raise ValueError("halflife must be positive")
        self.halflife = halflife
        self._log_growth = math.log1p(math.log(2) / halflife)  # log of cachey's per-access multiplier
        self._tick = 0
        self._log_weight: dict[Hashable, float] = {}  # log(cost / nbytes)
        self._log_time: dict[Hashable, float] = {}  # log(sum of growth ** tick over the key's accesses)
        self._heap = LazyHeap()

    def score(self, key: Hashable) -> float:
        """The natural logarithm of the key's cachey score."""
        return self._log_weight[key] + self._log_time[key]

    def _access(self, key: Hashable, previous: float) -> None:
        log_time = self._log_time[key] = _log_add(previous, self._tick * self._log_growth)
        self._tick += 1
        self._heap.push(key, self._log_weight[key] + log_time)

    @staticmethod
    def _weight(nbytes: int, cost: float) -> float:
        if not cost > _TINY:  # also catches nan
            cost = _TINY
        return math.log(cost) - math.log(max(nbytes, 1))

    def admitted(self, key: Hashable, nbytes: int, cost: float) -> None:
        self._log_weight[key] = self._weight(nbytes, cost)
        self._access(key, -math.inf)

    def touched(self, key: Hashable) -> None:
        self._access(key, self._log_time[key])  # KeyError for an unknown key

    def recosted(self, key: Hashable, nbytes: int, cost: float) -> None:
        log_time = self._log_time[key]  # KeyError for an unknown key, before anything changes
        self._log_weight[key] = self._weight(nbytes, cost)
        self._heap.push(key, self._log_weight[key] + log_time)

    def removed(self, key: Hashable) -> None:
        remove_everywhere(key, self._heap, self._log_weight, self._log_time)

    def victim(self) -> Hashable:
        return self._heap.peek()[0]

    def __len__(self) -> int:
        return len(self._log_time)

    def __repr__(self) -> str:
        return f"CacheyScore(halflife={self.halflife})"
