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
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, cast

from .keys import decode_key, encode_key

__all__ = [
    "FORMAT",
    "VERSION",
    "Trace",
    "TraceError",
    "TraceRecorder",
    "decode_key",
    "encode_key",
    "open_text",
    "read_trace",
]

FORMAT = "spillkit-trace"
VERSION = 1


def open_text(path: str | os.PathLike[str], mode: str) -> IO[str]:
    if os.fspath(path).endswith(".gz"):
        return cast(IO[str], gzip.open(path, mode + "t", compresslevel=6, encoding="utf-8"))
    return open(path, mode, encoding="utf-8")


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
        file = open_text(path, "r")
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


from .recorder import TraceRecorder  # noqa: E402 - re-exported; recorder needs this module's constants first
