"""The collector behind :mod:`spillkit.metrics`: :class:`ChestCollector` and the metric families it fills.

:class:`ChestCollector` keeps the exported Chests (by weak reference, one
``chest`` label each); at every scrape ``_Families`` reads each Chest's state
and :class:`~spillkit.stats.Stats` counters (under its engine lock if that
comes within ``lock_wait``) and turns them into Prometheus metric families.
Registering collectors and serving them is :mod:`spillkit.metrics`' part,
which re-exports :class:`ChestCollector`. Like :mod:`spillkit.metrics`, this
module imports ``prometheus_client`` and is never imported by ``import spillkit``.
"""

from __future__ import annotations

import itertools
import re
import threading
import weakref
from collections.abc import Iterator

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
    from prometheus_client.metrics_core import Metric
except ImportError as error:  # pragma: no cover - exercised in a subprocess without the package
    raise ImportError('spillkit.metrics needs prometheus-client: pip install "spillkit[metrics]"') from error

from . import __version__
from .chest import Chest
from .stats import LATENCY_BOUNDS

__all__ = ["ChestCollector"]

_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")  # a namespace: the start of a classic Prometheus metric name
_BOUNDS = [repr(float(b)) for b in LATENCY_BOUNDS] + ["+Inf"]


def _info(chest: Chest) -> dict[str, str]:
    codec = getattr(chest.engine.disk, "codec", None)
    return {
        "version": __version__,
        "policy": type(chest.policy).__name__,
        "codec": str(getattr(codec, "name", type(codec).__name__)),
    }


def _is_closed(chest: Chest) -> bool:
    # A Chest whose close() is flushing is closed to changes but not gone: its close may fail (full
    # disk) and leave it open with every value, so it keeps its name and comes back to the scrapes.
    return chest.closed and not chest.engine.closing


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


class ChestCollector:
    """A Prometheus collector for several Chests, each under its own ``chest`` label.

    Parameters
    ----------
    namespace : str
        Prefix of every metric name (default ``"spillkit"``).
    lock_wait : float
        Seconds a scrape waits for a Chest's engine lock (default 0.05) before
        reading its numbers without it (the ``lock_wait`` attribute).

    Notes
    -----
    Exports ``<ns>_memory_bytes{tier}``, ``<ns>_keys{tier}`` (``memory``;
    ``in-flight``: evicted, their background write not completed;
    ``disk``: keys whose only copy is on disk; ``memory_bytes{tier="disk"}`` is
    the bytes of spill files, spares kept for reuse included;
    ``memory_bytes{tier="pinned"}``: the part of ``memory`` that running tasks'
    pins keep outside the budget), ``<ns>_memory_budget_bytes``,
    ``<ns>_spill_{bytes,count,time_seconds}_total{activity}`` (``memory-read``,
    ``disk-read``, ``disk-write``, as dask.distributed's workers do; their
    seconds, and the latency histogram's, include pickling and unpickling: a
    value is encoded as it is written, into the file, not timed apart;
    ``memory-reuse``: reads of a spilled value still alive elsewhere, handed
    back without a disk read, a count only as ``memory-read`` is;
    ``compaction-read`` and ``compaction-write``: bytes segment compaction
    moved, counted apart from ``disk-write``; ``discarded-write``: bytes written
    to temporary files and thrown away, by a background write dropped because
    its key was deleted or overwritten meanwhile, or by a write made again
    because the value changed while it was written),
    ``<ns>_spill_errors_total{reason}`` (``disk``: an ``OSError``, ``changed``: a
    value kept changing while written, ``serialize``: a value kept in memory, or a
    put over the budget refused, because it cannot be pickled, ``quota``, ``corrupt``,
    ``reserve``: a flush could not make the manifest's reserve file whole, ``writer``:
    a background write failed because no writer thread could start; each failure
    counts under one reason),
    ``<ns>_misses_total``, the histogram ``<ns>_disk_latency_seconds{activity}``
    and ``<ns>_chest_info{version,policy,codec}``.

    Thread-safe: ``add``, ``remove`` and ``collect`` may run concurrently with each
    other and with cache operations. A scrape holds each Chest's engine lock
    only while copying that Chest's numbers, and waits at most ``lock_wait``
    for it: a flush, a close or a synchronous spill holds it during disk I/O,
    and one busy Chest must not stall the scrape of every other (a dask
    worker's ``/metrics``). Without the lock the numbers are read as they are
    (plain counters, never torn), so they may disagree with each other by the
    few operations that ran while they were read; each histogram still agrees
    with its own count. Chests are held by weak reference; a closed or
    garbage-collected Chest disappears from the next scrape and frees its
    name; one whose ``close()`` is under way is left out of the scrapes
    meanwhile (and comes back if the close fails). Collecting never raises
    because of a Chest's state.

    Examples
    --------
    >>> from prometheus_client import CollectorRegistry
    >>> registry, collector = CollectorRegistry(), ChestCollector()
    >>> registry.register(collector)
    >>> chest = Chest(available_memory=100)
    >>> collector.add("etl", chest)
    >>> chest["x"] = 1
    >>> registry.get_sample_value("spillkit_keys", {"chest": "etl", "tier": "memory"})
    1
    >>> chest.close()
    >>> registry.get_sample_value("spillkit_keys", {"chest": "etl", "tier": "memory"}) is None
    True
    """

    def __init__(self, namespace: str = "spillkit", *, lock_wait: float = 0.05) -> None:
        # Checked here, not left to prometheus_client: since its UTF-8 names (0.26) it takes any string,
        # and "app cache" and "app_cache" then both served app_cache_* families twice (helper-97).
        if not isinstance(namespace, str) or not _NAME.fullmatch(namespace):
            raise ValueError(
                f"namespace must be a Prometheus metric name prefix ([a-zA-Z_][a-zA-Z0-9_]*), got {namespace!r}"
            )
        _Families(namespace)
        self.namespace = namespace
        self.lock_wait = lock_wait
        self._lock = threading.Lock()
        self._chests: dict[str, tuple[weakref.ref[Chest], dict[str, str]]] = {}

    def add(self, name: str, chest: Chest) -> None:
        """Export ``chest`` under ``chest=name``; ValueError if either is already exported, or for a bad name."""
        _check_label(name)  # refused here: exported, it would make every scrape of the registry raise
        with self._lock:
            self._prune()
            if name in self._chests:
                raise ValueError(f"a Chest named {name!r} is already instrumented in namespace {self.namespace!r}")
            for other, (ref, _) in self._chests.items():
                if ref() is chest:
                    raise ValueError(f"this Chest is already instrumented as {other!r}")
            self._chests[name] = (weakref.ref(chest), _info(chest))

    def remove(self, chest: Chest) -> bool:
        """Stop exporting ``chest``; return whether it was exported."""
        with self._lock:
            names = [name for name, (ref, _) in self._chests.items() if ref() is chest]
            for name in names:
                del self._chests[name]
            self._prune()
            return bool(names)

    def names(self) -> list[str]:
        """The ``chest`` labels of the live, open Chests exported now."""
        with self._lock:
            self._prune()
            return list(self._chests)

    def _prune(self) -> None:
        for name, (ref, _) in list(self._chests.items()):
            chest = ref()
            if chest is None or _is_closed(chest):
                del self._chests[name]

    def describe(self) -> Iterator[Metric]:
        """The metric families without samples (lets a registry detect name clashes up front)."""
        return iter(_Families(self.namespace).all())

    def collect(self) -> Iterator[Metric]:
        """Read every exported Chest now and yield its metric families."""
        with self._lock:
            self._prune()
            live = [(name, ref(), info) for name, (ref, info) in self._chests.items()]
        if not live:
            return iter(())  # no HELP/TYPE lines without samples once every Chest is gone
        families = _Families(self.namespace)
        for name, chest, info in live:
            if chest is not None:
                families.add(name, chest, info, self.lock_wait)
        return iter(families.all())


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
        # A background write dropped because its key changed, or made again because the value did.
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


def _check_label(name: object) -> None:
    """ValueError unless ``name`` is a str prometheus_client can write (UTF-8: no lone surrogate)."""
    if not isinstance(name, str):
        raise ValueError(f"a Chest's metrics name must be a str, not {type(name).__name__} {name!r}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"a Chest's metrics name must be valid UTF-8 (no lone surrogate), got {name!r}") from error
