"""Spilled inputs loaded by dask's worker threads instead of its one scheduling thread.

dask's local scheduler reads every input of a task from ``cache`` in its scheduling
thread before handing the task to a worker, so with a spilling cache all loads ran
one after another in that thread while the workers waited for work. Under
:func:`spillkit.dask.spilling`, computations run through :meth:`WorkerLoads.schedule`: in
that thread, an input that is on disk is handed over as a small :class:`OnDisk`
marker, and the worker that runs the task loads it (``get_async``'s ``loads`` hook runs
in the worker), several at once: the Chest reads without holding its lock
(:mod:`spillkit.unlocked`).

The marker never escapes: only the thread running :meth:`WorkerLoads.schedule` is handed
markers, every task's inputs are resolved before the task runs, and the computed
results are resolved before ``schedule`` returns. Any other use of the cache (another
scheduler, another thread, ``scheduler="threads"`` given explicitly) gets values.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Hashable, Iterator, Mapping, MutableMapping
from typing import Any

import dask
import dask.threaded

from .chest import Chest

__all__ = ["OnDisk", "WorkerLoads"]


class _Unshared(dict[Hashable, Any]):
    """The plain dict cache of a computation that cannot share the Chest (see :meth:`WorkerLoads.schedule`)."""


class OnDisk:
    """Stands in for an input on disk in the arguments dask sends to a worker thread."""

    __slots__ = ("key",)

    def __init__(self, key: Hashable) -> None:
        self.key = key

    def __repr__(self) -> str:
        return "OnDisk(...)"


class WorkerLoads(MutableMapping[Hashable, Any]):
    """dask's ``cache=``: the Chest, with spilled inputs loaded by the worker that needs them.

    Thread-safe: one computation at a time uses the Chest (others get a dict of their
    own), and registers its scheduling thread for its duration; everything else is
    the Chest's, which has its own lock.
    """

    def __init__(self, chest: Chest) -> None:
        self.chest = chest
        self.active = True  # until the spilling() block that made this cache ends
        self._lock = threading.Lock()
        self._busy = False  # a computation uses the Chest (one at a time)
        self._scheduler: int | None = None  # the thread scheduling it, when it takes markers

    # ---- the mapping dask uses -------------------------------------------------------------
    def __getitem__(self, key: Hashable) -> Any:
        # A dict lookup without the Chest's lock: a value that is being loaded or spilled
        # right now is either answer, and the worker's own get sorts it out.
        if threading.get_ident() == self._scheduler and key not in self.chest.engine.memory and key in self.chest:
            return OnDisk(key)
        return self.chest[key]

    def __setitem__(self, key: Hashable, value: Any) -> None:
        self.chest[key] = value

    def __delitem__(self, key: Hashable) -> None:
        del self.chest[key]

    def __contains__(self, key: object) -> bool:
        return key in self.chest

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self.chest)

    def __len__(self) -> int:
        return len(self.chest)

    # ---- the scheduler ----------------------------------------------------------------------
    def loads(self, info: Any) -> Any:
        """``get_async``'s ``loads``: load a task's inputs that are on disk, wherever it runs.

        Also called with ``(result, worker id)`` and ``(error, traceback)``, which hold no markers.
        """
        if type(info) is tuple and len(info) == 2 and type(info[1]) is dict:
            task, data = info
            if any(type(value) is OnDisk for value in data.values()):
                return task, {dep: self.chest[v.key] if type(v) is OnDisk else v for dep, v in data.items()}
        return info

    def schedule(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        """dask's threaded ``get`` with this cache and worker-side loads (dask's ``scheduler=``).

        One computation at a time uses the Chest, and takes its keys out again when it ends
        (results included: they are returned; ``persist`` keeps them in the collection):
        dask's local scheduler takes a key it finds in the cache for computed, so a key left
        by an earlier computation (failed, or a result) or another one still running would
        make its dependents fail. A computation started while another uses the Chest (in
        another thread, or nested inside a task) runs with a dict of its own, warned about.
        """
        cache = kwargs.get("cache", dask.config.get("cache", None))
        if not self.active or cache is not self:
            # The spilling() block is over (a config it set was put back later: then no closed
            # Chest may be dask's cache either), or another cache was asked for.
            if isinstance(cache, WorkerLoads) and not cache.active:
                kwargs["cache"] = _Unshared()
            return dask.threaded.get(dsk, keys, **kwargs)
        # Values only (nothing there knows of markers) for a pool of dask's own, maybe processes,
        # and for re-running a failed task locally.
        markers = not (
            kwargs.get("rerun_exceptions_locally", dask.config.get("rerun_exceptions_locally", False))
            or kwargs.get("pool", dask.config.get("pool", None)) is not None
        )
        with self._lock:
            busy, self._busy = self._busy, True
        if busy:
            warnings.warn(
                "another computation is using this spilling() Chest; this one runs without it, in memory",
                RuntimeWarning,
                stacklevel=2,
            )
            kwargs["cache"] = _Unshared()
            return dask.threaded.get(dsk, keys, **kwargs)
        chest, ours = self.chest, False
        try:
            if not isinstance(dsk, Mapping):  # an expression (dask 2025+): its graph, once, as get_async makes it
                dsk = dsk.__dask_graph__()
            before = [key for key in dsk if key in chest]
            if before:  # a key put into the Chest by hand that the graph computes: dask would take it for done
                warnings.warn(
                    f"{len(before)} key(s) of this graph are already in the spilling() Chest; "
                    "this computation runs without it, in memory",
                    RuntimeWarning,
                    stacklevel=2,
                )
                kwargs["cache"] = _Unshared()
            else:
                kwargs["cache"], ours = self, True
                if markers:
                    kwargs["loads"] = self.loads
                    self._scheduler = threading.get_ident()  # __getitem__ hands this thread markers
            return self._resolve(keys, dask.threaded.get(dsk, keys, **kwargs))
        finally:
            try:
                if ours:
                    for key in dsk:  # what this computation stored (results are returned by now)
                        if key in chest:
                            with contextlib.suppress(KeyError):  # gone meanwhile
                                del chest[key]
            finally:
                with self._lock:  # only now: a computation starting earlier would meet these keys
                    self._scheduler = None
                    self._busy = False

    def _resolve(self, keys: Any, result: Any) -> Any:
        """The results, with any marker replaced by its value (``nested_get`` mirrors ``keys``)."""
        if isinstance(keys, list):
            return tuple(self._resolve(k, r) for k, r in zip(keys, result, strict=True))
        return self.chest[result.key] if type(result) is OnDisk else result
