"""Replay a trace through the same SpillEngine a live Chest uses, with size-only tiers.

Values are stand-in objects that carry only their size, and the disk tier only
counts bytes, so a replay runs the engine's real eviction loop and every
policy's real code: its decisions are exactly the ones a live Chest with the
same policy and budget would take.

The size-only values, the size-only disk tier (:class:`SizeOnlyDisk`) and
the I/O time model (:class:`DiskModel`) live in :mod:`spillkit.replay_disk`
and are re-exported here; this module runs the replay and holds its result.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Hashable
from dataclasses import asdict, dataclass, field
from typing import Any

from .engine import SpillEngine
from .events import EVICT, LOAD, REUSED, SPILL, Event
from .policies import GraphAware, Policy, make_policy
from .policies._graph import GraphPlan
from .replay_disk import DiskModel, SizeOnlyDisk, _size, _Sized
from .trace import Trace

__all__ = ["MODES", "DiskModel", "ReplayResult", "SizeOnlyDisk", "replay"]

MODES = ("strict", "settled", "dead-skip")


@dataclass
class ReplayResult:
    """What one policy did on one trace at one budget.

    Made and filled by :func:`replay`, in one thread; a plain record: nothing is checked here, and it has no lock.

    Parameters
    ----------
    policy, budget, mode : str, int, str
        The policy's name, the budget in bytes and the mode (one of :data:`MODES`) replayed.
    requests, hits, loads, misses, spills, evictions : int, default 0
        Requests replayed, and the engine's counts of each outcome.
    bytes_written, bytes_read, writes, dead_skipped_bytes : int, default 0
        Bytes written, bytes loaded, files written, and bytes of values never read again left unwritten ("dead-skip").
    io_seconds, recompute_seconds, replay_seconds : float, default 0.0
        I/O priced by a :class:`DiskModel`; the costs given for the values loaded (recomputing them instead);
        the replay's wall time.
    decisions, timeline, markers : list, default empty
        See :func:`replay`'s ``keep_decisions`` and ``timeline``. Each parameter is an attribute of that name.
    """

    policy: str
    budget: int
    mode: str
    requests: int = 0
    hits: int = 0
    loads: int = 0
    misses: int = 0
    spills: int = 0
    evictions: int = 0
    bytes_written: int = 0
    bytes_read: int = 0
    writes: int = 0
    dead_skipped_bytes: int = 0
    io_seconds: float = 0.0
    recompute_seconds: float = 0.0
    replay_seconds: float = 0.0
    decisions: list[tuple[str, Hashable]] = field(default_factory=list, repr=False)
    # With timeline=True: (request index, resident bytes, bytes on disk) after every request,
    # and (request index, "spill" | "evict" | "load", nbytes) for every decision.
    timeline: list[tuple[int, int, int]] = field(default_factory=list, repr=False)
    markers: list[tuple[int, str, int]] = field(default_factory=list, repr=False)

    @property
    def io_bytes(self) -> int:
        """Bytes written plus bytes read."""
        return self.bytes_written + self.bytes_read

    def row(self) -> dict[str, Any]:
        """The result as a flat dict (without the decision list)."""
        data = asdict(self)
        for name in ("decisions", "timeline", "markers"):
            data.pop(name)
        data["io_bytes"] = self.io_bytes
        return data


def replay(
    trace: Trace,
    policy: Policy | str,
    budget: int,
    mode: str = "strict",
    disk: DiskModel | None = None,
    keep_decisions: bool = False,
    plan: bool = True,
    timeline: bool = False,
) -> ReplayResult:
    """Drive ``trace``'s requests through a SpillEngine with ``policy`` at ``budget`` bytes.

    Modes: ``"strict"`` makes room at every put (a Chest used alone), except
    where the trace marks the recorded Chest's puts deferred (``defer`` lines:
    its ``deferred()`` blocks), where it defers them until the next settle;
    ``"settled"`` defers puts and settles where the recording settled (the dask
    integration: after each task's releases), or before the next read or put
    when the trace has no settle points; ``"dead-skip"`` is strict, but a value
    never read again costs nothing to spill. Graph-aware policies get the
    trace's graph (unless ``plan=False``: a live Chest used without the dask
    integration's callback has no graph either). With ``keep_decisions`` the result lists every
    spill, evict and load in order; with ``timeline`` it samples resident and
    disk bytes after every request and marks every decision (for plots).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    chosen = make_policy(policy)
    if plan and isinstance(chosen, GraphAware) and trace.dependencies and not chosen.planned:
        chosen.plan(GraphPlan.for_local_scheduler(trace.dependencies, trace.order, trace.data))
    requests = list(trace.requests())
    costs: dict[Hashable, float] = {}
    is_dead = None
    if mode == "dead-skip":
        last_read = _last_reads(requests)
        position = [0]

        def is_dead(key: Hashable) -> bool:
            return last_read.get(key, -1) < position[0]

    tier = SizeOnlyDisk(is_dead, costs)
    engine = SpillEngine(tier, chosen, budget, _size)
    engine.warn_failures = False  # (a value the recorded run could not write: warned about live, not again here)
    result = ReplayResult(chosen.name, budget, mode)
    where = [0]
    if keep_decisions or timeline:

        def watch(event: Event) -> None:
            if event.kind in (SPILL, EVICT, LOAD):
                reused = event.detail == REUSED  # (a value held elsewhere, handed back: no disk read)
                if keep_decisions:
                    result.decisions.append(("reuse" if reused else event.kind, event.key))
                if timeline and not reused:
                    result.markers.append((where[0], event.kind, event.nbytes))

        engine.listeners.append(watch)
    settled = mode == "settled"
    settle_points = any(op[0] == "settle" for op in requests)
    marked = not settled and any(op[0] == "defer" for op in requests)  # a strict replay follows those marks
    engine.deferred = settled
    objects: dict[int, _Sized] = {}
    pending = False
    pins = trace.pins() if settled else {}  # a live run pins a task's inputs only through the callback
    graph = chosen if plan and isinstance(chosen, GraphAware) and trace.dependencies else None
    replans = trace.replans() if graph is not None else {}  # where the live plan was predicted again
    changes = trace.changes()  # values the live run found changed in place (its eviction wrote them again)
    unwritable = trace.unwritable_puts()  # values the live run could not serialize: kept in memory
    start = time.perf_counter()
    for index, op in enumerate(requests):
        tag, key = op[0], op[1]
        for change, pinned in pins.get(index, ()):
            (engine.pin if change == "pin" else engine.unpin)([pinned])
        for _, tasks in replans.get(index, ()):
            assert graph is not None and isinstance(tasks, tuple)  # (no replans without a graph; a tuple, parsed)
            with engine.lock:
                graph.reorder(tasks)
        for _, changed in changes.get(index, ()):
            tier.changed(changed)  # (maybe loaded by this very request: its file no longer holds it, from here)
        if timeline:
            where[0] = index
            if index:
                result.timeline.append((index - 1, engine.memory_bytes, tier.total_bytes))
        if is_dead is not None:
            position[0] = index
        if pending and not settle_points and tag != "del":
            engine.settle()  # settled mode without recorded settle points: after the releases
            pending = False
        if engine._refs:  # the stand-ins the replay holds are no live values, but where a read says so (below)
            engine._refs.clear()
        if tag == "get":
            token = op[4] if len(op) > 4 else 0  # the object a recorded load gave back (older traces: unnamed)
            tier.handing = objects.get(token) if token else None
            try:
                if op[3] == "reuse" and key not in engine.memory and key in engine:
                    # Live, something else held the spilled value: the engine handed that object back and read
                    # nothing. Whatever this policy did, the program held it here too: served the same way.
                    held = tier.handing if tier.handing is not None else _Sized(engine.nbytes(key))
                    engine._refs.remember(key, held)
                if op[3] == "pop":
                    engine.pop(key)  # read, not cached: the del that follows finds nothing
                else:
                    read = engine.get(key)
                    if token:  # a later put of this object under another key stores this one, as live
                        objects[token] = read
            except KeyError:
                pass
            tier.handing = None
        elif tag == "put":
            tier.writable(key, index not in unwritable)
            token = op[5]
            value = objects.get(token) if token else None
            if value is None or value.nbytes != op[2]:
                value = _Sized(op[2])
                if token:
                    objects[token] = value
            if op[3] is not None:
                costs[key] = op[3]
            else:
                costs.pop(key, None)  # a new value: the old one's cost is not its own
            try:
                engine.put(key, value, cost=op[3], nbytes=op[2])
            except pickle.PicklingError:  # an unwritable value over this budget: a live put would raise here
                was, engine.deferred = engine.deferred, True  # kept in memory over the budget, as a deferred put
                try:
                    engine.put(key, value, cost=op[3], nbytes=op[2])
                finally:
                    engine.deferred = was
            if graph is not None and settled:  # the callback's: a task's result written straight to disk ran too
                with engine.lock:
                    graph.ran(key)
            pending = settled
        elif tag == "del":
            costs.pop(key, None)
            try:  # noqa: SIM105 - a trace recorded from a Chest that already held keys deletes keys it never put
                engine.delete(key)
            except KeyError:
                pass
        elif tag == "ondisk":  # on disk before the recording began: its file is there, nothing is written
            costs.pop(key, None)
            if key in engine:
                engine.delete(key)
            tier.restore(key, op[2])
            engine.restore(key, op[2], None)
        elif tag == "cost":
            costs[key] = op[2]
            if key in engine:
                engine.set_cost(key, op[2])
        elif tag == "settle" and (settled or marked):
            engine.settle()
        elif tag == "defer" and marked:
            engine.deferred = op[3]
        elif tag == "free":  # Chest.evict(): the policy chooses, as live
            engine.evict_one()
        elif tag == "flush":  # Chest.flush()'s writes, as live: every resident value without a file gets one
            engine.write_all()
    result.replay_seconds = time.perf_counter() - start
    if timeline and requests:
        result.timeline.append((len(requests) - 1, engine.memory_bytes, tier.total_bytes))
    stats = engine.stats
    result.requests = len(requests)
    result.hits, result.loads, result.misses = stats.hits, stats.loads, stats.misses
    result.spills, result.evictions = stats.spills, stats.evictions
    result.bytes_written, result.writes = tier.written, tier.writes
    result.bytes_read = stats.load_bytes
    result.dead_skipped_bytes = tier.dead_skipped
    result.recompute_seconds = tier.recompute_seconds
    result.io_seconds = (disk or DiskModel()).seconds(tier.written, tier.writes, stats.load_bytes, stats.loads)
    return result


def _last_reads(requests: list[tuple[Any, ...]]) -> dict[Hashable, int]:
    """For each key, the index of its last read: after it, its value is dead."""
    last: dict[Hashable, int] = {}
    for index, op in enumerate(requests):
        if op[0] == "get":
            last[op[1]] = index
    return last
