"""Values that cannot change in place: their file holds them for as long as the key's record stands.

Before the engine drops a resident value for its copy on disk, it asks the store whether
the copy still encodes the value (:meth:`spillkit.loadprints.LoadPrints.holds`): one
changed in place since it was loaded or flushed must be written again, not lost. That
check encodes the value again and takes its keyed digest. A value of an immutable built-in
type cannot have changed, so its signed record needs no check: many small values read
back and evicted again (``benchmarks/bench_small.py``) spent a fifth of their time in it.

Only exact types count: a subclass of ``bytes`` or ``str`` may carry a ``__dict__``
that pickle writes and that can change. Tuples count when everything in them does (a
tuple of lists can change), to a bounded depth: past it, the usual check decides.
"""

from __future__ import annotations

from typing import Any

__all__ = ["cannot_change"]

_SCALARS = frozenset({bytes, str, int, float, complex, bool, type(None), range})
_MAX_DEPTH = 4  # tuples nested deeper go to the usual check (the walk must stay cheap next to it)


def cannot_change(value: Any, depth: int = 0) -> bool:
    """True when ``value`` is of an immutable built-in type all the way down (so its encoding is fixed)."""
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is not tuple or depth >= _MAX_DEPTH:
        return False
    return all(cannot_change(item, depth + 1) for item in value)
