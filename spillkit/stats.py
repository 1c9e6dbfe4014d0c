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
    ``chest.engine.lock``. Thread-safe to read; only the engine writes.

    Examples
    --------
    >>> s = Stats()
    >>> s.hits += 1
    >>> s.hit_ratio
    1.0
    """

    puts: int = 0
    hits: int = 0  # reads served from memory
    loads: int = 0  # reads served from disk
    load_bytes: int = 0  # bytes read from disk
    load_seconds: float = 0.0
    misses: int = 0  # reads of absent keys (KeyError)
    spills: int = 0  # values written to disk while leaving memory
    spill_bytes: int = 0  # bytes written to disk by spills, direct writes and flushes
    spill_seconds: float = 0.0
    evictions: int = 0  # values that left memory without a write (file reused)
    direct_writes: int = 0  # values larger than the budget, written straight to disk
    spill_failures: int = 0  # writes that failed (value kept in memory), for every reason
    disk_errors: int = 0  # writes the disk failed (OSError); quota, serialization and changes are counted apart
    changed_errors: int = 0  # writes given up because the value kept changing while written (verify_writes)
    writer_errors: int = 0  # background writes that failed because no writer thread could start
    unspillable: int = 0  # values set aside because they cannot be serialized
    serialize_errors: int = 0  # writes of a put over the budget, or of a flush, failed: the value cannot be serialized
    load_failures: int = 0  # reads that found a corrupt or missing file
    reused: int = 0  # reads of spilled values still alive elsewhere, handed back without a disk read
    popped: int = 0  # disk reads pop() made (counted in loads too; a pop is no get)
    quota_errors: int = 0  # puts refused because available_disk would be exceeded
    reserve_failures: int = 0  # flushes that could not make the manifest's reserve file whole (spillkit.reserve)
    deletes: int = 0
    # Disk latency histograms: counts per LATENCY_BOUNDS bucket (last = +Inf), not cumulative.
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
