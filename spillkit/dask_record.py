"""dask integration, trace recording: :class:`record` writes what the scheduler does with a Chest to a trace.

:class:`record` is re-exported by :mod:`spillkit.dask`, its public import
path. The graph facts it writes into each trace (each key's dependencies,
dask's planned order, the literal data keys) live here too, and
:func:`spillkit.dask.plan_from_dask` imports them for graph-aware policies
(they live here so that imports go one way: :mod:`spillkit.dask` imports this
module, never the reverse).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Hashable, Mapping
from typing import Any

from .extras import missing_extra

try:
    import dask
    from dask._task_spec import DataNode
    from dask.callbacks import Callback
    from dask.core import get_dependencies
    from dask.order import order as dask_order
except ImportError as error:  # (tests/test_extras.py)
    raise missing_extra("spillkit.dask", "dask", "dask") from error

from .chest import Chest
from .dask_loads import WorkerLoads
from .dask_owner import _Unshared
from .policies._graph import GraphPlan
from .trace import TraceRecorder
from .trace_format import check_header

__all__ = ["plan_from_dask", "record"]


def _dask_version() -> str:
    from importlib.metadata import version

    return version("dask")


def _graph_facts(dsk: Mapping[Any, Any]) -> tuple[dict[Hashable, list[Hashable]], dict[Hashable, int], list[Hashable]]:
    """Each key's dependencies, dask's planned order, and the literal data keys."""
    graph: Any = dsk
    dependencies: dict[Hashable, list[Hashable]] = {key: list(get_dependencies(graph, key)) for key in dsk}
    planned: dict[Hashable, int] = dict(dask_order(graph).items())
    return dependencies, planned, [key for key, task in dsk.items() if isinstance(task, DataNode)]


class record(Callback):
    """Record every computation in the block to a trace file (see :mod:`spillkit.trace`).

    A computation's trace stays open until the next computation starts or the
    block ends, so it includes dask's final read of the results (which happens
    after the scheduler's last callback).

    Parameters
    ----------
    path : str or os.PathLike
        The first computation's trace file (``.gz``: gzip-compressed); later ones in the same block write
        ``path`` with ``-1``, ``-2``, ... before the extension.
    workload : str, optional
        The header's ``workload`` field.
    **header
        More header fields (JSON values), each replacing any field of the same name: ``record``'s (``dask``,
        ``workload``, ``budget``, ``policy``) and :class:`~spillkit.recorder.TraceRecorder`'s (``spillkit``,
        ``machine``; ``format`` and ``version`` are refused: ValueError).

    Attributes
    ----------
    paths : list of str
        The trace files written so far, in order. ``path``, ``workload`` and ``header`` are as given.

    Raises
    ------
    TypeError
        Into a computation whose cache is not a Chest (nor a ``spilling()`` one's; it need not be unlimited,
        ``Chest(available_memory=float("inf"))``: any budget records the same scheduler operations), or whose
        header fields JSON cannot encode.
    OSError
        Into a computation whose trace file cannot be opened. Such a computation, and one whose graph has a
        cycle, raises as it starts with nothing of it recorded; the next computation is recorded as usual.

    Notes
    -----
    One computation at a time is recorded: one that starts while it runs (nested
    in a task, or in another thread) gets no trace of its own (what it does with the
    same Chest joins the running one's), and one that :func:`~spillkit.dask.spilling`
    runs in memory, with a dict of its own, is not recorded. Thread-safe. An error
    writing an event's line is counted and warned about by the Chest (see
    :class:`~spillkit.trace.TraceRecorder`); the computation goes on.
    """

    def __init__(self, path: str | os.PathLike[str], workload: str | None = None, **header: Any) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        check_header(header)  # at once, not as the first computation starts
        self.path = os.fspath(path)
        self.workload = workload
        self.header = header
        self.paths: list[str] = []
        self._recorder: TraceRecorder | None = None
        self._chest: Chest | None = None
        self._plan: tuple[dict[Hashable, list[Hashable]], dict[Hashable, int], list[Hashable]] | None = None
        self._lock = threading.RLock()  # dask calls the hooks of computations in several threads
        self._recorded: int | None = None  # id() of the graph of the computation being recorded, until it ends
        self._fresh = False  # the recorder was attached by that computation's _start, to the configured cache

    def _next_path(self) -> str:
        if not self.paths:
            return self.path
        stem, dot, rest = os.path.basename(self.path).partition(".")
        return os.path.join(os.path.dirname(self.path), f"{stem}-{len(self.paths)}{dot}{rest}")

    def __exit__(self, *args: object) -> None:
        super().__exit__(*args)  # type: ignore[no-untyped-call]
        with self._lock:
            self._detach()

    def _start(self, dsk: Mapping[Any, Any]) -> None:
        with self._lock:
            if self._recorded is not None:  # nested in, or beside, the computation being recorded
                return
            self._detach()  # the previous computation's trace ends where this one starts
            self._plan = _graph_facts(dsk)  # (a graph with a cycle raises: dask then calls no _finish)
            cache = dask.config.get("cache", None)
            if isinstance(cache, WorkerLoads):  # spilling()'s: its Chest, before any other hook pins or puts
                cache = cache.chest
            if isinstance(cache, Chest):
                self._attach(cache)  # (a path that cannot be opened raises here, with nothing recorded)
                self._fresh = True
            self._recorded = id(dsk)  # last: a _start that raised leaves the next computation recorded

    def _finish(self, dsk: Mapping[Any, Any], state: dict[str, Any], errored: bool) -> None:
        with self._lock:
            if self._recorded == id(dsk):  # its trace stays open for dask's read of the results
                self._recorded = None

    def _attach(self, chest: Chest) -> None:
        if self._recorder is not None:
            return
        path = self._next_path()
        header = {
            "dask": _dask_version(),
            "workload": self.workload,
            "budget": chest.available_memory,
            "policy": chest.policy.name,
            **self.header,
        }
        self._recorder = TraceRecorder(path, header)
        self.paths.append(path)
        if self._plan is not None:
            self._recorder.graph(*self._plan)
        self._chest = chest
        # What the Chest holds already takes its budget: an earlier computation's results (dask leaves them
        # in cache=), values put by hand, and (with cache= given) the graph's literal data, which dask stores
        # before any hook runs. Recorded as the trace's start (spilled ones as on disk, resident ones as puts
        # in the order the Chest admitted them, the order LRU and FIFO rank them in); else a replay knew
        # nothing of them and left out their spills (helper-112).
        with chest.engine.lock:  # (no operation between the holdings and the listener)
            self._recorder.holdings(chest.engine)
            chest.add_listener(self._recorder)

    def _start_state(self, dsk: Mapping[Any, Any], state: dict[str, Any]) -> None:
        with self._lock:
            if self._recorded != id(dsk):  # a computation this does not record
                return
            fresh, self._fresh = self._fresh, False
            self._use(dsk, state["cache"], fresh)

    def _use(self, dsk: Mapping[Any, Any], cache: Any, fresh: bool) -> None:
        if isinstance(cache, WorkerLoads):  # spilling()'s cache: the Chest, loaded from by dask's workers
            cache = cache.chest
        if isinstance(cache, _Unshared):  # spilling() runs it in memory (its Chest is taken): nothing to record
            if fresh:
                self._discard()
            return
        if not isinstance(cache, Chest):
            raise TypeError(
                "spillkit.dask.record needs a Chest as the cache: x.compute(cache=Chest(...)) "
                f"(got {type(cache).__name__}); literal data was already stored before recording could start"
            )
        if self._chest is not cache:
            if fresh:  # attached to the configured cache, but the computation was given a cache= of its own
                self._discard()
            else:
                self._detach()
            self._attach(cache)  # (which records the literal data dask stored before any hook ran)
            assert self._recorder is not None
            # And the pins already made (ChestCallback's on that data, if its hook ran first): their
            # unpins will be recorded, and a replay without the pins would spill what the live run kept.
            with cache.engine.lock:
                pins = [key for key, count in cache.engine._pins.items() for _ in range(count)]
            for key in pins:
                self._recorder.pin(key)

    def _discard(self) -> None:
        """Drop the trace just attached, which recorded nothing yet: its path is the next one's again."""
        path = self.paths.pop()
        self._detach()
        with contextlib.suppress(OSError):
            os.remove(path)

    def _detach(self) -> None:
        if self._recorder is not None and self._chest is not None:
            self._chest.remove_listener(self._recorder)
            self._recorder.close()
        self._recorder = None
        self._chest = None


def plan_from_dask(dsk: Mapping[Any, Any]) -> GraphPlan:
    """The readers and planned order of a (converted) dask graph."""
    dependencies, planned, data = _graph_facts(dsk)
    return GraphPlan.for_local_scheduler(dependencies, planned, data)
