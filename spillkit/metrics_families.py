"""The metric families of one scrape: how :class:`~spillkit.metrics.ChestCollector` reads a Chest.

``_Families`` holds the families a scrape yields; :meth:`_Families.add` reads
one Chest's state and :class:`~spillkit.stats.Stats` counters (under its
engine lock if that comes within the collector's ``lock_wait``) into them.
Imports ``prometheus_client``; never imported by ``import spillkit``.
"""

from __future__ import annotations

import itertools

from .extras import missing_extra

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
    from prometheus_client.metrics_core import Metric
except ImportError as error:  # (tests/test_extras.py)
    raise missing_extra("spillkit.metrics", "prometheus-client", "metrics") from error

from . import __version__
from .chest import Chest
from .stats import LATENCY_BOUNDS

__all__: list[str] = []  # helpers of spillkit.metrics_collector

_BOUNDS = [repr(float(b)) for b in LATENCY_BOUNDS] + ["+Inf"]


def _info(chest: Chest) -> dict[str, str]:
    codec = getattr(chest.engine.disk, "codec", None)
    return {
        "version": __version__,
        "policy": type(chest.policy).__name__,
        "codec": str(getattr(codec, "name", type(codec).__name__)),
    }


def _in_flight_keys(chest: Chest) -> int:
    """Keys evicted to a background write that has not completed: out of memory, not on disk yet."""
    writer = chest.engine._writer
    if writer is None:
        return 0
    for _ in range(3):
        try:  # tuple() copies in one C call; a scrape reading without the lock may still meet a resize
            return sum(1 for pending in tuple(writer.pending.values()) if pending.evicting)
        except RuntimeError:
            continue
    return 0


class _Families:
    """The metric families of one scrape; :meth:`add` appends one Chest's samples."""

    def __init__(self, ns: str) -> None:
        by_tier, by_activity = ["chest", "tier"], ["chest", "activity"]
        self.memory = GaugeMetricFamily(f"{ns}_memory_bytes", "Bytes in memory / in flight / on disk", labels=by_tier)
        self.keys = GaugeMetricFamily(f"{ns}_keys", "Keys per tier (disk: only copy on disk)", labels=by_tier)
        self.budget = GaugeMetricFamily(f"{ns}_memory_budget_bytes", "The memory budget", labels=["chest"])
        self.nbytes = CounterMetricFamily(f"{ns}_spill_bytes", "Bytes read or written", labels=by_activity)
        self.count = CounterMetricFamily(f"{ns}_spill_count", "Reads and writes", labels=by_activity)
        io_time = "Time to serialize and write, or read and deserialize"  # (a value is encoded into its file)
        self.seconds = CounterMetricFamily(f"{ns}_spill_time_seconds", io_time, labels=by_activity)
        self.errors = CounterMetricFamily(f"{ns}_spill_errors", "Failures by reason", labels=["chest", "reason"])
        self.misses = CounterMetricFamily(f"{ns}_misses", "Reads of absent keys", labels=["chest"])
        self.latency = HistogramMetricFamily(f"{ns}_disk_latency_seconds", io_time, labels=by_activity)
        self.info = InfoMetricFamily(f"{ns}_chest", "Version, eviction policy and codec", labels=["chest"])

    def add(self, name: str, chest: Chest, info: dict[str, str], lock_wait: float) -> None:
        lock = chest.engine.lock
        locked = lock.acquire(timeout=lock_wait)
        try:
            # Again now: closed since the collector's prune (while this scrape waited), it would be
            # exported with every gauge at zero. Being closed without the lock: its numbers are in flux.
            if chest.closed:
                return
            self._read(name, chest, locked)
        finally:
            if locked:
                lock.release()
        self.info.add_metric([name], info)

    def _read(self, name: str, chest: Chest, locked: bool) -> None:
        # Under the engine's lock one Chest's numbers agree with each other; it is held for a few
        # dozen appends, never for I/O. Without it (``locked`` False) every read is of a plain number.
        s, store = chest.stats, chest._store
        in_memory, in_flight = len(chest.inmem), _in_flight_keys(chest)
        disk_bytes = chest.disk_bytes if locked else store.space_in_use()  # disk_bytes recounts under the lock
        self.memory.add_metric([name, "memory"], chest.memory_bytes)
        self.memory.add_metric([name, "in-flight"], chest.engine.in_flight_bytes)
        self.memory.add_metric([name, "pinned"], chest.engine.pinned_bytes)  # within "memory", outside the budget
        self.memory.add_metric([name, "disk"], disk_bytes)
        self.keys.add_metric([name, "memory"], in_memory)
        self.keys.add_metric([name, "in-flight"], in_flight)
        self.keys.add_metric([name, "disk"], max(0, len(chest) - in_memory - in_flight))
        self.budget.add_metric([name], chest.available_memory)
        # memory-read and memory-reuse have a count only: counting hit bytes would cost a third of a hit.
        self.count.add_metric([name, "memory-read"], s.hits)
        self.count.add_metric([name, "memory-reuse"], s.reused)
        reads, writes = list(s.read_latency), list(s.write_latency)  # copied once: count and histogram agree
        for activity, buckets, nbytes, seconds in (
            ("disk-read", reads, s.load_bytes, s.load_seconds),
            ("disk-write", writes, s.spill_bytes, s.spill_seconds),
        ):
            self.count.add_metric([name, activity], sum(buckets))  # loads and disk_writes are these sums
            self.nbytes.add_metric([name, activity], nbytes)
            self.seconds.add_metric([name, activity], seconds)
            cumulative = itertools.accumulate(buckets)  # Stats keeps per-bucket counts
            self.latency.add_metric([name, activity], list(zip(_BOUNDS, cumulative, strict=True)), seconds)
        # Compaction copies live records between segments: disk I/O that no spill or load counts.
        # getattr: a store from before these counters existed exports 0 rather than failing the scrape.
        self.nbytes.add_metric([name, "compaction-read"], getattr(store, "compaction_read_bytes", 0))
        self.nbytes.add_metric([name, "compaction-write"], getattr(store, "compaction_written_bytes", 0))
        # A background write dropped because its key changed, made again because the value did, or refused.
        self.nbytes.add_metric([name, "discarded-write"], getattr(store, "discarded_bytes", 0))
        for reason, n in (
            ("disk", s.disk_errors),
            ("changed", s.changed_errors),
            ("writer", s.writer_errors),
            ("serialize", s.unspillable + s.serialize_errors),
            ("quota", s.quota_errors),
            ("corrupt", s.load_failures),
            ("reserve", s.reserve_failures),
        ):
            self.errors.add_metric([name, reason], n)
        self.misses.add_metric([name], s.misses)

    def all(self) -> list[Metric]:
        return [self.memory, self.keys, self.budget, self.nbytes, self.count, self.seconds, self.errors,
                self.misses, self.latency, self.info]  # fmt: skip
