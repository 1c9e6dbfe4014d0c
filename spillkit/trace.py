"""Trace files: every cache operation of a Chest, in order, as JSON lines (gzip if ``.gz``).

Readable without dask. A trace is a header line, key definitions, an optional
graph line (dask's dependencies and planned order), then one line per
operation. Format, version 1 (each line a JSON value):

``{"format": "spillkit-trace", "version": 1, ...header fields...}``
    first line: spillkit and dask versions, workload, budget, policy, machine.
``["k", id, key]``
    defines key ``id`` (a small int) before its first use. Keys are encoded so
    tuples survive: a str or int stays as it is (an int over 1000 bits is
    ``{"x": "hex"}``), a tuple is ``{"t": [...]}``, a float ``{"f": x}``, bytes
    ``{"b": "hex"}``, anything else ``{"r": repr}`` (read back as itself for
    None, True and False, else as a :class:`~spillkit.keys.SpelledKey`). A key
    defined under two ids is refused (keys spelt alike are kept apart).
``["graph", {"deps": [[id, [dep ids]], ...], "order": [[id, position], ...], "data": [ids]}]``
    the computation's graph, dask's planned order (dask.order) and its literal data keys.
``["put", id, nbytes, cost_or_null, t, object]``
    a value was stored; ``object`` is a small int naming the object, equal for
    two keys holding the same object (dask aliases) while both are resident,
    or for a value read back (a load names it) and stored under another key;
    0 for a value written straight to disk.
``["get", id, t, outcome]`` / ``["get", id, t, "load" | "reuse", object]``
    a read; outcome is ``"hit"``, ``"load"`` or ``"miss"``, ``"pop"``: a spilled value
    read from disk for ``pop()``, not cached (its ``del`` follows), or ``"reuse"``: a
    spilled value something else still held, handed back with no disk read (traces
    written before spillkit told it apart write ``"load"``). A load names
    the object it gave back, as a put does (traces written before spillkit did
    so leave it out: a put of that object under another key then reads as a new one).
``["del", id, t]``
    a key was deleted.
``["ondisk", id, nbytes, t]``
    a value already on disk, not in memory, when recording began (dask's
    literal data spilled before :class:`spillkit.dask.record` attached). A
    replay starts it on disk (nothing written); its first read loads it.
``["cost", id, cost, t]``
    a key's recompute cost (seconds) was set.
``["settle", t]``
    the caller settled the budget here (the dask integration does after each task).
``["defer", t, deferred]``
    from here the recorded Chest's puts were deferred (``true``: in a
    ``Chest.deferred()`` block) or made room again (``false``); written only
    by a recorder given the Chest. Strict replays follow it; settled replays
    defer every put anyway.
``["free", t]``
    the caller asked the Chest to free memory now (``Chest.evict()``, as
    dask.distributed's memory manager does); replays ask their engine too.
``["flush", t]``
    ``Chest.flush()`` gave every value in memory a file (writes, not spills);
    a replay gives its own a file (counted as written), so evictions drop them.
``["changed", id, t]``
    the Chest found the key's value in memory changed in place (``check_in_place``):
    its file no longer holds it, and it is written again. Found only as the value
    is evicted or flushed, so a replay marks it from the request after which it
    was found (see :meth:`Trace.changes`).
``["unwritable", id, t]``
    a write of the key's value failed because the value cannot be serialized (pickle
    refused it): the Chest keeps it in memory, out of the policy's reach. A replay
    refuses to write the value its last put stored, so it stays in memory there too
    (see :meth:`Trace.unwritable_puts`).
``["pin", id, t]`` / ``["unpin", id, t]``
    a running task began / ended using the key (kept from eviction meanwhile; pins add up).
``["replan", t, [ids]]``
    the graph-aware policy's plan was predicted again from dask's ready stack
    (:mod:`spillkit.dask_replan`): these tasks run next, in this order. Replays
    given the graph reorder their plan here too.
``["spill", id, t]`` / ``["evict", id, t]``
    decisions the recorded run took (written / dropped with its file reused);
    replay recomputes these and can compare.

``t`` is seconds since the recording started. A reader checks every field
(:mod:`spillkit.tracelines`); blank lines, CRLF line ends and a UTF-8 byte
order mark are accepted, and gzip is recognised by content, not by name.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from .inputfiles import open_input
from .keys import decode_key, encode_key
from .recorder import TraceRecorder  # re-exported: the README's spelling
from .trace_format import FORMAT, VERSION, open_text
from .trace_peak import peak_bytes
from .tracelines import BadLine, LineParser, parse_json, short

__all__ = [
    "FORMAT",
    "REQUESTS",
    "VERSION",
    "Trace",
    "TraceError",
    "TraceRecorder",
    "decode_key",
    "encode_key",
    "open_text",
    "read_trace",
]

REQUESTS = ("put", "get", "del", "cost", "settle", "ondisk", "defer", "free", "flush")  # the operations a replay drives


@dataclass
class Trace:
    """A trace read back: header, graph and operations, with keys decoded.

    Nothing is checked here (:func:`read_trace` checks every line, raising :class:`TraceError`); the methods
    raise nothing on a trace it returned. No lock: threads may read one at once while none changes it.

    Parameters
    ----------
    header : dict
        The first line's fields. Each parameter is also an attribute of that name.
    keys : list, default empty
        Every key, by id.
    dependencies, order : dict, default empty
        Each key's dependencies and dask's planned position (``graph`` lines).
    data : list, default empty
        The literal data keys (``graph`` lines).
    ops : list of tuple, default empty
        The other lines, in order, each ``(tag, key, *other fields)`` with key ids decoded (``key``: None where a
        line has none, a ``replan``'s tuple of tasks).
    source : str, optional
        The file :func:`read_trace` read it from (not compared for equality).
    """

    header: dict[str, Any]
    keys: list[Hashable] = field(default_factory=list)
    dependencies: dict[Hashable, list[Hashable]] = field(default_factory=dict)
    order: dict[Hashable, int] = field(default_factory=dict)
    data: list[Hashable] = field(default_factory=list)  # literal data keys, present before any task ran
    ops: list[tuple[Any, ...]] = field(default_factory=list)  # op lines with key ids replaced by keys
    # The file read_trace read it from: compare and plots name it after the file. Not part of equality.
    source: str | None = field(default=None, compare=False)

    def peak_bytes(self) -> int:
        """Most bytes an unlimited cache would have held at once (an object under two keys counts once).

        A value the trace starts on disk (``ondisk``) counts from its first read, which loads it.
        """
        return peak_bytes(self.ops)

    def requests(self) -> Iterator[tuple[Any, ...]]:
        """The operations a replay drives (every line tagged as in :data:`REQUESTS`), in order."""
        return (op for op in self.ops if op[0] in REQUESTS)

    def pins(self) -> dict[int, list[tuple[str, Hashable]]]:
        """The pins and unpins, each under the index in :meth:`requests` of the request it came before."""
        return self._before(("pin", "unpin"))

    def changes(self) -> dict[int, list[tuple[str, Hashable]]]:
        """The ``changed`` lines, each under the index in :meth:`requests` of the request to apply it before.

        That is the request the line came before, unless the line follows a ``settle``, ``free`` or
        ``get``: those are written before the evictions they cause (a put's or a flush's line after), so a
        change found in one belongs before it, which a replay must not have run yet.
        """
        tags = [op[0] for op in self.requests()]
        marks: dict[int, list[tuple[str, Hashable]]] = {}
        for index, found in self._before(("changed",)).items():
            at = index - 1 if index and tags[index - 1] in ("settle", "free", "get") else index
            marks.setdefault(at, []).extend(found)
        return marks

    def unwritable_puts(self) -> set[int]:
        """Indices in :meth:`requests` of the puts whose value the run could not serialize.

        An ``unwritable`` line comes where a write of the key's value failed (a later request's
        eviction, a flush, or the put itself, whose line comes first): the value its last put stored.
        """
        last_put: dict[Hashable, int] = {}
        marked: set[int] = set()
        index = -1
        for op in self.ops:
            if op[0] in REQUESTS:
                index += 1
                if op[0] == "put":
                    last_put[op[1]] = index
            elif op[0] == "unwritable" and op[1] in last_put:
                marked.add(last_put[op[1]])
        return marked

    def replans(self) -> dict[int, list[tuple[str, Hashable]]]:
        """The replan lines (``("replan", tasks)``), each under the index in :meth:`requests` it came before."""
        return self._before(("replan",))

    def _before(self, tags: tuple[str, ...]) -> dict[int, list[tuple[str, Hashable]]]:
        before: dict[int, list[tuple[str, Hashable]]] = {}
        index = 0
        for op in self.ops:
            if op[0] in REQUESTS:
                index += 1
            elif op[0] in tags:
                before.setdefault(index, []).append((op[0], op[1]))
        return before


class TraceError(ValueError):
    """A trace file is missing, not a trace, of another version, or malformed at a line.

    A ValueError, raised by :func:`read_trace`; its message names the file and, once it was read, the line.
    """


def read_trace(path: str | os.PathLike[str]) -> Trace:
    """Read a trace file written by :class:`TraceRecorder` (gzip-compressed or plain).

    Compression is recognised by the file's first bytes, not its name. A UTF-8
    byte order mark, CRLF line ends and blank lines are accepted. Raises
    :class:`TraceError` naming the file and line for anything else malformed:
    a file that is not gzip or UTF-8 text, truncated, of another version, a
    line whose fields have the wrong type or refer to keys never defined, or
    one that defines a key already defined under another id.
    """
    name = os.fspath(path)
    with _open(name) as raw:
        try:
            compressed = raw.peek(2)[:2] == b"\x1f\x8b"
        except OSError as error:  # e.g. a directory on some systems opens, then fails to read
            raise TraceError(f"{name}: cannot read the trace ({error.strerror or error})") from None
        stream: io.BufferedIOBase = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        lines = _lines(stream, name, compressed)
        header = _header(name, next(lines, (1, "")))
        parser = LineParser()
        for number, text in lines:
            if not text.strip():
                continue
            try:
                parser.line(parse_json(text))
            except BadLine as error:
                raise TraceError(f"{name}:{number}: {error}") from None
    source = os.fsdecode(name)
    return Trace(header, parser.keys, parser.dependencies, parser.order, parser.data, parser.ops, source=source)


def _open(name: str) -> io.BufferedReader:
    try:
        return cast(io.BufferedReader, open_input(name))
    except FileNotFoundError:
        raise TraceError(f"{name}: no such trace file") from None
    except OSError as error:
        raise TraceError(f"{name}: cannot open the trace ({error.strerror or error})") from None


def _lines(stream: io.BufferedIOBase, name: str, compressed: bool) -> Iterator[tuple[int, str]]:
    """(line number, text) for every line; read and decoding errors become TraceError naming the line."""
    number = 0
    while True:
        number += 1
        try:
            line = stream.readline()
        except (OSError, EOFError, zlib.error) as error:  # gzip reports truncation as EOFError
            what = "corrupt or truncated gzip data" if compressed else "cannot read the file"
            raise TraceError(f"{name}:{number}: {what} ({error})") from None
        if not line:
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as error:
            where = f"byte {error.start + 1} of the line"
            raise TraceError(f"{name}:{number}: not UTF-8 text ({where}; neither gzip nor a text trace?)") from None
        yield number, text.removeprefix("\ufeff") if number == 1 else text


def _header(name: str, first: tuple[int, str]) -> dict[str, Any]:
    number, text = first
    if not text.strip():
        raise TraceError(f"{name}:{number}: not a spillkit trace (the first line is empty)")
    try:
        header = parse_json(text)
    except BadLine as error:
        raise TraceError(f"{name}:{number}: not a spillkit trace (the first line is {error})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise TraceError(f"{name}:{number}: not a spillkit trace (the first line has no format {FORMAT!r})")
    version = header.get("version")
    if type(version) is not int or version != VERSION:
        raise TraceError(f"{name}:{number}: trace version {short(version)} is not supported (this is {VERSION})")
    return header
