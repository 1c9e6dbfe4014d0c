"""What ties a worker's Chest to the worker: dropped when it closes, told its tasks' costs, exported under its name."""

from __future__ import annotations

import contextlib
import math
import warnings
import weakref
from collections.abc import Callable
from typing import Any

from .extras import missing_extra

try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError as error:  # (tests/test_extras.py)
    raise missing_extra("spillkit.distributed", "dask.distributed", "dask") from error

from .chest import Chest
from .errors import SpillError, SpillWarning

__all__ = ["drop_with_worker", "instrument_worker_chest"]


class _DropWithWorker(WorkerPlugin):
    """Drops a worker's Chest when the worker closes (dask tears its plugins down then), and gives it
    each task's compute time as the cost of the result the task stored.

    Without the costs, ``policy="cost"`` (and ``cachey``) on a worker weighed every value by its
    estimated reload time alone (helper-127: one-second results spilled first, as under ``lru``). The
    worker records a task's compute time (``startstops``) before it stores the result; the
    transition into memory then hands it to :meth:`Chest.set_cost`. Never raises into the worker.
    """

    def __init__(self, chest: Chest, worker: Any) -> None:
        self.chest = chest
        try:  # (the worker holds this plugin: no cycle through it)
            self._worker: Callable[[], Any] = weakref.ref(worker)
        except TypeError:  # an object that takes no weak reference: no costs, the drop still works
            self._worker = lambda: None
        # One name per Chest: no user plugin takes it by chance (its teardown would drop a live Chest)
        self.name = f"spillkit-storage-{id(chest):x}"

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish != "memory" or start not in ("executing", "long-running"):
            return  # (a result fetched from another worker cost this one nothing to compute)
        worker = self._worker()
        task = None if worker is None else getattr(getattr(worker, "state", None), "tasks", {}).get(key)
        seconds = _compute_seconds(task)
        if seconds is not None:
            with contextlib.suppress(KeyError, SpillError):  # (gone again, or the Chest closed meanwhile)
                self.chest.set_cost(key, seconds)

    def teardown(self, worker: Any) -> None:
        self.chest.drop()  # the worker's data goes with it, as its local directory does


def _compute_seconds(task: Any) -> float | None:
    """The task's last compute time from the worker's own record of it, or None."""
    for entry in reversed(getattr(task, "startstops", None) or ()):
        if entry.get("action") == "compute":
            seconds = float(entry["stop"]) - float(entry["start"])
            return seconds if seconds >= 0 and math.isfinite(seconds) else None
    return None


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
        plugin = _DropWithWorker(chest, worker)
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
