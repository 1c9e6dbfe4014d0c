"""SIEVE: a FIFO queue, a visited bit per key and a hand that sweeps from old to new.

Yazhuo Zhang, Juncheng Yang, Yao Yue, Ymir Vigfusson and K. V. Rashmi,
"SIEVE is Simpler than LRU: an Efficient Turn-Key Eviction Algorithm for Web
Caches", 21st USENIX Symposium on Networked Systems Design and Implementation
(NSDI '24), 2024.
"""

from __future__ import annotations

from collections.abc import Hashable

from .base import Policy

__all__ = ["SIEVE"]


class _Node:
    __slots__ = ("key", "newer", "older", "visited")

    def __init__(self, key: Hashable, older: _Node | None) -> None:
        self.key = key
        self.newer: _Node | None = None
        self.older = older
        self.visited = False


class SIEVE(Policy):
    """Keep keys read since the hand last passed them; spill the first unvisited key the hand meets.

    New keys join the head of a queue, unvisited. A read sets the key's
    visited bit and moves nothing. To choose a victim the hand starts where it
    stopped last time (at the tail, the oldest key, at first) and walks towards
    the head, clearing the visited bits it passes, wrapping from the head back
    to the tail; the first unvisited key is the victim, and the hand stays at
    the victim's newer neighbour. Keys that survive a pass keep their place, so
    a popular key is never moved, only skipped.

    **victim() is a pure peek.** Clearing bits as the hand moves would make a
    peek forget reads: a peek followed by a failed write (the engine then
    evicts nothing) would have wiped the visited bits anyway, and a second
    peek would walk further. So :meth:`victim` only *finds* the first
    unvisited key from the hand, leaving every bit and the hand as they are,
    and :meth:`evicted` applies the walk: it clears exactly the bits between
    the hand and the victim (all bits, when every key was visited and the
    hand went a full lap) and moves the hand past the victim. Calling
    ``victim()`` any number of times without an eviction changes nothing and
    returns the same key; the walk is applied once, at eviction, so decisions
    equal those of the paper's algorithm (and libCacheSim's ``Sieve``, which
    the cross-check replays). The last walk's result is memoised until
    something could change it, so ``evicted`` after ``victim`` does not search
    again. ``removed`` (a delete or overwrite) takes the key out without
    moving the hand past others; ``recosted`` changes nothing.

    Complexity: O(1) per event amortised; a walk of k steps clears k-1 bits
    that k-1 reads set. Takes no arguments.

    Notes
    -----
    As every :class:`~spillkit.policies.base.Policy`: ``KeyError`` for a key
    it does not hold (left unchanged); no lock of its own (the engine's lock
    serialises every call).
    Deterministic. A ``removed`` interrupted part-way (an exception raised
    into it) leaves the key where a second ``removed`` finds and finishes it.

    Examples
    --------
    >>> p = SIEVE()
    >>> for key in "abc":
    ...     p.admitted(key, 1, 0.0)
    >>> p.touched("a")
    >>> p.victim(), p.victim()   # "a" was read: the hand passes it; a peek changes nothing
    ('b', 'b')
    >>> p.evicted("b"); p.victim()   # the hand goes on from "c"; "a" lost its bit as it was passed
    'c'
    """

    name = "sieve"

    def __init__(self) -> None:
        self._nodes: dict[Hashable, _Node] = {}
        self._head: _Node | None = None  # newest
        self._tail: _Node | None = None  # oldest
        self._hand: _Node | None = None  # where the next walk starts; None: at the tail
        self._next: _Node | None = None  # the last walk's victim, None when it may be stale

    def admitted(self, key: Hashable, nbytes: int, cost: float) -> None:
        if key in self._nodes:
            self.removed(key)
        node = _Node(key, self._head)
        if self._head is None:
            self._tail = node
        else:
            self._head.newer = node
        self._head = node
        self._nodes[key] = node
        self._next = None  # a walk that wrapped past the head would now meet this key first

    def touched(self, key: Hashable) -> None:
        node = self._nodes[key]
        if not node.visited:
            node.visited = True
            if node is self._next:  # keys before the victim were visited already, keys after it unseen
                self._next = None

    def recosted(self, key: Hashable, nbytes: int, cost: float) -> None:
        self._nodes[key]  # KeyError for an unknown key; SIEVE ignores cost

    def removed(self, key: Hashable) -> None:
        node = self._nodes[key]
        if node is self._hand:
            self._hand = node.newer
        self._unlink(node)
        # Out of the table last: an interrupt before this leaves the key where a second removed() finds it
        # (spillkit.mending), and unlinking again changes nothing. Popped first, it stayed in the queue for
        # good, and the hand could name it as a victim no longer anywhere.
        del self._nodes[key]

    def evicted(self, key: Hashable) -> None:
        node = self._nodes[key]
        if node is self._walk():
            start = self._hand or self._tail
            if node.visited:  # every key was visited: the hand went a full lap clearing all bits
                for other in self._nodes.values():
                    other.visited = False
            else:
                step = start
                while step is not node and step is not None:
                    step.visited = False
                    step = step.newer or self._tail
            self._hand = node  # removed() moves the hand on to the victim's newer neighbour
        self.removed(key)

    def victim(self) -> Hashable:
        return self._walk().key

    def _walk(self) -> _Node:
        """The first unvisited node from the hand (wrapping), without changing anything."""
        if self._next is not None:
            return self._next
        start = self._hand or self._tail
        if start is None:
            raise KeyError("no resident keys")
        node = start
        while node.visited:
            step = node.newer or self._tail
            assert step is not None  # the queue is not empty
            node = step
            if node is start:  # all visited: after a full lap of clearing, the start goes
                break
        self._next = node
        return node

    def _unlink(self, node: _Node) -> None:
        if node.newer is None:
            self._head = node.older
        else:
            node.newer.older = node.older
        if node.older is None:
            self._tail = node.newer
        else:
            node.older.newer = node.newer
        self._next = None

    def __len__(self) -> int:
        return len(self._nodes)
