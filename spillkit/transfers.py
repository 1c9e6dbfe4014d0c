"""Moving one value between the engine's memory and its disk tier: timed, counted, explained on failure.

Loads on a miss, timed writes, and the spill of one victim the engine's
loop chose (values larger than the budget: :mod:`spillkit.over_budget`). Each function
does the disk I/O, times it into the engine's stats and updates the engine's
ledger exactly as the engine itself would; the engine's
one loop (``_make_room``, :mod:`spillkit.rounds`) stays the only place that chooses what
leaves memory. Nothing here is on the hit path.

These are functions of the engine, not methods of an object the engine owns,
on purpose: a helper holding a reference back to its engine would make every
engine a reference cycle, so a dropped Chest's values would stay in memory
until the cyclic garbage collector ran instead of being freed at once.

Thread-safety: call them with the engine's lock held (they take none: one lock,
one owner). Failures propagate as the engine documents them: a disk or codec
error on load is counted in ``stats.load_failures`` and re-raised with a note
naming the key; a failed write is re-raised; a
:class:`~spillkit.errors.DiskQuotaExceeded` is also counted in ``stats.quota_errors``.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from .errors import ChangedWhileWritten, CorruptSpillFile, DiskQuotaExceeded, LoadFailed, SpillError
from .events import EVICT, HIT, LOAD, MISS, REUSED, SPILL
from .keys import describe_key
from .ledger import _MISSING
from .unlocked import forget_stale_digest, live_object, read_value, still_unchanged

if TYPE_CHECKING:
    from .engine import SpillEngine
    from .lifecycle import EngineLifecycle  # timed_write needs no more: EngineLifecycle.write_all calls it

__all__ = ["load", "spill_victim", "timed_write"]


def failed_read(engine: EngineLifecycle, key: Hashable, error: Exception) -> None:
    """Count a disk read of ``key`` that raised ``error``; raise LoadFailed from it if it is a KeyError.

    A ``KeyError`` is not "no such key": mapping methods (get, setdefault, pop with a default) would
    take it for that. Other errors are left to the caller to raise.
    """
    engine.stats.load_failures += 1
    if isinstance(error, KeyError):
        raise LoadFailed(key, error) from error


def timed_write(engine: EngineLifecycle, key: Hashable, value: Any) -> tuple[int, float]:
    """Write one value to the disk tier; return (bytes written, seconds). Counted in stats."""
    start = time.perf_counter()
    try:
        written = engine.disk.write(key, value)
    except DiskQuotaExceeded:
        engine.stats.quota_errors += 1
        raise
    seconds = time.perf_counter() - start
    engine.stats.observe_write(written, seconds)
    return written, seconds


def load(engine: SpillEngine, key: Hashable) -> Any:
    """Return a value that is not resident, and admit it when it fits; KeyError if absent."""
    if not engine.closing:  # a close() under way still serves reads: it may fail and leave the Chest open
        engine._check_open()
    if engine._busy:
        engine._refuse_if_busy(key)
    if key not in engine._nbytes:
        engine.stats.misses += 1
        if engine.listeners:
            engine._emit(MISS, key, 0)
        raise KeyError(key)
    if engine._writer is not None and key in engine._writer.pending:
        return engine._writer.rescue(key)
    nbytes = engine._nbytes[key]
    value = engine._refs.take(key)
    if value is not None:  # still alive elsewhere: hand back that object, read nothing
        engine.stats.reused += 1
        if engine.listeners:
            engine._emit(LOAD, key, nbytes, detail=REUSED, object_id=id(value))
    else:
        start = time.perf_counter()
        read = engine.disk.file_bytes(key)
        try:
            value, unlocked = read_value(engine, key)
        except Exception as error:
            failed_read(engine, key, error)
            if not isinstance(error, CorruptSpillFile):  # that one names the key already
                error.add_note(f"spillkit: raised while loading the value of key {describe_key(key)} from disk")
            raise
        seconds = time.perf_counter() - start
        engine.stats.observe_read(read, seconds)
        if unlocked is not None and not still_unchanged(engine, key, unlocked, nbytes):
            # The lock was let go for the read and the key changed meanwhile: another thread
            # loaded or overwrote it (serve what it holds now: a hit, for listeners), or deleted
            # it or wrote a newer record (serve what this read found: the get began before; keep
            # nothing, and tell listeners nothing: their events already moved past this key).
            forget_stale_digest(engine, unlocked)
            if key in engine.memory:
                resident = engine.memory[key]
                try:
                    engine._touch(key)  # a hit for the policy too, as for listeners (and traces): read now
                except KeyError:
                    if not engine._out_of_policy(key):
                        raise
                if engine.listeners:
                    engine._emit(HIT, key, engine._nbytes[key])
                return resident
            if engine._writer is not None and key in engine._writer.pending:  # loaded, changed, being written
                return engine._writer.pending[key].value  # (this read is counted already, as a load)
            live = live_object(engine, key)
            return value if live is None else live  # a live object may have changed since this read's record
        if engine.listeners:
            engine._emit(LOAD, key, nbytes, read, seconds, object_id=id(value))
    if nbytes <= engine.budget:
        # Loads make room even while puts are deferred: deferral exists so that values
        # about to be deleted are not written, and a value being read is not one of them.
        incoming = engine._incoming(key, value, nbytes)
        engine._busy.add(key)  # (engine._busy_with(key), inline: the hot path)
        try:
            engine._make_room(incoming)
        except SpillError:
            engine._refs.remember(key, value)  # served without caching: while alive it stays the value
            return value
        finally:
            engine._busy.discard(key)
        if incoming and engine.memory_bytes - engine.pinned_bytes > engine.budget - incoming:
            # No room was made (the disk refused the victims' writes, or no victim could go): served
            # without caching too, as a value over the budget is; its file is still there. Held, every
            # read of a full disk's values would stay in memory, over the budget. (A pinned key, or an
            # object resident under another key, costs the budget nothing: it is kept.)
            engine._refs.remember(key, value)
            return value
        engine._spilled_nbytes -= nbytes
        engine._admit(key, value, nbytes)
        if engine._writer is not None:
            engine._writer.throttle()
    else:
        engine._refs.remember(key, value)  # never held: while the caller keeps it, reads give it, flushes write it
    return value


def spill_victim(engine: SpillEngine, key: Hashable, background: bool = True) -> bool:
    """Act on one victim; False when the disk failed and the round should stop.

    A victim that changed while it was written stays resident, set aside until the round ends.
    One whose write failed stays resident, set aside until a write of another succeeds; the
    round stops at the second failure in a row (see :mod:`spillkit.rounds`).
    """
    if key in engine._pins:  # in use (a running task's input): spilling it frees nothing, and may miss changes
        engine._set_aside(key)
        return True
    value = engine.memory.get(key, _MISSING)
    if value is _MISSING:  # the policy names a key memory cannot find (its hash changed since: SIEVE)
        engine._no_victim()
        return False  # (the round stops: nothing more can be spilled safely)
    nbytes = engine._nbytes[key]
    if engine._writer is not None and key in engine._writer.pending:
        # Read back while an earlier write of it ran, and maybe changed since: that write no longer counts.
        engine._writer.cancel(key)
    if engine._file_holds(key, value):
        written, seconds, kind = 0, 0.0, EVICT
        engine.stats.evictions += 1
    elif (
        background
        and engine._writer is not None
        and not engine._writer.disk_failing
        and engine._writer.hand_off(key, value, nbytes)  # False: no writer thread could start
    ):
        return True
    else:
        try:
            written, seconds = timed_write(engine, key, value)
        except ChangedWhileWritten as error:  # another thread keeps changing it: not this put's failure
            engine._set_aside(key)  # the round goes on with the other victims (first: listeners may use the key)
            engine._spill_failed(key, nbytes, error, "changed while it was written; it stays in memory")
            return True
        except DiskQuotaExceeded as error:  # raised into the put, which stores nothing
            # ... unless write-behind falls back here on a failing disk, or the engine keeps such victims:
            if background and (engine._writer is not None or engine.keep_when_disk_full):
                goes_on = engine._write_failed_now(key, value)  # ... which, like its background writes, never
                engine._spill_failed(key, nbytes, error, "disk quota refused it; it stays in memory")
                return goes_on  # ... raises into a put
            engine._count_write_error(error)  # a failed write all the same (write-behind counts it so too)
            raise
        except OSError as error:
            goes_on = engine._write_failed_now(key, value)
            engine._spill_failed(key, nbytes, error, "disk write failed; it stays in memory")
            return goes_on
        except Exception as error:
            engine.policy.removed(key)
            engine._unspillable.add(key)
            engine.stats.unspillable += 1
            engine._spill_failed(key, nbytes, error, "cannot be serialized; it stays in memory")
            return True
        kind = SPILL
        engine.stats.spills += 1
        engine._wrote()
        if engine._writer is not None:
            engine._writer.disk_failing = False  # the disk takes writes again: back to the background
    del engine.memory[key]
    engine._spilled_nbytes += nbytes
    engine._release(value)
    engine._refs.remember(key, value)
    engine.policy.evicted(key)
    if engine.listeners:
        engine._emit(kind, key, nbytes, written, seconds)
    return True
