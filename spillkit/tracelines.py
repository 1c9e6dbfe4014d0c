"""Check and decode the lines of a trace file, one JSON value at a time. Pure: no files here.

:func:`spillkit.trace.read_trace` feeds each line to a :class:`LineParser`;
anything malformed raises :class:`BadLine` with a message saying what is wrong
with the line, and the reader adds the file name and line number. Every field
is checked here, at the edge, so replay, bounds and plots never meet a string
where a size belongs, a negative size, a NaN time or a key id that points
nowhere.
"""

from __future__ import annotations

import json
import math
import reprlib
from collections.abc import Callable, Hashable
from typing import Any

from .keys import SpelledKey, decode_key, describe_key

__all__ = ["OUTCOMES", "BadLine", "LineParser", "short"]

# pop: read from disk for pop(), not cached (a del follows); reuse: a spilled value still alive elsewhere, no read
OUTCOMES = ("hit", "load", "miss", "pop", "reuse")
MAX_INT64 = 2**63 - 1  # no size or planned position is larger: a bigger number is corruption
_LARGEST = 2**1000  # larger JSON integers do not fit a float; the policies compute in floats


class BadLine(ValueError):
    """One line of a trace is malformed; the message says how (without file or line)."""


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxlong, _REPR.maxother = 3, 4, 3, 40, 40, 40


def short(value: Any, limit: int = 60) -> str:
    """A repr of ``value`` at most ``limit`` characters long and three levels deep.

    A hostile value (a megabyte string, a list nested 900 deep) cannot flood an
    error message or recurse.
    """
    text = _REPR.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _real(value: Any) -> float | None:
    """The value as a float, or None if it is not a JSON number a float can hold (bools are not numbers)."""
    if isinstance(value, float):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= _LARGEST:
        return float(value)
    return None


def _nbytes(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT64:
        return value
    raise BadLine(f"nbytes must be an integer from 0 to 2**63-1, found {short(value)}")


def _time(value: Any) -> float:
    if type(value) is float and math.isfinite(value):  # the common case first: a trace has one per line
        return value
    seconds = _real(value)
    if seconds is not None and math.isfinite(seconds):
        return seconds
    raise BadLine(f"t must be a finite number of seconds, found {short(value)}")


def _cost(value: Any) -> float:
    # A Chest accepts any cost (even inf, "never recompute", or a negative one) and its recorder writes what it
    # was given, so a trace must read back with it; only NaN orders nothing. The recompute_seconds these costs sum
    # to may thus be any float (inf, negative, even NaN from inf + -inf): spillkit.plot_csv accepts them all.
    seconds = _real(value)
    if seconds is not None and not math.isnan(seconds):
        return seconds
    raise BadLine(f"cost must be a number of seconds, found {short(value)}")


def _cost_or_null(value: Any) -> float | None:
    return None if value is None else _cost(value)


def _token(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise BadLine(f"object must be a non-negative integer, found {short(value)}")


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise BadLine(f"deferred must be true or false, found {short(value)}")


def _outcome(value: Any) -> str:
    if value in OUTCOMES and isinstance(value, str):
        return value
    raise BadLine(f"outcome must be one of {', '.join(OUTCOMES)}, found {short(value)}")


# record tag -> checks of the fields after the key id (the key id itself is checked by the parser)
_FIELDS: dict[str, tuple[Callable[[Any], Any], ...]] = {
    "put": (_nbytes, _cost_or_null, _time, _token),
    "get": (_time, _outcome, _token),
    "del": (_time,),
    "ondisk": (_nbytes, _time),
    "cost": (_cost, _time),
    "spill": (_time,),
    "evict": (_time,),
    "pin": (_time,),
    "changed": (_time,),
    "unwritable": (_time,),
    "unpin": (_time,),
}
_SHAPES = {  # record tag -> (number of fields, what the line looks like)
    "k": (3, '["k", id, key]'),
    "graph": (2, '["graph", {"deps": ..., "order": ..., "data": ...}]'),
    "settle": (2, '["settle", t]'),
    "free": (2, '["free", t]'),
    "flush": (2, '["flush", t]'),
    "replan": (3, '["replan", t, [ids]]'),
    "defer": (3, '["defer", t, true or false]'),
    "put": (6, '["put", id, nbytes, cost, t, object]'),
    "get": (5, '["get", id, t, outcome] or ["get", id, t, "load" or "reuse", object]'),
    "del": (3, '["del", id, t]'),
    "ondisk": (4, '["ondisk", id, nbytes, t]'),
    "cost": (4, '["cost", id, cost, t]'),
    "spill": (3, '["spill", id, t]'),
    "evict": (3, '["evict", id, t]'),
    "pin": (3, '["pin", id, t]'),
    "changed": (3, '["changed", id, t]'),
    "unwritable": (3, '["unwritable", id, t]'),
    "unpin": (3, '["unpin", id, t]'),
}
_OPTIONAL = {"get": 1}  # trailing fields a line may leave out: a load's object (traces recorded before it was)


def parse_json(text: str) -> Any:
    """One line's JSON value; :class:`BadLine` (not a deep RecursionError) for anything else."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise BadLine(f"not valid JSON ({error.msg} at column {error.colno})") from None
    except RecursionError:
        raise BadLine("JSON nested too deeply") from None
    except ValueError as error:  # e.g. an integer of more than 4300 digits
        raise BadLine(f"not valid JSON ({error})") from None


class LineParser:
    """Decodes the lines after the header into keys, a graph and operations.

    Not thread-safe (one per file being read). Raises :class:`BadLine` for
    a malformed line; the parser's state is then undefined.
    """

    def __init__(self) -> None:
        self.keys: list[Hashable] = []
        self._ids: dict[Hashable, int] = {}  # each key's id
        self.dependencies: dict[Hashable, list[Hashable]] = {}
        self.order: dict[Hashable, int] = {}
        self.data: list[Hashable] = []
        self.ops: list[tuple[Any, ...]] = []

    def key(self, ident: Any) -> Hashable:
        """The key a trace id refers to (ids are defined in order, from 0)."""
        if type(ident) is int and 0 <= ident < len(self.keys):  # type(), not isinstance: True is no id
            return self.keys[ident]
        if type(ident) is not int:  # ("0", 0.0, true): no id, whatever it spells
            raise BadLine(f"key id {short(ident)} is not an integer")
        defined = f"ids 0 to {len(self.keys) - 1} are" if self.keys else "no key is yet"
        raise BadLine(f"key id {short(ident)} is not defined ({defined})")

    def line(self, row: Any) -> None:
        """Check one decoded line and add what it says."""
        if not isinstance(row, list) or not row:
            if isinstance(row, dict) and "format" in row:
                raise BadLine("a second header line (are two traces concatenated?)")
            raise BadLine(f'expected a JSON array like ["put", ...], found {short(row)}')
        tag = row[0]
        shape = _SHAPES.get(tag) if isinstance(tag, str) else None
        if shape is None:
            raise BadLine(f"unknown record {short(tag)}; expected one of {', '.join(_SHAPES)}")
        least = shape[0] - _OPTIONAL.get(tag, 0)
        if not least <= len(row) <= shape[0]:
            needs = f"{shape[0]}" if least == shape[0] else f"{least} or {shape[0]}"
            raise BadLine(f"{tag!r} needs {needs} fields, {shape[1]}, found {len(row)}")
        if tag == "k":
            self._define(row[1], row[2])
        elif tag == "graph":
            self._graph(row[1])
        elif tag in ("settle", "free", "flush"):
            self.ops.append((tag, None, _time(row[1])))
        elif tag == "defer":
            self.ops.append((tag, None, _time(row[1]), _flag(row[2])))
        elif tag == "replan":
            if not isinstance(row[2], list):
                raise BadLine(f"'replan' needs a list of key ids, found {short(row[2])}")
            self.ops.append((tag, tuple(self.key(ident) for ident in row[2]), _time(row[1])))
        else:
            key = self.key(row[1])
            fields = [check(value) for check, value in zip(_FIELDS[tag], row[2:], strict=False)]  # arity checked
            if tag == "get" and len(fields) == 3 and fields[1] not in ("load", "reuse"):
                raise BadLine(f"only a 'load' or 'reuse' names the object it read, found a {fields[1]!r} with one")
            self.ops.append((tag, key, *fields))

    def _define(self, ident: Any, encoded: Any) -> None:
        if ident != len(self.keys) or not isinstance(ident, int) or isinstance(ident, bool):
            raise BadLine(f"key id {short(ident)} is out of sequence (the next id is {len(self.keys)})")
        try:
            key = decode_key(encoded)
        except RecursionError:
            raise BadLine("key nested too deeply") from None
        except ValueError as error:
            raise BadLine(str(error)) from None
        # The recorder gives each distinct key one id. Keys spelt alike (SpelledKey, in a tuple too) were
        # distinct in the run: they stay so. Any other key defined twice would merge two ids: a damaged trace.
        if key in self._ids and _has_spelled(key):
            occurrence, spelt = 1, _respelled(key, 1)
            while spelt in self._ids:
                occurrence += 1
                spelt = _respelled(key, occurrence)
            key = spelt
        if key in self._ids:
            raise BadLine(f"key id {ident} defines the key of id {self._ids[key]} again, {describe_key(key)}")
        self._ids[key] = ident
        self.keys.append(key)

    def _pairs(self, graph: dict[str, Any], field: str) -> list[Any]:
        pairs = graph.get(field, [])
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise BadLine(f"graph {field!r} must be a list of [id, ...] pairs, found {short(pairs)}")
        return pairs

    def _graph(self, graph: Any) -> None:
        if not isinstance(graph, dict) or "deps" not in graph or "order" not in graph:
            raise BadLine(f"a graph needs an object with 'deps' and 'order', found {short(graph)}")
        deps = {}
        for ident, dep_ids in self._pairs(graph, "deps"):
            if not isinstance(dep_ids, list):
                raise BadLine(f"graph dependencies must be a list of key ids, found {short(dep_ids)}")
            deps[self.key(ident)] = [self.key(d) for d in dep_ids]
        order = {}
        for ident, position in self._pairs(graph, "order"):
            if not isinstance(position, int) or isinstance(position, bool) or abs(position) > MAX_INT64:
                raise BadLine(f"graph order positions must be integers below 2**63, found {short(position)}")
            order[self.key(ident)] = position
        data = graph.get("data", [])
        if not isinstance(data, list):
            raise BadLine(f"graph 'data' must be a list of key ids, found {short(data)}")
        self.data.extend(self.key(ident) for ident in data)
        self.dependencies.update(deps)
        self.order.update(order)


def _has_spelled(key: Hashable) -> bool:
    """Whether ``key`` is a :class:`SpelledKey` or a tuple holding one (at any depth)."""
    return isinstance(key, SpelledKey) or (isinstance(key, tuple) and any(_has_spelled(part) for part in key))


def _respelled(key: Hashable, occurrence: int) -> Hashable:
    """``key`` with each SpelledKey in it (in tuples too) made the ``occurrence``-th of its spelling."""
    if isinstance(key, SpelledKey):
        return SpelledKey(key.spelling, occurrence)
    if isinstance(key, tuple):
        return tuple(_respelled(part, occurrence) for part in key)
    return key
