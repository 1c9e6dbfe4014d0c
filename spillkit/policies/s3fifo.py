"""S3-FIFO: a small FIFO that filters one-hit wonders, a main FIFO with 2-bit reinsertion, and a ghost queue.

Juncheng Yang, Yazhuo Zhang, Ziyue Qiu, Yao Yue and K. V. Rashmi, "FIFO
queues are all you need for cache eviction", Proceedings of the 29th ACM
Symposium on Operating Systems Principles (SOSP '23), 2023.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable

from .base import Policy

__all__ = ["S3FIFO"]

_MAX_FREQ = 3  # the paper's 2-bit counter


class S3FIFO(Policy):
    """Admit new keys to a small queue; keep there only keys read again; reinsert read keys in main.

    A new key joins the small queue S, unless it is in the ghost queue G (it
    was spilled from S recently and is back: a load from disk), in which case
    it joins the main queue M. Reads only bump a counter capped at 3. To make
    room, S is cleaned while it holds at least ``small`` of the resident bytes
    (else M is): the oldest key of S moves to M if it was read ``threshold``
    times or more, otherwise it is the victim and its key goes to G. In M the
    oldest key goes back to the head with its counter decremented while the
    counter is non-zero; the first key at zero is the victim (not remembered).

    **Sizing in bytes without a budget.** The paper sizes S at 10% of the
    cache and G like M (libCacheSim: 90% of the cache's bytes). A policy is never told the budget (it sees keys, sizes
    and costs), but it is only asked for a victim when memory is full, i.e.
    when the resident bytes are the budget (less the incoming value). So the
    fractions are taken of the bytes resident *when a victim is chosen*: S is
    cleaned while it holds ``small`` of them, and G is trimmed (oldest first)
    to ``ghost`` times them when a key spilled from S enters it (as
    libCacheSim's ghost, a FIFO of its own that makes room for what enters).
    A victim from M trims nothing, nor does anything between evictions, so
    deleting many resident keys does not erase the ghost's memory (a spilled
    key deleted or overwritten is forgotten: :meth:`forgotten`).

    ``threshold=2`` follows the paper's Algorithm 1 (``freq > 1``) and
    libCacheSim's current default; ``threshold=1`` promotes any key read once
    in S, as its pre-2024 default did. A key's counter restarts at 0 when it
    moves to M, as in libCacheSim. Unlike the paper, moving keys from S to M
    never evicts from M on its own: a victim is one key, chosen per request.

    **victim() is a pure peek.** It computes which key the paper's eviction
    loop would reach (the first key of S below ``threshold``; else the first
    key of M with the lowest counter, since each pass decrements all counters
    by one) without moving keys or touching counters; :meth:`evicted` then
    runs that loop for real, promoting and decrementing exactly once. The
    choice is memoised until an event could change it.

    Complexity: O(1) amortised per event when each ``victim()`` is followed
    by its eviction, as the engine does: the peek walks no further than the
    eviction then moves keys, and each promotion or reinsertion spends a read
    or an admission.

    Parameters
    ----------
    small : float, default 0.1
        S is cleaned first while it holds at least this share of the resident
        bytes; ``0 < small < 1``.
    ghost : float, default 0.9
        G is trimmed to this multiple of the resident bytes when a key spilled
        from S enters it; finite and ``>= 0``, and 0 keeps no ghost queue at all.
    threshold : int, default 2
        Reads a key needs while in S to move to M rather than be spilled;
        ``1 <= threshold <= 3`` (the paper's 2-bit counter stops at 3).

    Attributes
    ----------
    small, ghost, threshold
        The constructor's arguments, as given.

    Raises
    ------
    ValueError
        From the constructor, when ``small``, ``ghost`` or ``threshold`` is
        out of the ranges above.

    Notes
    -----
    As every :class:`~spillkit.policies.base.Policy`: ``KeyError`` for a key
    it does not hold (left unchanged); no lock of its own (the engine's lock
    serialises every call).
    Deterministic.

    Examples
    --------
    >>> p = S3FIFO()
    >>> for key in "abc":
    ...     p.admitted(key, 10, 0.0)
    >>> p.touched("a"); p.touched("a")   # read twice while in S: moves to M when S is cleaned
    >>> p.victim()
    'b'
    >>> p.evicted("b"); p.removed("c"); p.admitted("b", 10, 0.0)   # a ghost: "b" returns into M
    >>> p.victim()   # S is empty, so M is cleaned: "a" (promoted first, counter 0) goes before "b"
    'a'
    """

    name = "s3fifo"

    def __init__(self, small: float = 0.1, ghost: float = 0.9, threshold: int = 2) -> None:
        # (NaN turned the ghost off, infinity let it grow without a trim; a threshold above the counter's cap of 3
        # could never be reached, so no key would move from S to M: helper-132)
        if not 0.0 < small < 1.0 or not 0.0 <= ghost < math.inf or not 1 <= threshold <= _MAX_FREQ:
            raise ValueError(f"need 0 < small < 1, a finite ghost >= 0 and 1 <= threshold <= {_MAX_FREQ}")
        self.small, self.ghost, self.threshold = small, ghost, threshold
        self._small: OrderedDict[Hashable, int] = OrderedDict()  # key -> nbytes, oldest first
        self._main: OrderedDict[Hashable, int] = OrderedDict()
        self._ghost: OrderedDict[Hashable, int] = OrderedDict()
        self._freq: dict[Hashable, int] = {}
        self._small_bytes = self._main_bytes = self._ghost_bytes = 0
        self._next: tuple[Hashable] | None = None  # the memoised victim

    def admitted(self, key: Hashable, nbytes: int, cost: float) -> None:
        if key in self._freq:
            self.removed(key)
        remembered = self._ghost.pop(key, None)
        if remembered is not None:  # spilled from S lately and wanted again: straight to M
            self._ghost_bytes -= remembered
            self._main[key] = nbytes
            self._main_bytes += nbytes
        else:
            self._small[key] = nbytes
            self._small_bytes += nbytes
        self._freq[key] = 0
        self._next = None

    def touched(self, key: Hashable) -> None:
        freq = self._freq[key]
        if freq < _MAX_FREQ:
            self._freq[key] = freq + 1
            self._next = None

    def recosted(self, key: Hashable, nbytes: int, cost: float) -> None:
        self._freq[key]  # KeyError for an unknown key; S3-FIFO ignores cost

    def removed(self, key: Hashable) -> None:
        del self._freq[key]
        if key in self._small:
            self._small_bytes -= self._small.pop(key)
        else:
            self._main_bytes -= self._main.pop(key)
        self._next = None

    def forgotten(self, key: Hashable) -> None:
        self._ghost_bytes -= self._ghost.pop(key, 0)

    def evicted(self, key: Hashable) -> None:
        if key not in self._freq:
            raise KeyError(key)
        resident = self._small_bytes + self._main_bytes
        if (key,) == self._choose():
            self._run_eviction_loop()
        from_small = key in self._small
        nbytes = self._small[key] if from_small else self._main[key]
        self.removed(key)
        if from_small and self.ghost > 0:
            weight = max(nbytes, 1)  # a 0-byte key weighs 1, or ghosts of them would pile up untrimmed
            self._ghost[key] = weight
            self._ghost_bytes += weight
            while self._ghost_bytes > self.ghost * resident:
                self._ghost_bytes -= self._ghost.popitem(last=False)[1]

    def victim(self) -> Hashable:
        return self._choose()[0]

    def _clean_small(self) -> bool:
        """Whether the next eviction starts in S (it holds its share of resident bytes, or M is empty)."""
        if not self._small:
            return False
        return not self._main or self._small_bytes >= self.small * (self._small_bytes + self._main_bytes)

    def _choose(self) -> tuple[Hashable]:
        """The key the eviction loop would reach, found without changing anything."""
        if self._next is not None:
            return self._next
        freq = self._freq
        promoted: tuple[Hashable] | None = None
        if self._clean_small():
            for key in self._small:
                if freq[key] < self.threshold:
                    self._next = (key,)
                    return self._next
            promoted = (next(iter(self._small)),)  # all of S moves to M, counters at 0
        best: tuple[Hashable] | None = None
        lowest = _MAX_FREQ + 1
        for key in self._main:
            if freq[key] < lowest:
                best, lowest = (key,), freq[key]
                if not lowest:
                    break
        if lowest and promoted is not None:
            best = promoted  # every key of M is passed (and decremented) before the promoted ones
        if best is None:
            raise KeyError("no resident keys")
        self._next = best
        return best

    def _run_eviction_loop(self) -> None:
        """The paper's loop, up to (not including) the removal: after it the victim heads S or M."""
        freq, small, main = self._freq, self._small, self._main
        if self._clean_small():
            while small:
                key = next(iter(small))
                if freq[key] < self.threshold:
                    return
                nbytes = small.pop(key)
                self._small_bytes -= nbytes
                main[key] = nbytes
                self._main_bytes += nbytes
                freq[key] = 0
        while freq[key := next(iter(main))]:
            main.move_to_end(key)
            freq[key] -= 1

    def __len__(self) -> int:
        return len(self._freq)

    def __repr__(self) -> str:
        return f"S3FIFO(small={self.small}, ghost={self.ghost}, threshold={self.threshold})"
