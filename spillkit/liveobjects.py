"""Weak references to spilled values that may still be alive elsewhere in the process."""

from __future__ import annotations

import weakref
from collections.abc import Hashable
from typing import Any

__all__ = ["LiveObjects"]


class LiveObjects(dict[Hashable, "weakref.ref[Any]"]):
    """Spilled keys mapped to weak references to the values they held.

    When something else keeps a spilled value alive (a running task holding an
    array), loading the key back returns that very object instead of a copy read
    from disk. A plain ``dict`` underneath, so the engine's overwrite path keeps
    its one C-level ``pop(key, None)`` per put.

    Not thread-safe: the engine calls it under its lock. Never raises for values
    that cannot be weakly referenced (ints, strings, tuples, lists, dicts,
    bytearrays): they are simply not remembered, so a change made in place to a
    list, dict or bytearray that was spilled (or served without caching) is not
    seen by the next read. (Holding them and judging liveness by reference
    count was tried and dropped: a value in a reference cycle, or under two keys,
    always looks alive, and was never let go.)

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
    """

    # No instance __dict__: attribute lookups stay those of a plain dict.
    __slots__ = ()

    def remember(self, key: Hashable, value: Any) -> None:
        """Keep a weak reference to ``value`` under ``key`` (no-op if it cannot have one)."""
        try:
            self[key] = weakref.ref(value)
        except TypeError:  # ints, strings, tuples, lists, dicts cannot be
            self.pop(key, None)  # (and an older value's reference is no longer the key's)

    def take(self, key: Hashable) -> Any:
        """Forget ``key`` and return its value if still alive elsewhere, else None."""
        ref = self.pop(key, None)
        return None if ref is None else ref()
