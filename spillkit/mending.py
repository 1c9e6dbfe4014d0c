"""Mending the engine's bookkeeping after an interrupt landed in the middle of an operation.

Python raises ``KeyboardInterrupt`` (Ctrl-C) in the main thread between any two bytecodes,
and one put, load or eviction changes several structures in turn: memory, the byte
counts, the policy, the writer's queue. An interrupt between two of those steps left them
disagreeing (helper-126, sweeping an interrupt through every point of each operation): a
key listed but in neither memory nor on disk (``KeyError`` on read, on delete too), a
victim dropped from memory but still held by the policy (so no round could evict past
it), byte counts off for good. Blocking the signal around each operation costs more than
a small put (about 5 µs to swap the handler and back), so instead the engine's operations
catch what is not an ``Exception`` and call :func:`mend` before letting it go on.

:func:`mend` makes the structures agree with what memory, the disk and the writer hold,
recounting in O(keys). Only the outermost operation calls it (a round's spill inside a
put would otherwise mend while the put holds the old value in hand): the stopped put's
key holds its old value if the put had not finished making room (the value it took out of
memory is kept where mend finds it, ``_last_popped``), else the new one; the stopped
operation's key, found in none of memory, the disk and the writer's queue, is no longer
listed; a value handed to the writer but not yet out of memory stays in memory; and the
policy is rebuilt from the resident keys (its order for them is lost). Runs under the
engine's lock; raises nothing of its own. Left as they were: a store's own state (a
segment record or file not yet named: uncounted until the Chest closes).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from .ledger import _MISSING

if TYPE_CHECKING:
    from .engine import SpillEngine

__all__ = ["mend", "mend_if_interrupted", "mended"]


def mend(engine: SpillEngine, key: Hashable = _MISSING, value: Any = _MISSING, nbytes: int = 0) -> None:
    """After an interrupt: make ``engine``'s bookkeeping whole again (lock held, outermost operation only).

    ``key`` is the key the stopped operation worked on (a put's, a delete's, a load's, a spill's
    victim); ``value`` and ``nbytes`` are a put's new value, given only once its round is done: its
    key then ends with that value. Other keys are never dropped nor re-measured (a key whose hash
    changed since it was stored is found by identity, as it is kept).
    """
    engine._busy.clear()  # (the interrupt unwinds every operation under way in this thread)
    writer = engine._writer
    pending = {} if writer is None else writer.writer.pending
    for name, write in list(pending.items()):
        if write.evicting and name in engine.memory:  # handed off, then interrupted before leaving memory
            write.evicting = False  # (its write lands as a copy, as a rescued value's)
    popped, engine._last_popped = engine._last_popped, None
    if key is not _MISSING:
        if value is _MISSING and popped is not None and popped[0] is key and key not in engine.memory:
            engine.memory[key] = popped[1]  # taken out of memory by the stopped operation, kept nowhere else yet
        if value is not _MISSING and key not in engine.memory:
            # A put past its round: the old value is on its way out, so the new one is the key's; an
            # old record or write must not outlive it.
            if writer is not None:
                writer.writer.cancel(key)
            with contextlib.suppress(Exception):  # (unlinking may fail: the record then is a leftover, not the key's)
                if key in engine.disk:
                    engine.disk.delete(key)
            engine._refs.pop(key, None)
            engine.memory[key] = value
            engine._nbytes[key] = nbytes
        elif key not in engine.memory and key not in pending and key not in engine.disk:
            engine._nbytes.pop(key, None)  # in none of the three places: it cannot be read, so not listed
            engine._costs.pop(key, None)
        if key in engine.memory and key not in engine._nbytes:
            engine._nbytes[key] = engine.sizeof(engine.memory[key])
    _recount(engine, pending)
    _realign_policy(engine, key)


def _recount(engine: SpillEngine, pending: dict[Hashable, Any]) -> None:
    # Residency by object (a value under two keys counts once, at its first key's size), pins, and the
    # bytes out of memory: as _admit, _release, _hold and the spills keep them one step at a time. Keys
    # are matched by equality (memory and the size table may hold different but equal key objects),
    # and by identity too, for a key whose hash changed since it was stored.
    memory, nbytes = engine.memory, engine._nbytes
    by_identity = {id(name): size for name, size in nbytes.items()}
    objects: dict[int, list[int]] = {}
    for name, resident in memory.items():
        entry = objects.get(id(resident))
        if entry is None:
            known = engine._objects.get(id(resident))
            size = known[1] if known is not None else nbytes.get(name, by_identity.get(id(name), 0))
            entry = objects[id(resident)] = [0, size, 0]
        entry[0] += 1
        if engine._pins and name in engine._pins:
            entry[2] += 1
    engine._objects = objects
    engine.memory_bytes = sum(entry[1] for entry in objects.values())
    engine.pinned_bytes = sum(entry[1] for entry in objects.values() if entry[2])
    if engine._writer is not None:
        engine._writer.writer.in_flight_bytes = sum(write.nbytes for write in pending.values() if write.evicting)
    resident_ids = {id(name) for name in memory}
    engine._spilled_nbytes = sum(
        size
        for name, size in nbytes.items()
        if name not in memory and id(name) not in resident_ids and not (name in pending and pending[name].evicting)
    )


def _realign_policy(engine: SpillEngine, key: Hashable) -> None:
    # The policy must hold exactly the resident keys that are neither set aside nor unspillable. Rebuilt
    # whatever its length says: an interrupted admitted or removed can leave a key in part of it.
    policy, memory = engine.policy, engine.memory
    engine._aside = [name for name in engine._aside if name in memory]
    engine._unspillable.intersection_update(memory)
    out = [name for name in engine._nbytes if name not in memory]
    for name in [*out, *([] if key is _MISSING or key in memory else [key])]:  # not resident: no policy may hold it
        with contextlib.suppress(KeyError):
            policy.removed(name)
    for name in list(memory):  # offered again: its place in the order is lost, its value is not
        if name not in memory or name in engine._unspillable or name in engine._aside:
            continue  # (not found by its hash any more: kept out of the policy, as a round would find it)
        with contextlib.suppress(KeyError):
            policy.removed(name)
        size = engine._nbytes.get(name, 0)
        policy.admitted(name, size, engine._cost(name, size))


def mend_if_interrupted(
    engine: SpillEngine, error: BaseException, key: Hashable = _MISSING, value: Any = _MISSING, nbytes: int = 0
) -> None:
    """:func:`mend` when ``error`` stopped an operation between two steps: not an ``Exception`` (an
    interrupt), and no round open (inside one, the operation that opened it mends, once it unwinds)."""
    if not isinstance(error, Exception) and not engine._rounds:
        mend(engine, key, value, nbytes)


def mended(operation: Callable[..., Any]) -> Callable[..., Any]:
    """``operation(engine, ...)``, with :func:`mend` called when something not an ``Exception`` stops it."""

    @functools.wraps(operation)
    def mending(engine: SpillEngine, *args: Any, **kwargs: Any) -> Any:
        try:
            return operation(engine, *args, **kwargs)
        except BaseException as error:
            mend_if_interrupted(engine, error, args[0] if args else _MISSING)
            raise

    return mending
