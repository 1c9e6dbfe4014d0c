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
recounting in O(keys): the key of a put interrupted after its round holds the new value
(one interrupted before holds the old: the round puts it back); a key in none of memory,
the disk and the writer's queue is no longer listed; a value handed to the writer but not
yet out of memory stays in memory; the policy is offered again what is resident and out
of it. Runs under
the engine's lock; raises nothing of its own. Left as they were: a store's own state
(a segment file created and not yet named, counted by the store's next recount).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from .ledger import _MISSING

if TYPE_CHECKING:
    from .engine import SpillEngine

__all__ = ["mend", "mended"]


def mend(engine: SpillEngine, key: Hashable = _MISSING, value: Any = _MISSING, nbytes: int = 0) -> None:
    """After an interrupt: make ``engine``'s bookkeeping whole again (lock held).

    ``key``, ``value`` and ``nbytes`` name the put that was interrupted, if one was: its key
    ends with the value memory or the disk still holds for it, else with ``value``.
    """
    engine._busy.clear()  # (the interrupt unwinds every operation under way in this thread)
    writer = engine._writer
    pending = {} if writer is None else writer.writer.pending
    for name, write in list(pending.items()):
        if write.evicting and name in engine.memory:  # handed off, then interrupted before leaving memory
            write.evicting = False  # (its write lands as a copy, as a rescued value's)
    if value is not _MISSING and key not in engine.memory:
        # A put past its round (which puts the old value back itself when interrupted): the old value
        # is on its way out, so the new one is the key's; an old record or write must not outlive it.
        if writer is not None:
            writer.writer.cancel(key)
        with contextlib.suppress(Exception):  # (unlinking may fail: the record then is a leftover, not the key's)
            if key in engine.disk:
                engine.disk.delete(key)
        engine._refs.pop(key, None)
        engine.memory[key] = value
        engine._nbytes[key] = nbytes
    gone = [
        name for name in engine._nbytes if name not in engine.memory and name not in pending and name not in engine.disk
    ]
    for name in gone:  # a key in none of the three places cannot be read: not listed
        del engine._nbytes[name]
        engine._costs.pop(name, None)
    for name in list(engine.memory):
        if name not in engine._nbytes:
            engine._nbytes[name] = engine.sizeof(engine.memory[name])
    _recount(engine, pending)
    _realign_policy(engine, gone)


def _recount(engine: SpillEngine, pending: dict[Hashable, Any]) -> None:
    # Residency by object (a value under two keys counts once, at its first key's size), pins, and the
    # bytes out of memory: as _admit, _release, _hold and the spills keep them one step at a time.
    objects: dict[int, list[int]] = {}
    for name, resident in engine.memory.items():
        entry = objects.get(id(resident))
        if entry is None:
            known = engine._objects.get(id(resident))
            entry = objects[id(resident)] = [0, known[1] if known is not None else engine._nbytes[name], 0]
        entry[0] += 1
        if engine._pins and name in engine._pins:
            entry[2] += 1
    engine._objects = objects
    engine.memory_bytes = sum(entry[1] for entry in objects.values())
    engine.pinned_bytes = sum(entry[1] for entry in objects.values() if entry[2])
    evicting = {name for name, write in pending.items() if write.evicting}
    if engine._writer is not None:
        engine._writer.writer.in_flight_bytes = sum(pending[name].nbytes for name in evicting)
    engine._spilled_nbytes = sum(
        size for name, size in engine._nbytes.items() if name not in engine.memory and name not in evicting
    )


def _realign_policy(engine: SpillEngine, gone: list[Hashable]) -> None:
    # The policy must hold exactly the resident keys that are neither set aside nor unspillable
    # (``gone``: keys no longer listed at all, which it may still hold).
    policy, memory = engine.policy, engine.memory
    engine._aside = [name for name in engine._aside if name in memory]
    engine._unspillable.intersection_update(memory)
    held = [name for name in memory if name not in engine._unspillable and name not in engine._aside]
    if len(policy) == len(held):
        return
    for name in [*(name for name in engine._nbytes if name not in memory), *gone]:  # out of memory: out of it
        with contextlib.suppress(KeyError):
            policy.removed(name)
    for name in held:  # offered again: its place in the order is lost, its value is not
        with contextlib.suppress(KeyError):
            policy.removed(name)
        size = engine._nbytes[name]
        policy.admitted(name, size, engine._cost(name, size))


def mended(operation: Callable[..., Any]) -> Callable[..., Any]:
    """``operation(engine, ...)``, with :func:`mend` called when something not an ``Exception`` stops it."""

    @functools.wraps(operation)
    def mending(engine: SpillEngine, *args: Any, **kwargs: Any) -> Any:
        try:
            return operation(engine, *args, **kwargs)
        except BaseException as error:
            if not isinstance(error, Exception):
                mend(engine)
            raise

    return mending
