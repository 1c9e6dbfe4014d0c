"""Always-on counters of what a Chest did."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Stats"]


@dataclass(slots=True)
class Stats:
    """Cumulative counters kept by every :class:`~spillkit.Chest`.

    The engine updates these fields in place under its lock (cheaper than
    building an event object on the hot path); other listeners receive
    :class:`~spillkit.events.Event` objects. Read them at any time; a consistent
    snapshot of all fields is :meth:`snapshot` (call it through
    ``chest.stats_snapshot()`` to hold the lock).

    Examples
    --------
    >>> s = Stats()
    >>> s.hits += 1
    >>> s.hit_ratio
    1.0
    """

    puts: int = 0
    hits: int = 0  # reads served from memory
    hit_bytes: int = 0
    loads: int = 0  # reads served from disk
    load_bytes: int = 0  # bytes read from disk
    load_seconds: float = 0.0
    misses: int = 0  # reads of absent keys (KeyError)
    spills: int = 0  # values written to disk while leaving memory
    spill_bytes: int = 0  # bytes written to disk by spills and direct writes
    spill_seconds: float = 0.0
    evictions: int = 0  # values that left memory without a write (file reused)
    direct_writes: int = 0  # values larger than the budget, written straight to disk
    spill_failures: int = 0  # writes that failed (value kept in memory)
    unspillable: int = 0  # values set aside because they cannot be serialized
    load_failures: int = 0  # reads that found a corrupt or missing file
    deletes: int = 0

    @property
    def reads(self) -> int:
        """All reads that found their key (hits plus loads)."""
        return self.hits + self.loads

    @property
    def hit_ratio(self) -> float:
        """Hits over all successful reads; 0.0 before any read."""
        reads = self.hits + self.loads
        return self.hits / reads if reads else 0.0

    def snapshot(self) -> dict[str, float]:
        """Return every counter as a plain dict (a copy)."""
        return asdict(self)
