"""Trace files: every cache operation of a Chest, in order, as JSON lines (gzip if ``.gz``).

Readable without dask. A trace is a header line, key definitions, an optional
graph line (dask's dependencies and planned order), then one line per
operation. Format, version 1 (each line a JSON value):

``{"format": "spillkit-trace", "version": 1, ...header fields...}``
    first line: spillkit and dask versions, workload, budget, policy, machine.
``["k", id, key]``
    defines key ``id`` (a small int) before its first use. Keys are encoded so
    tuples survive: a str or int stays as it is, a tuple is ``{"t": [...]}``,
    a float ``{"f": x}``, bytes ``{"b": "hex"}``, anything else ``{"r": repr}``.
``["graph", {"deps": [[id, [dep ids]], ...], "order": [[id, position], ...], "data": [ids]}]``
    the computation's graph, dask's planned order (dask.order) and its literal data keys.
``["put", id, nbytes, cost_or_null, t, object]``
    a value was stored; ``object`` is a small int naming the object, equal for
    two keys holding the same object (dask aliases) while both are resident.
``["get", id, t, outcome]``
    a read; outcome is ``"hit"``, ``"load"`` or ``"miss"``.
``["del", id, t]``
    a key was deleted.
``["cost", id, cost, t]``
    a key's recompute cost (seconds) was set.
``["settle", t]``
    the caller settled the budget here (the dask integration does after each task).
``["spill", id, t]`` / ``["evict", id, t]``
    decisions the recorded run took (written / dropped with its file reused);
    replay recomputes these and can compare.

``t`` is seconds since the recording started.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import threading
import time
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, cast

from .events import COST, DELETE, EVICT, GIVEN_COST, HIT, LOAD, MISS, PUT, SETTLE, SPILL, Event

__all__ = ["FORMAT", "VERSION", "Trace", "TraceError", "TraceRecorder", "decode_key", "encode_key", "read_trace"]

FORMAT = "spillkit-trace"
VERSION = 1


def encode_key(key: Hashable) -> Any:
    """JSON-able form of a key; :func:`decode_key` inverts it for str, int, float, bytes and tuples."""
    if isinstance(key, bool) or key is None:
        return {"r": repr(key)}
    if isinstance(key, (str, int)):
        return key
    if isinstance(key, tuple):
        return {"t": [encode_key(k) for k in key]}
    if isinstance(key, float):
        return {"f": key}
    if isinstance(key, bytes):
        return {"b": key.hex()}
    return {"r": repr(key)}


def decode_key(data: Any) -> Hashable:
    """Rebuild a key from :func:`encode_key`'s output (``{"r": ...}`` stays a repr string)."""
    if isinstance(data, (str, int)):
        return data
    if "t" in data:
        return tuple(decode_key(k) for k in data["t"])
    if "f" in data:
        return float(data["f"])
    if "b" in data:
        return bytes.fromhex(data["b"])
    return f"<{data['r']}>"


def _open_text(path: str | os.PathLike[str], mode: str) -> IO[str]:
    if os.fspath(path).endswith(".gz"):
        return cast(IO[str], gzip.open(path, mode + "t", compresslevel=6, encoding="utf-8"))
    return open(path, mode, encoding="utf-8")


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

    ``chest.add_listener(TraceRecorder(path, header))``; call :meth:`close`
    when done (or use it as a context manager). Thread-safe: the Chest calls
    listeners under its lock, and the recorder has its own lock for the graph
    line. Write errors propagate to the listener machinery, which counts and
    warns; the cache operation itself is unaffected.
    """

    def __init__(self, path: str | os.PathLike[str], header: dict[str, Any] | None = None) -> None:
        self.path = os.fspath(path)
        self._file = _open_text(self.path, "w")
        self._lock = threading.Lock()
        self._ids: dict[Hashable, int] = {}
        self._start = time.perf_counter()
        self._key_object: dict[Hashable, int] = {}  # resident key -> object token
        self._resident: dict[int, list[int]] = {}  # id(value) -> [token, resident keys holding it]
        self._tokens = 0
        from . import __version__

        first = {"format": FORMAT, "version": VERSION, "spillkit": __version__, "machine": machine_info()}
        first.update(header or {})
        self._line(first)

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

    def _leave_memory(self, key: Hashable) -> None:
        token = self._key_object.pop(key, None)
        if token is None:
            return
        for object_id, entry in list(self._resident.items()):
            if entry[0] == token:
                entry[1] -= 1
                if not entry[1]:
                    del self._resident[object_id]
                break

    def _enter_memory(self, key: Hashable, object_id: int) -> int:
        entry = self._resident.get(object_id)
        if entry is None:
            self._tokens += 1
            entry = self._resident[object_id] = [self._tokens, 0]
        entry[1] += 1
        self._key_object[key] = entry[0]
        return entry[0]

    def _put(self, ident: int, key: Hashable, nbytes: int, cost: float | None, t: float, obj: int | None) -> None:
        self._leave_memory(key)
        token = 0 if obj is None else self._enter_memory(key, obj)
        self._line(["put", ident, nbytes, cost, t, token])

    def put(self, key: Hashable, nbytes: int, object_id: int | None, cost: float | None = None) -> None:
        """Record a put that happened before this recorder was listening (e.g. dask's literal data)."""
        with self._lock:
            self._put(self.key_id(key), key, nbytes, cost, round(time.perf_counter() - self._start, 6), object_id)

    def __call__(self, event: Event) -> None:
        with self._lock:
            if self._file.closed:
                return
            t = round(time.perf_counter() - self._start, 6)
            kind = event.kind
            if kind == SETTLE:
                self._line(["settle", t])
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
                if kind == LOAD:
                    self._enter_memory(event.key, event.object_id)
                self._line(["get", ident, t, kind])
            elif kind == DELETE:
                self._leave_memory(event.key)
                self._line(["del", ident, t])
            elif kind == COST:
                self._line(["cost", ident, event.cost, t])
            elif kind in (SPILL, EVICT):
                self._leave_memory(event.key)
                self._line([kind, ident, t])

    def close(self) -> None:
        """Flush and close the file (idempotent)."""
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> TraceRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Trace:
    """A trace read back: header, graph and operations, with keys decoded."""

    header: dict[str, Any]
    keys: list[Hashable] = field(default_factory=list)
    dependencies: dict[Hashable, list[Hashable]] = field(default_factory=dict)
    order: dict[Hashable, int] = field(default_factory=dict)
    data: list[Hashable] = field(default_factory=list)  # literal data keys, present before any task ran
    ops: list[tuple[Any, ...]] = field(default_factory=list)  # op lines with key ids replaced by keys

    def peak_bytes(self) -> int:
        """Most bytes an unlimited cache would have held at once (an object under two keys counts once)."""
        holders: dict[Hashable, object] = {}  # key -> what it holds (a shared-object token, or the key itself)
        counts: dict[object, list[int]] = {}  # holding -> [keys holding it, nbytes]
        current = peak = 0
        for op in self.ops:
            tag, key = op[0], op[1]
            if tag in ("put", "del") and key in holders:
                held = holders.pop(key)
                entry = counts[held]
                entry[0] -= 1
                if not entry[0]:
                    current -= entry[1]
                    del counts[held]
            if tag == "put":
                holding: object = ("object", op[5]) if op[5] else ("key", key)
                entry = counts.setdefault(holding, [0, op[2]])
                if not entry[0]:
                    current += entry[1]
                entry[0] += 1
                holders[key] = holding
                peak = max(peak, current)
        return peak

    def requests(self) -> Iterator[tuple[Any, ...]]:
        """The put/get/del/cost operations only (what a replay drives)."""
        return (op for op in self.ops if op[0] in ("put", "get", "del", "cost", "settle"))


class TraceError(ValueError):
    """A trace file is missing, not a trace, of another version, or malformed at a line."""


def read_trace(path: str | os.PathLike[str]) -> Trace:
    """Read a trace file written by :class:`TraceRecorder` (``.gz`` or plain).

    Raises :class:`TraceError` naming the file and line for anything malformed.
    """
    name = os.fspath(path)
    try:
        file = _open_text(path, "r")
    except FileNotFoundError:
        raise TraceError(f"{name}: no such trace file") from None
    with file:
        number = 0
        try:
            number, line = 1, file.readline()
            header = json.loads(line)
            if not isinstance(header, dict) or header.get("format") != FORMAT:
                raise TraceError(f"{name}:1: not a spillkit trace (the first line has no format {FORMAT!r})")
            if header.get("version") != VERSION:
                raise TraceError(
                    f"{name}:1: trace version {header.get('version')} is not supported (this is {VERSION})"
                )
            trace = Trace(header)
            keys = trace.keys
            for number, line in enumerate(file, start=2):
                row = json.loads(line)
                tag = row[0]
                if tag == "k":
                    keys.append(decode_key(row[2]))
                elif tag == "graph":
                    trace.dependencies.update({keys[k]: [keys[d] for d in ds] for k, ds in row[1]["deps"]})
                    trace.order.update({keys[k]: p for k, p in row[1]["order"]})
                    trace.data.extend(keys[k] for k in row[1].get("data", ()))
                elif tag == "settle":
                    trace.ops.append((tag, None, row[1]))
                elif tag in _ARITY:
                    if len(row) != _ARITY[tag]:
                        raise TraceError(f"{name}:{number}: {tag!r} needs {_ARITY[tag]} fields, found {len(row)}")
                    trace.ops.append((tag, keys[row[1]], *row[2:]))
                else:
                    raise TraceError(f"{name}:{number}: unknown record {tag!r}")
        except TraceError:
            raise
        except (ValueError, LookupError, TypeError, EOFError, OSError) as error:
            raise TraceError(f"{name}:{number}: malformed trace line ({error})") from error
    return trace


_ARITY = {"put": 6, "get": 4, "del": 3, "cost": 4, "spill": 3, "evict": 3}
