"""Weak references to spilled values that may still be alive elsewhere in the process."""

from __future__ import annotations

import sys
import weakref
from collections.abc import Hashable
from typing import Any

__all__ = ["LiveObjects"]


class _Held:
    """A strong reference that answers like a weak one, for mutable values that cannot have one.

    Calling it returns the value while something other than this holds it (its reference
    count says so), else None: the list a caller got from a read and changes in place is
    the key's value, as an object with a weak reference would be.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __call__(self) -> Any:
        value = self.value
        # Ours: this slot, the name ``value``, and getrefcount's argument.
        return value if sys.getrefcount(value) > 3 else None


# Mutable, and no weak reference possible: held by _Held. (Immutable ones cannot be changed in place.)
_HELD_TYPES = (list, dict, set, bytearray)


class LiveObjects(dict[Hashable, "weakref.ref[Any] | _Held"]):
    """Spilled keys mapped to weak references to the values they held.

    When something else keeps a spilled value alive (a running task holding an
    array), loading the key back returns that very object instead of a copy read
    from disk. A plain ``dict`` underneath, so the engine's overwrite path keeps
    its one C-level ``pop(key, None)`` per put.

    Lists, dicts, sets and bytearrays cannot be weakly referenced: they are held
    (:class:`_Held`) and count as alive while their reference count says something
    else holds them. One that nothing else holds any more is let go within as many
    :meth:`remember` calls (spills) as there are held values (at the next one while
    one is held), or when its key is taken or forgotten. Other values without
    weak references (ints, strings, tuples) cannot change in place and are not remembered.

    Not thread-safe: the engine calls it under its lock. Never raises.

    Examples
    --------
    >>> class Array:
    ...     pass
    >>> live, value = LiveObjects(), Array()
    >>> live.remember("x", value)
    >>> live.take("x") is value
    True
    >>> live.take("x") is None  # taken once: the key is forgotten
    True
    >>> rows = [1, 2]
    >>> live.remember("y", rows)
    >>> live.take("y") is rows  # held, and alive elsewhere (``rows``)
    True
    """

    __slots__ = ("_held", "_since")

    def __init__(self) -> None:
        super().__init__()
        self._held: set[Hashable] = set()  # keys that were given a _Held (some may be gone since)
        self._since = 0  # remember() calls since the last sweep

    def remember(self, key: Hashable, value: Any) -> None:
        """Keep a weak reference to ``value`` under ``key`` (or hold it, see above)."""
        held = self._held
        if held:
            self._since += 1
            if self._since >= len(held):  # a sweep costs len(held): one per as many calls keeps each O(1)
                self._sweep()
        try:
            self[key] = weakref.ref(value)
        except TypeError:
            if type(value) not in _HELD_TYPES:
                self.pop(key, None)
                return
            self[key] = _Held(value)
            held.add(key)

    def take(self, key: Hashable) -> Any:
        """Forget ``key`` and return its value if still alive elsewhere, else None."""
        ref = self.pop(key, None)
        return None if ref is None else ref()

    def _sweep(self) -> None:
        # Let go of held values nothing else holds, and of keys whose entry went meanwhile.
        for key in list(self._held):
            ref = self.get(key)
            if type(ref) is not _Held:
                self._held.discard(key)
            elif ref() is None:
                del self[key]
                self._held.discard(key)
        self._since = 0
