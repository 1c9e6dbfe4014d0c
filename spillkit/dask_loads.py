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

from .extras import missing_extra

try:
    import dask
    import dask.threaded
    from dask.callbacks import Callback
except ImportError as error:  # (tests/test_extras.py)
    raise missing_extra("spillkit.dask", "dask", "dask") from error

from .chest import Chest
from .dask_owner import _TAKEN, ChestOwnership, _Unshared

__all__ = ["OnDisk", "WorkerLoads"]


class OnDisk:
    """Stands in for an input on disk in the arguments dask sends to a worker thread."""

    __slots__ = ("key",)

    def __init__(self, key: Hashable) -> None:
        self.key = key

    def __repr__(self) -> str:
        return "OnDisk(...)"


class WorkerLoads(ChestOwnership, MutableMapping[Hashable, Any]):
    """dask's ``cache=``: the Chest, with spilled inputs loaded by the worker that needs them.

    Thread-safe: one computation at a time uses the Chest; its scheduling thread
    owns it (:meth:`claim`) for its duration. dask's local schedulers use their
    cache only in their scheduling thread, so a computation that starts while
    another owns the Chest (in another thread, or nested inside a task, with any
    ``scheduler=``) is routed, by its thread, to a dict of its own
    (:meth:`go_private`). Everything else is the Chest's, which has its own lock.

    Parameters
    ----------
    chest : Chest
        The Chest it serves (not checked); :func:`~spillkit.dask.spilling` makes one for its Chest.

    Attributes
    ----------
    chest : Chest
        As given. ``active`` is True until the ``spilling()`` block that made it ends.

    Raises
    ------
    KeyError
        As a mapping does, for an absent key; the Chest's own errors (a failed load) propagate too.

    Notes
    -----
    A computation's error propagates from :meth:`schedule` once the keys it stored are deleted from the Chest,
    which is then free for the next computation (and closed, if its block has ended). :meth:`hand_back` raises
    the first result that fails to load, once every key is out. A computation that finds the Chest taken warns
    (RuntimeWarning) and runs with a dict of its own.
    """

    def __init__(self, chest: Chest) -> None:
        super().__init__(chest)

    def _mapping(self) -> MutableMapping[Hashable, Any]:
        owner, tid = self._owner, threading.get_ident()
        # This thread's computation claimed the Chest, or none did and no spilling() block made this dask's
        # cache (a WorkerLoads used as a mapping like any).
        mine = owner == tid or (owner is None and not self.replaced)
        if mine and not self._nested and not self._private:
            return self.chest
        if self._private:  # a computation that found the Chest taken (ChestCallback routed it)
            private = self._private.get(tid)
            if private:
                return private[-1]
        if self._nested:
            nested = self._nested.get(tid)
            if nested is not None:
                return nested
        if mine:
            return self.chest
        # This thread's computation did not claim the Chest (another one may have it): dask runs
        # a computation nested in a task with no callbacks (it empties the active set meanwhile),
        # and so does a computation another thread starts then with a scheduler= of dask's own; and
        # a computation whose callbacks decided for another cache= (dask.config is the process's:
        # another thread's block began or ended between their start and dask's reading it) runs here
        # with none. Unclaimed, the Chest is no one's: its block may close it, another computation
        # claim it, under this one.
        # Its thread's dict serves every such computation of the thread, even once the Chest's
        # owner has ended (this one may go on: its keys are in the dict), until the thread starts
        # a computation that takes the Chest (claim). A key found there is that key's value:
        # dask's keys name their values.
        nested = self._nested[tid] = _Unshared()
        warnings.warn(_TAKEN, RuntimeWarning, stacklevel=3)
        return nested

    # ---- the mapping dask uses -------------------------------------------------------------
    def __getitem__(self, key: Hashable) -> Any:
        # A dict lookup without the Chest's lock: a value that is being loaded or spilled
        # right now is either answer, and the worker's own get sorts it out.
        if threading.get_ident() == self._scheduler and key not in self.chest.engine.memory and key in self.chest:
            return OnDisk(key)
        return self._mapping()[key]

    def __setitem__(self, key: Hashable, value: Any) -> None:
        self._mapping()[key] = value

    def __delitem__(self, key: Hashable) -> None:
        del self._mapping()[key]

    def __contains__(self, key: object) -> bool:
        return key in self._mapping()

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._mapping())

    def __len__(self) -> int:
        return len(self._mapping())

    def hand_back(self, dsk: Mapping[Hashable, Any], keep: bool) -> _Unshared:
        """Take a computation's keys out of the Chest (its owner, as it ends); return its results.

        What is left of a computation when it ends are its results (dask released the rest)
        or, if it failed, what it held. dask reads the results once the computation has ended
        and the Chest may be another's: from the dict returned here (``keep``), not the Chest.
        """
        chest, results = self.chest, _Unshared()
        failed: Exception | None = None
        for key in dsk:
            if key in chest:
                if keep:
                    try:
                        results[key] = chest[key]
                    except Exception as error:  # (a result that fails to load) raised once every key is out
                        failed = failed or error
                with contextlib.suppress(KeyError):  # gone meanwhile
                    del chest[key]
        if failed is not None:
            raise failed
        return results

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
        # The callbacks given, not left for dask to take from Callback.active: it would empty that set
        # for the whole process while this runs and put back what it found at the end, so another
        # thread's computation meanwhile ran without ChestCallback, and when two ended out of order
        # the empty set stayed for the rest of the block (no deferral, no pins). A computation nested
        # in a task then runs ChestCallback too, which gives it a dict of its own (see _role_in).
        kwargs.setdefault("callbacks", set(Callback.active))
        if not self.claim():
            warnings.warn(_TAKEN, RuntimeWarning, stacklevel=2)
            kwargs["cache"] = _Unshared()
            self._handoff = (threading.get_ident(), "declined")
            try:
                return dask.threaded.get(dsk, keys, **kwargs)
            finally:
                self._handoff = None
        self._handoff = (threading.get_ident(), "scheduled")
        chest, ours = self.chest, False
        try:
            if not isinstance(dsk, Mapping):  # an expression (dask 2025+): its graph, once, as get_async makes it
                dsk = dsk.__dask_graph__()
            if self.warn_if_hand_put(dsk, stacklevel=3):
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
                self._handoff = None
                self.release()  # only now: a computation starting earlier would meet these keys
                self.close_if_due()

    def _resolve(self, keys: Any, result: Any) -> Any:
        """The results, with any marker replaced by its value (``nested_get`` mirrors ``keys``)."""
        if isinstance(keys, list):
            return tuple(self._resolve(k, r) for k, r in zip(keys, result, strict=True))
        return self.chest[result.key] if type(result) is OnDisk else result
