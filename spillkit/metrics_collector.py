"""The collector behind :mod:`spillkit.metrics`: :class:`ChestCollector` and the metric families it fills.

:class:`ChestCollector` keeps the exported Chests (by weak reference, one
``chest`` label each); at every scrape ``_Families`` (:mod:`spillkit.metrics_families`) reads each Chest's state
and :class:`~spillkit.stats.Stats` counters (under its engine lock if that
comes within ``lock_wait``) and turns them into Prometheus metric families.
Registering collectors and serving them is :mod:`spillkit.metrics`' part,
which re-exports :class:`ChestCollector`. Like :mod:`spillkit.metrics`, this
module imports ``prometheus_client`` and is never imported by ``import spillkit``.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Iterator

from .extras import missing_extra

try:
    from prometheus_client.metrics_core import Metric
except ImportError as error:  # (tests/test_extras.py)
    raise missing_extra("spillkit.metrics", "prometheus-client", "metrics") from error

from .chest import Chest
from .metrics_families import _Families, _info

__all__ = ["ChestCollector"]

_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")  # a namespace: the start of a classic Prometheus metric name


def _is_closed(chest: Chest) -> bool:
    # A Chest whose close() is flushing is closed to changes but not gone: its close may fail (full
    # disk) and leave it open with every value, so it keeps its name and comes back to the scrapes.
    return chest.closed and not chest.engine.closing


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
    its key was deleted or overwritten meanwhile, a write made again because
    the value changed while it was written, or one the quota or the disk
    refused as it was moved into place),
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


def _check_label(name: object) -> None:
    """ValueError unless ``name`` is a str prometheus_client can write (UTF-8: no lone surrogate)."""
    if not isinstance(name, str):
        raise ValueError(f"a Chest's metrics name must be a str, not {type(name).__name__} {name!r}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"a Chest's metrics name must be valid UTF-8 (no lone surrogate), got {name!r}") from error
