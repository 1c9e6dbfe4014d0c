"""First in, first out.

The oldest cache replacement rule there is; analysed against LRU as early as
L. A. Belady, "A study of replacement algorithms for a virtual-storage
computer", IBM Systems Journal 5(2), 1966. It is the baseline that SIEVE and
S3-FIFO build on, and the policy libCacheSim's ``FIFO`` implements (the
cross-check in ``tests/test_more_policies.py`` replays both on the same traces).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from .base import Policy

__all__ = ["FIFO"]


class FIFO(Policy):
    """Spill the key that entered memory longest ago; reads change nothing.

    A key's place in the queue is set when it is admitted (a put, or a load
    back from disk) and never moves: ``touched`` only checks that the key is
    resident, and ``recosted`` keeps the key where it is (FIFO ignores cost).
    An overwrite is ``removed`` then ``admitted``, so it joins the back.

    Complexity: O(1) per event (an ``OrderedDict``, whose first key is found in
    O(1) however many keys were deleted before it, unlike a plain ``dict``).
    Takes no arguments.

    Notes
    -----
    As every :class:`~spillkit.policies.base.Policy`: ``KeyError`` for a key
    it does not hold (left unchanged); no lock of its own (the engine's lock
    serialises every call).

    Examples
    --------
    >>> p = FIFO()
    >>> p.admitted("a", 1, 0.0); p.admitted("b", 1, 0.0); p.touched("a")
    >>> p.victim()   # a read does not save "a"
    'a'
    >>> p.evicted("a"); p.victim()
    'b'
    """

    name = "fifo"

    def __init__(self) -> None:
        self._queue: OrderedDict[Hashable, None] = OrderedDict()

    def admitted(self, key: Hashable, nbytes: int, cost: float) -> None:
        self._queue.pop(key, None)  # a key admitted twice without removal joins the back, once
        self._queue[key] = None

    def touched(self, key: Hashable) -> None:
        if key not in self._queue:
            raise KeyError(key)

    def recosted(self, key: Hashable, nbytes: int, cost: float) -> None:
        self.touched(key)  # KeyError for an unknown key; otherwise nothing to do

    def removed(self, key: Hashable) -> None:
        del self._queue[key]

    def victim(self) -> Hashable:
        for key in self._queue:
            return key
        raise KeyError("no resident keys")

    def __len__(self) -> int:
        return len(self._queue)
