"""``TraceRecorder``: a Chest listener that writes every operation to a trace file."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import threading
import time
from collections.abc import Container, Hashable
from typing import TYPE_CHECKING, Any

from .events import (
    CHANGED,
    COST,
    DELETE,
    EVICT,
    FLUSH,
    FREE,
    GIVEN_COST,
    HIT,
    LOAD,
    MISS,
    PIN,
    POPPED,
    PUT,
    REPLAN,
    REUSED,
    SETTLE,
    SPILL,
    SPILL_ERROR,
    UNPIN,
    UNSERIALIZABLE,
    Event,
)
from .keys import encode_key
from .trace_format import FORMAT, VERSION, check_header, open_text
from .trace_objects import ObjectTokens

if TYPE_CHECKING:
    from .chest import Chest
    from .engine import SpillEngine

__all__ = ["TraceRecorder", "machine_info"]


def machine_info() -> dict[str, Any]:
    """Facts about this machine worth keeping beside a measurement."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "hashseed": os.environ.get("PYTHONHASHSEED"),
    }


class TraceRecorder:
    """A Chest listener that writes every operation to a trace file.

    ``TraceRecorder(path, header, chest=chest)`` listens to ``chest`` until
    :meth:`close` (or the end of a ``with`` block), and marks where the
    Chest's puts were deferred (:meth:`~spillkit.Chest.deferred`), so a strict
    replay defers them too; ``chest.add_listener(TraceRecorder(path, header))``
    records the operations alone (the dask integration's way: its deferral is
    what settled replays model).

    Parameters
    ----------
    path : str or os.PathLike
        The trace file, created or truncated (gzip-compressed if it ends in ``.gz``); kept as ``path``.
    header : dict, optional
        Fields added to the first line (JSON values); one named ``spillkit`` or ``machine`` replaces the recorder's
        own; ``format`` and ``version`` are refused.
    chest : Chest, optional
        Listen to it now, after recording what it holds already (:meth:`holdings`).

    Raises
    ------
    OSError
        When ``path`` cannot be opened.
    TypeError, ValueError
        A ``header`` json cannot encode (its TypeError), or naming ``format`` or ``version``; before the file is
        made or a listener added.

    Notes
    -----
    Thread-safe: the Chest calls listeners under its lock, and the recorder has its own lock around each line it writes
    (the graph line comes from outside the Chest's lock). Write errors propagate to the listener machinery, which counts
    and warns; the cache operation itself is unaffected. The methods called directly (:meth:`graph`, :meth:`holdings`,
    :meth:`pin`, ...) raise a write's error (ValueError for a line written once closed); events after :meth:`close` are
    ignored.
    """

    def __init__(
        self, path: str | os.PathLike[str], header: dict[str, Any] | None = None, chest: Chest | None = None
    ) -> None:
        from . import __version__

        check_header(header or {})  # (before: they replaced the recorder's, and the trace did not read back)
        first = {"format": FORMAT, "version": VERSION, "spillkit": __version__, "machine": machine_info()}
        first.update(header or {})
        encoded = json.dumps(first, separators=(",", ":"))  # a TypeError here leaves no file behind
        self.path = os.fspath(path)
        self._file = open_text(self.path, "w")
        self._file.write(encoded + "\n")
        self._lock = threading.Lock()
        self._ids: dict[Hashable, int] = {}
        self._start = time.perf_counter()
        self._tokens = ObjectTokens()  # the objects resident keys hold (spillkit.trace_objects)
        self._chest = chest
        self._deferred = False  # as the last "defer" line said
        if chest is not None:
            engine = chest.engine
            with engine.lock:  # what it holds already, then every change: nothing between the two is missed
                # Spilled values start on disk, resident ones are put in the order the Chest admitted them
                # (FIFO's order, and LRU's if none was read since), each with the cost given for it, and a
                # deferred() block under way is marked: a strict replay then meets the reads as the Chest did.
                with self._lock:  # first: the puts below were made in it (a strict replay makes no room at them)
                    self._mark_deferral(round(time.perf_counter() - self._start, 6))
                self.holdings(engine)
                chest.add_listener(self)

    def _line(self, value: Any) -> None:
        self._file.write(json.dumps(value, separators=(",", ":")) + "\n")

    def key_id(self, key: Hashable) -> int:
        """The key's id in this trace, defining it on first use."""
        ident = self._ids.get(key)
        if ident is None:
            ident = self._ids[key] = len(self._ids)
            self._line(["k", ident, encode_key(key)])
        return ident

    def graph(
        self,
        dependencies: dict[Hashable, list[Hashable]],
        order: dict[Hashable, int],
        data: list[Hashable] | None = None,
    ) -> None:
        """Record a computation's graph, planned order and literal data keys."""
        with self._lock:
            deps = [[self.key_id(k), [self.key_id(d) for d in ds]] for k, ds in dependencies.items()]
            graph = {
                "deps": deps,
                "order": [[self.key_id(k), p] for k, p in order.items()],
                "data": [self.key_id(k) for k in data or ()],
            }
            self._line(["graph", graph])

    def _put(self, ident: int, key: Hashable, nbytes: int, cost: float | None, t: float, obj: int | None) -> None:
        self._tokens.leave(key)
        token = 0 if obj is None else self._tokens.enter(key, obj)
        self._line(["put", ident, nbytes, cost, t, token])

    def put(self, key: Hashable, nbytes: int, object_id: int | None, cost: float | None = None) -> None:
        """Record a put that happened before this recorder was listening (e.g. dask's literal data)."""
        with self._lock:
            self._put(self.key_id(key), key, nbytes, cost, round(time.perf_counter() - self._start, 6), object_id)

    def holdings(self, engine: SpillEngine, keys: Container[Hashable] | None = None) -> None:
        """Record what the Chest holds now (of ``keys``, if given), before this recorder was listening.

        Spilled values start on disk; resident ones are put, in the order the Chest admitted them
        (FIFO's order, and LRU's if none was read since); each with the cost given for it.
        """
        with engine.lock:
            spilled = [key for key in engine.spilled_keys if keys is None or key in keys]
            resident = [(key, id(value)) for key, value in engine.memory.items() if keys is None or key in keys]
            for key in spilled:
                self.on_disk(key, engine.nbytes(key))
                seconds = engine.given_cost(key)
                if seconds is not None:
                    self.cost(key, seconds)
            unwritable = engine.unspillable_keys
            for key, object_id in resident:
                self.put(key, engine.nbytes(key), object_id, engine.given_cost(key))
                if key in unwritable:  # refused before this recorder listened: a replay keeps it in memory too
                    self.unwritable(key)

    def unwritable(self, key: Hashable) -> None:
        """Record that ``key``'s value could not be serialized (pickle refused it): it stays in memory."""
        with self._lock:
            self._line(["unwritable", self.key_id(key), round(time.perf_counter() - self._start, 6)])

    def cost(self, key: Hashable, seconds: float) -> None:
        """Record a cost given before this recorder was listening (a value the Chest holds already)."""
        with self._lock:
            self._line(["cost", self.key_id(key), seconds, round(time.perf_counter() - self._start, 6)])

    def on_disk(self, key: Hashable, nbytes: int) -> None:
        """Record a value already on disk, not in memory, before this recorder was listening (dask's literal data).

        Not a put: a replay would hold a put's value in memory, and a put of object 0 is one written
        straight to disk, which a replay at a larger budget keeps in memory.
        """
        with self._lock:
            ident = self.key_id(key)
            self._tokens.leave(key)
            self._line(["ondisk", ident, nbytes, round(time.perf_counter() - self._start, 6)])

    def pin(self, key: Hashable) -> None:
        """Record a pin made before this recorder was listening (its unpin comes as an event)."""
        with self._lock:
            self._line(["pin", self.key_id(key), round(time.perf_counter() - self._start, 6)])

    def __call__(self, event: Event) -> None:
        with self._lock:
            if self._file.closed:
                return
            t = round(time.perf_counter() - self._start, 6)
            kind = event.kind
            if kind in (PUT, SETTLE):
                self._mark_deferral(t)
            if kind in (SETTLE, FREE, FLUSH):
                self._line([kind, t])
                return
            if kind == REPLAN and isinstance(event.key, tuple):  # (its key: the tasks to run next)
                self._line(["replan", t, [self.key_id(task) for task in event.key]])
                return
            ident = self.key_id(event.key)
            if kind == PUT:
                self._put(
                    ident,
                    event.key,
                    event.nbytes,
                    event.cost if event.detail == GIVEN_COST else None,
                    t,
                    event.object_id if event.disk_bytes == 0 else None,
                )
            elif kind in (HIT, LOAD, MISS):
                if kind == LOAD and event.detail == POPPED:  # read for pop(), not cached: replay pops it
                    self._line(["get", ident, t, "pop"])
                    return
                if kind == LOAD:  # the object read back, named: a later put of it under another key is an alias
                    # ("reuse": a spilled value still alive elsewhere, handed back with no disk read)
                    outcome = "reuse" if event.detail == REUSED else kind
                    self._line(["get", ident, t, outcome, self._tokens.enter(event.key, event.object_id)])
                    return
                self._line(["get", ident, t, kind])
            elif kind == DELETE:
                self._tokens.leave(event.key)
                self._line(["del", ident, t])
            elif kind in (PIN, UNPIN, CHANGED):
                self._line([kind, ident, t])
            elif kind == SPILL_ERROR and event.detail == UNSERIALIZABLE:  # it stays in memory: so in a replay
                self._line(["unwritable", ident, t])
            elif kind == COST:
                self._line(["cost", ident, event.cost, t])
            elif kind in (SPILL, EVICT):
                self._tokens.leave(event.key)
                self._line([kind, ident, t])

    def _mark_deferral(self, t: float) -> None:
        # Read under the Chest's lock (listeners are called under it): it is the flag this put (or settle) saw.
        chest = self._chest
        if chest is None:
            return
        deferred = bool(chest.engine.deferred)
        if deferred != self._deferred:
            self._deferred = deferred
            self._line(["defer", t, deferred])

    def close(self) -> None:
        """Stop listening to the Chest given (if any), flush and close the file (idempotent)."""
        chest = self._chest
        if chest is not None:  # first, and not under this recorder's lock: a listener call holds the Chest's
            with contextlib.suppress(ValueError):
                chest.remove_listener(self)  # (it waits for a call under way: none comes after it)
            self._chest = None
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> TraceRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
