"""What ties a worker's Chest to the worker: dropped when it closes, exported under its name."""

from __future__ import annotations

import warnings
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from .chest import Chest
from .errors import SpillWarning

__all__ = ["drop_with_worker", "instrument_worker_chest"]


class _DropWithWorker(WorkerPlugin):
    """Drops a worker's Chest when the worker closes (dask tears its plugins down then)."""

    def __init__(self, chest: Chest) -> None:
        self.chest = chest
        # One name per Chest: no user plugin takes it by chance (its teardown would drop a live Chest)
        self.name = f"spillkit-storage-{id(chest):x}"

    def teardown(self, worker: Any) -> None:
        self.chest.drop()  # the worker's data goes with it, as its local directory does


def drop_with_worker(worker: Any, chest: Chest) -> None:
    """Make ``worker`` drop ``chest`` when it closes: files, directory and metrics series.

    Without it, a closed in-process worker (``LocalCluster(processes=False)``)
    kept its Chest open and exported until garbage collected, a new metrics
    label per cluster. Registered straight into the worker's plugins (its
    ``teardown`` runs at close; nothing needs ``setup``), so it works while
    the worker is still being built. A Chest the worker stored in before keeps
    its own plugin (dropping a dropped Chest does nothing).
    """
    plugins = getattr(worker, "plugins", None)
    if isinstance(plugins, dict):
        plugin = _DropWithWorker(chest)
        plugins[plugin.name] = plugin


def instrument_worker_chest(chest: Chest, name: str, fallback_suffix: str) -> None:
    """Export ``chest`` under the label ``name``, or ``name-fallback_suffix`` if taken (else warn); needs prometheus."""
    try:
        from .metrics import instrument
    except ImportError:
        return  # no prometheus-client: a worker then serves no /metrics either
    refused = ""
    for label in (name, f"{name}-{fallback_suffix}"):
        try:
            instrument(chest, name=label)
            return
        except ValueError as error:  # e.g. two in-process clusters with the same worker names
            refused = str(error)
    warnings.warn(f"spillkit.distributed: this Chest is not exported ({refused})", SpillWarning, stacklevel=3)
