"""The engine's lifecycle: the operations on every key at once, and the engine's end."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, cast

from .errors import NOT_THE_VALUES_FAULT, SpillError
from .events import CHANGED, FLUSH, FREE, LOAD, POPPED
from .keys import describe_key, unfindable_key
from .ledger import _MISSING, EngineLedger
from .mending import mend_if_interrupted
from .notes import reports_notes
from .transfers import failed_read, timed_write

if TYPE_CHECKING:
    from .engine import SpillEngine
    from .tiers import DiskTier

__all__ = ["EngineLifecycle"]


class EngineLifecycle(EngineLedger):
    """The operations of a :class:`~spillkit.engine.SpillEngine` that are not on its hot path.

    Removing a key and returning its value (``pop``), spilling values on
    demand until one frees memory (``evict_one``), registering a value already
    on disk (``restore``), giving every resident value (and every spilled one
    still alive elsewhere) a file (``write_all``), deleting every key (``clear``), waiting for
    background writes and closing. The engine subclasses it, as it does
    :class:`~spillkit.ledger.EngineLedger`, so these stay the engine's own
    methods; an object owning them would need a reference back to the engine,
    which would make every engine a reference cycle (see :mod:`spillkit.transfers`).

    Thread-safe: each method takes the engine's re-entrant ``lock`` (``close``
    joins the background writer after releasing it, since that thread takes
    the lock to finish). Failures: ``evict_one`` never raises and returns -1
    when nothing could be freed; ``write_all`` counts each value it could not
    write in ``stats.spill_failures`` and returns them with their errors, while
    an error syncing the directory propagates; ``clear`` raises
    :class:`~spillkit.errors.SpillError` once closed; ``restore``, ``close`` and
    ``wait_for_writes`` do not check whether the engine is closed.
    """

    # Defined by SpillEngine, which is the only subclass; declared for the type checker.
    disk: DiskTier

    if TYPE_CHECKING:

        def delete(self, key: Hashable, report: bool = True) -> None: ...

        def _spill(self, key: Hashable, background: bool = True) -> bool: ...

    def pop(self, key: Hashable, default: Any = _MISSING) -> Any:
        """Remove and return the value without caching a disk copy in memory."""
        with self.lock:
            self._check_open()
            if key not in self._nbytes:
                if default is _MISSING:
                    raise KeyError(key)
                return default
            if key in self.memory:
                value = self.memory[key]
            else:
                pending = None if self._writer is None else self._writer.pending.get(key)
                if pending is not None:
                    value = pending.value
                else:
                    value = self._refs.get(key)  # alive elsewhere: that object, as get hands back
                    value = None if value is None else value()
                    if value is None:
                        value = self._read_popped(key)
            self.delete(key, report=False)  # the value must come back, whatever a warning filter does:
            if self.notes.waiting:
                self.notes.report(hold_errors=True)  # a warning made an error waits for the next operation
            return value

    def _read_popped(self, key: Hashable) -> Any:
        """Read a spilled value for pop(): a disk read like a load's (counted, told to listeners), never cached."""
        start, read = time.perf_counter(), self.disk.file_bytes(key)
        try:
            value = self.disk.read(key)
        except Exception as error:
            failed_read(self, key, error)
            raise
        seconds = time.perf_counter() - start
        self.stats.observe_read(read, seconds)
        self.stats.popped += 1
        if self.listeners:
            self._emit(LOAD, key, self._nbytes[key], read, seconds, detail=POPPED, object_id=id(value))
        return value

    @reports_notes
    def evict_one(self) -> int:
        """Spill values until one frees memory; return bytes freed, or -1. Never raises."""
        with self.lock:
            if self.closed:  # (its policy may serve another Chest by now: never ask it)
                return -1
            before = self.memory_bytes
            if self.listeners:  # the request, for traces to replay (its spills follow as events)
                with contextlib.suppress(Exception):  # (a listener's warning raised as an error: never raised)
                    self._emit(FREE, None, 0)
            try:
                with self._round():
                    while True:
                        try:
                            # victim(), not victim_for: the caller (a worker over its memory target) does not
                            # know how many bytes it needs, and a size-weighing policy told "1 byte" would
                            # pick the smallest.
                            key = self.policy.victim()
                            if not self._spill(key, background=False):  # the caller wants the bytes freed now
                                return -1
                        except KeyError:
                            if not self._retry_failed():  # (their write failed: they may be written now)
                                return -1
                        except Exception:
                            return -1
                        if self.memory_bytes < before:
                            return before - self.memory_bytes
            except BaseException as error:  # (an interrupt mid-spill)
                mend_if_interrupted(cast("SpillEngine", self), error)
                raise

    def restore(self, key: Hashable, nbytes: int, cost: float | None) -> None:
        """Register a key whose value is already on disk (re-opening a directory)."""
        with self.lock:
            if key not in self._nbytes:
                self._spilled_nbytes += nbytes
            self._nbytes[key] = nbytes
            if cost is not None:
                self._costs[key] = cost

    def _file_holds(self, key: Hashable, value: Any, tell: bool = True) -> bool:
        """True when the key's file may stand in for its resident ``value``: an eviction drops it, a flush skips it.

        The file must be trusted (not one whose fsync failed: it may not hold these bytes) and still
        encode the value: one loaded or flushed, then changed in place by whoever holds it, is written
        again, not lost (unless ``check_in_place`` is off): with ``tell``, a ``changed`` event says so,
        for a trace (a replay cannot see values change; it models values in memory only).
        """
        if not self.disk.has_copy(key):
            return False
        if not self.check_in_place or self.disk.holds(key, value):
            return True
        if tell and self.listeners:
            with contextlib.suppress(Exception):  # (a listener's warning raised as an error: never raised)
                self._emit(CHANGED, key, self._nbytes[key])
        return False

    def write_all(self) -> list[tuple[Hashable, BaseException]]:
        """Give every resident value a file (kept in memory too); return the failures."""
        failures: list[tuple[Hashable, BaseException]] = []
        with self.lock:
            self.wait_for_writes()
            for key in list(self.memory):
                if key not in self.memory:  # a key whose hash changed: the flush's manifest names it as unsaved
                    continue
                if self._file_holds(key, self.memory[key]):
                    continue
                if not self._write_or_note(key, self.memory[key], failures):
                    continue
                if key in self._unspillable:  # it could be written after all: offer it again
                    self._unspillable.discard(key)
                    nbytes = self._nbytes[key]
                    self.policy.admitted(key, nbytes, self._cost(key, nbytes))
            if self.check_in_place:  # a spilled value still alive elsewhere is what get hands back: changed, too
                for key, ref in list(self._refs.items()):
                    value = ref()
                    if key not in self._nbytes:  # a key whose hash changed: not written under a new name
                        continue
                    if value is not None and key not in self.memory and not self._file_holds(key, value, tell=False):
                        self._write_or_note(key, value, failures)
            self.disk.sync()
            if self.listeners:  # (a trace's replay gives its resident values files here too)
                with contextlib.suppress(Exception):  # (as for FREE: the flush must go on to its commit)
                    self._emit(FLUSH, None, 0)
        return failures

    def _write_or_note(self, key: Hashable, value: Any, failures: list[tuple[Hashable, BaseException]]) -> bool:
        # A flush's write of one value: False, counted and added to ``failures``, if it failed.
        try:
            timed_write(self, key, value)
        except Exception as error:
            self._count_refused_write(error)
            failures.append((key, error))
            if self.listeners and not isinstance(error, NOT_THE_VALUES_FAULT):  # (the value's own fault: a trace's)
                self._emit_write_error(key, self._nbytes.get(key, 0), error)
            return False
        return True

    @reports_notes
    def clear(self, unfindable_ok: bool = False) -> None:
        """Delete every key.

        A key that can no longer be found (its hash changed after it was stored) cannot be
        deleted: every other key is, then ``SpillError`` names it; ``unfindable_ok`` (for a
        Chest about to go) skips it.
        """
        with self.lock:
            self._check_open()
            unfindable = []
            for key in list(self._nbytes):
                if key in self._nbytes:
                    self.delete(key, report=False)  # the notes once every key is gone (reports_notes)
                else:
                    unfindable.append(key)
            if unfindable and not unfindable_ok:
                raise SpillError(f"clear() could not delete key {describe_key(unfindable[0])}: {unfindable_key()}")

    def abandon_writes(self) -> None:
        """Drop the background writes not finished yet: their Chest is gone, nothing can read them.

        For a temporary Chest's finalizer, which may run in any thread at any allocation, the
        writer's own included, even in the middle of its step under the lock: so it takes no
        lock and changes nothing but a flag; the writer drops each unfinished write at its next
        step, unwarned, as a cancelled one.
        """
        if self._writer is not None:
            self._writer.writer.abandoned = True

    def wait_for_writes(self) -> None:
        """Block until every background write has completed (no-op without write-behind)."""
        if self._writer is not None:
            with self.lock:
                self._writer.drain()

    def close(self, forget_memory: bool = True, join: bool = True) -> None:
        """Refuse every later operation; drop resident values (their files stay).

        ``join=False``: the caller holds the lock, and joins the writer (:meth:`join_writer`) once it lets go.
        An error the policy raises while told of a removal is raised at the end, once the engine is closed.
        """
        failure: Exception | None = None
        with self.lock:
            try:  # closed whatever a policy raises: the Chest unlocks its directory next, and nothing may write there
                self.wait_for_writes()
                self._refs.clear()
                for key in list(self.memory) if forget_memory else ():
                    try:
                        self._pop_resident(key)
                    except Exception as error:  # the policy's own, told last: the value has left memory all the same
                        failure = failure or error
                    if key in self.disk:
                        self._spilled_nbytes += self._nbytes[key]
                for key in self.spilled_keys if forget_memory else ():  # the policy may serve another Chest:
                    self.policy.forgotten(key)  # its ghost lists must not take that one's keys for returns
            finally:
                self.closed, self.closing = True, False
        if join:
            self.join_writer()
        if failure is not None:
            raise failure

    def join_writer(self) -> None:
        """Wait for the background writer thread to end (without the lock: the thread may take it to finish)."""
        if self._writer is not None:
            self._writer.join()
