"""Always-on counters of what a Chest did."""

from __future__ import annotations

import bisect
from dataclasses import asdict, dataclass, field

__all__ = ["LATENCY_BOUNDS", "Stats"]

# Upper bounds (seconds) of the disk latency histogram buckets; the last bucket is +Inf.
LATENCY_BOUNDS: tuple[float, ...] = (
    1e-4,
    2.5e-4,
    5e-4,
    1e-3,
    2.5e-3,
    5e-3,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


@dataclass(slots=True)
class Stats:
    """Cumulative counters kept by every :class:`~spillkit.Chest`.

    The engine updates these fields in place under its lock (cheaper than
    building an event object on the hot path); other listeners receive
    :class:`~spillkit.events.Event` objects. Read them at any time; for a
    consistent snapshot of all fields call :meth:`snapshot` while holding
    ``chest.engine.lock``.

    Parameters
    ----------
    **fields
        Every attribute below is also a keyword argument (a dataclass), each
        0 by default (the histograms: ``len(LATENCY_BOUNDS) + 1`` zeros); the
        engine passes none.

    Attributes
    ----------
    puts : int
        Values stored.
    hits : int
        Reads served from memory.
    loads : int
        Reads served from disk.
    load_bytes : int
        Bytes read from disk.
    load_seconds, spill_seconds : float
        Seconds spent in disk reads (loads) and in disk writes.
    misses : int
        Reads of absent keys (KeyError).
    spills : int
        Values written to disk while leaving memory.
    spill_bytes : int
        Bytes written to disk by spills, direct writes and flushes.
    evictions : int
        Values that left memory without a write (file reused).
    direct_writes : int
        Values larger than the budget, written straight to disk.
    spill_failures : int
        Writes that failed (value kept in memory), for every reason.
    disk_errors : int
        Writes the disk failed (OSError); quota, serialization and changes
        are counted apart.
    changed_errors : int
        Writes given up because the value kept changing while written
        (``verify_writes``).
    writer_errors : int
        Background writes that failed because no writer thread could start.
    unspillable : int
        Values set aside because they cannot be serialized.
    serialize_errors : int
        Writes of a put over the budget, or of a flush, that failed because
        the value cannot be serialized.
    load_failures : int
        Reads that found a corrupt or missing file.
    reused : int
        Reads of spilled values still alive elsewhere, handed back without a
        disk read.
    popped : int
        Disk reads ``pop()`` made (counted in ``loads`` too; a pop is no get).
    quota_errors : int
        Puts refused because ``available_disk`` would be exceeded.
    reserve_failures : int
        Flushes that could not make the manifest's reserve file whole
        (:mod:`spillkit.reserve`).
    deletes : int
        Keys deleted.
    write_latency, read_latency : list of int
        Disk latency histograms: counts per :data:`LATENCY_BOUNDS` bucket
        (the last is +Inf), not cumulative.

    Notes
    -----
    Thread-safe to read; only the engine writes, under its lock. Raises
    nothing of its own: the properties and methods only read and add.

    Examples
    --------
    >>> s = Stats()
    >>> s.hits += 1
    >>> s.hit_ratio
    1.0
    """

    puts: int = 0
    hits: int = 0
    loads: int = 0
    load_bytes: int = 0
    load_seconds: float = 0.0
    misses: int = 0
    spills: int = 0
    spill_bytes: int = 0
    spill_seconds: float = 0.0
    evictions: int = 0
    direct_writes: int = 0
    spill_failures: int = 0
    disk_errors: int = 0
    changed_errors: int = 0
    writer_errors: int = 0
    unspillable: int = 0
    serialize_errors: int = 0
    load_failures: int = 0
    reused: int = 0
    popped: int = 0
    quota_errors: int = 0
    reserve_failures: int = 0
    deletes: int = 0
    write_latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))
    read_latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS) + 1))

    def observe_write(self, nbytes: int, seconds: float) -> None:
        """Count one disk write (called by the engine under its lock)."""
        self.spill_bytes += nbytes
        self.spill_seconds += seconds
        self.write_latency[bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1

    def observe_read(self, nbytes: int, seconds: float) -> None:
        """Count one disk read (called by the engine under its lock)."""
        self.loads += 1
        self.load_bytes += nbytes
        self.load_seconds += seconds
        self.read_latency[bisect.bisect_left(LATENCY_BOUNDS, seconds)] += 1

    @property
    def reads(self) -> int:
        """All reads that found their key: hits, loads, and live spilled values handed back (reused)."""
        return self.hits + self.loads + self.reused

    @property
    def hit_ratio(self) -> float:
        """Reads served without the disk (hits and reuses) over all successful reads; 0.0 before any read."""
        reads = self.reads
        return (self.hits + self.reused) / reads if reads else 0.0

    @property
    def disk_writes(self) -> int:
        """Every write to disk: spills, direct writes of oversized values, and flushes."""
        return sum(self.write_latency)

    def snapshot(self) -> dict[str, object]:
        """Return every counter as a plain dict (a deep copy)."""
        return asdict(self)
