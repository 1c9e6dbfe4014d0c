"""A priority heap with lazy deletion, shared by the priority-queue policies."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from typing import Any

__all__ = ["LazyHeap", "remove_everywhere"]

_ABSENT = object()

# A priority is a float or a tuple of floats (e.g. (next use, -size)); compared, never added.
Priority = Any
Entry = tuple[Priority, int, Hashable]


class LazyHeap:
    """Keys with a priority; the smallest priority (oldest on ties) comes first.

    Re-pushing or discarding a key leaves its old heap entry behind; stale
    entries are skipped at peek time and the heap is rebuilt when they
    outnumber live ones, so every operation is O(log n) amortised. Entries
    compare by (priority, sequence number) and never compare keys, so keys of
    mixed, unorderable types are fine.
    """

    def __init__(self) -> None:
        self._heap: list[Entry] = []
        self._live: dict[Hashable, Entry] = {}
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: object) -> bool:
        return key in self._live

    def push(self, key: Hashable, priority: Priority, keep_age: bool = False) -> None:
        """Insert ``key`` or change its priority (it becomes the newest on ties, unless ``keep_age``)."""
        old = self._live.get(key) if keep_age else None
        entry = (priority, next(self._sequence) if old is None else old[1], key)
        self._live[key] = entry
        heapq.heappush(self._heap, entry)
        if len(self._heap) > 2 * len(self._live) + 64:
            self._heap = list(self._live.values())
            heapq.heapify(self._heap)

    def discard(self, key: Hashable) -> None:
        """Remove ``key``; raise KeyError if it is absent."""
        del self._live[key]

    def drop(self, key: Hashable) -> bool:
        """Remove ``key`` if present; True if it was."""
        return self._live.pop(key, None) is not None

    def priority(self, key: Hashable) -> Priority:
        """The key's current priority."""
        return self._live[key][0]

    def peek(self) -> tuple[Hashable, Priority]:
        """Return (key, priority) of the minimum without removing it; KeyError if empty."""
        heap = self._heap
        live = self._live
        while heap:
            top = heap[0]
            if live.get(top[2]) is top:
                return top[2], top[0]
            heapq.heappop(heap)
        raise KeyError("no resident keys")

    def smallest(self, count: int) -> list[tuple[Hashable, Priority]]:
        """Up to ``count`` (key, priority) pairs, smallest first, without removing them. O(count log n)."""
        heap = self._heap
        live = self._live
        taken: list[Entry] = []
        while heap and len(taken) < count:
            entry = heapq.heappop(heap)
            if live.get(entry[2]) is entry:
                taken.append(entry)
        for entry in taken:  # the same entry objects go back, so they stay live
            heapq.heappush(heap, entry)
        return [(entry[2], entry[0]) for entry in taken]


def remove_everywhere(key: Hashable, heap: LazyHeap, *tables: dict[Hashable, Any]) -> None:
    """A policy's ``removed``: ``key`` out of ``heap`` and every table; KeyError if none held it.

    From every one, even when an earlier one lacks it: an interrupted call (spillkit.mending) can
    leave a key in some of them only, and a second ``removed`` must clear the rest.
    """
    found = heap.drop(key)
    for table in tables:
        found = table.pop(key, _ABSENT) is not _ABSENT or found
    if not found:
        raise KeyError(key)
