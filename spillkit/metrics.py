"""Prometheus export: a collector that reads each Chest's state and counters at scrape time.

This module, :mod:`spillkit.metrics_collector` and :mod:`spillkit.metrics_families`
are the only spillkit modules that import ``prometheus_client``. Nothing registers at import;
nothing runs per cache operation (the collector reads the counters
:class:`~spillkit.stats.Stats` keeps anyway, so the hot path pays nothing
for Prometheus). Usage::

    from spillkit.metrics import instrument, serve

    instrument(chest, name="etl")  # the global registry; or instrument(chest, registry, name=...)
    server = serve(9464)           # http://127.0.0.1:9464/metrics

:mod:`spillkit.metrics_collector` holds :class:`ChestCollector` (re-exported
here), and :mod:`spillkit.metrics_families` the metric families it fills at each scrape; this module registers
collectors (:func:`instrument`, :func:`uninstrument`) and serves them
(:func:`serve`).

``dashboards/spillkit.json`` is a Grafana dashboard for these metrics.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

from .extras import missing_extra

try:
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
except ImportError as error:  # (tests/test_extras.py)
    raise missing_extra("spillkit.metrics", "prometheus-client", "metrics") from error

from .chest import Chest
from .metrics_collector import ChestCollector

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

__all__ = ["ChestCollector", "instrument", "serve", "uninstrument"]

_lock = threading.Lock()
_collectors: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, ChestCollector]] = weakref.WeakKeyDictionary()


def instrument(
    chest: Chest, registry: CollectorRegistry | None = None, *, name: str, namespace: str = "spillkit"
) -> ChestCollector:
    """Export ``chest`` to ``registry`` (default: the global one) under the label ``chest=name``.

    Many Chests share one :class:`ChestCollector` per registry and namespace. The
    Chest stops being exported when it is closed or garbage collected, or by
    :func:`uninstrument`. With the global registry the metrics also appear on
    an application's existing exporter, e.g. a dask.distributed worker's
    ``/metrics``.

    Parameters
    ----------
    chest : Chest
        The Chest to export; held by weak reference.
    registry : CollectorRegistry, optional
        Where to register (default: ``prometheus_client.REGISTRY``).
    name : str
        The value of the ``chest`` label, unique per registry and namespace.
    namespace : str
        Prefix of the metric names (default ``"spillkit"``).

    Returns
    -------
    ChestCollector
        The collector now exporting the Chest.

    Raises
    ------
    ValueError
        If ``name`` is already exported in this registry and namespace, the
        Chest already is under another name, ``name`` is no str or not valid
        UTF-8 (a lone surrogate, as ``os.fsdecode`` makes of some file names), or
        ``namespace`` is no metric name prefix (``[a-zA-Z_][a-zA-Z0-9_]*``).
        Nothing changes in that case.

    Notes
    -----
    Thread-safe.
    """
    registry = REGISTRY if registry is None else registry
    with _lock:
        per_namespace = _collectors.setdefault(registry, {})
        collector = per_namespace.get(namespace)
        if collector is not None:
            collector.add(name, chest)
            return collector
        collector = ChestCollector(namespace)
        collector.add(name, chest)
        registry.register(collector)  # a clash with another collector's names raises ValueError
        per_namespace[namespace] = collector
        return collector


def uninstrument(chest: Chest, registry: CollectorRegistry | None = None) -> bool:
    """Stop exporting ``chest`` from ``registry`` (default: the global one); return whether it was.

    A collector left without Chests is unregistered, so the registry is as it
    was before :func:`instrument`. Thread-safe; never raises for an unknown Chest.
    """
    registry = REGISTRY if registry is None else registry
    found = False
    with _lock:
        per_namespace = _collectors.get(registry, {})
        for namespace, collector in list(per_namespace.items()):
            found = collector.remove(chest) or found
            if not collector.names():
                registry.unregister(collector)
                del per_namespace[namespace]
    return found


def serve(port: int, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None) -> WSGIServer:
    """Serve ``registry`` (default: the global one) at ``http://addr:port/metrics`` from a daemon thread.

    Binds 127.0.0.1 unless told otherwise; ``port=0`` picks a free port
    (``server.server_port``). Stop it with ``server.shutdown()`` then
    ``server.server_close()``. Raises ``OSError`` if the address is taken.
    """
    started = start_http_server(port, addr=addr, registry=REGISTRY if registry is None else registry)
    if started is None:  # prometheus-client < 0.20 returns nothing, so the server could never be stopped
        raise RuntimeError('serve() needs prometheus-client >= 0.20: pip install -U "spillkit[metrics]"')
    return started[0]
