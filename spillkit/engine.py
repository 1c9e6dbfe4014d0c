"""The spill engine: the one loop that moves values between memory and disk."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from .errors import NOT_THE_VALUES_FAULT
from .events import DELETE, GIVEN_COST, HIT, PUT, SETTLE
from .keys import describe_key
from .ledger import _MISSING as _MISSING  # re-exported: chest.py imports the sentinel from here
from .lifecycle import EngineLifecycle
from .mending import mend_if_interrupted, mended
from .notes import reports_notes
from .over_budget import admit_refused, put_over_budget
from .policies.base import Policy
from .sizeof import checked_size
from .tiers import DiskTier
from .transfers import load, spill_victim
from .writebehind import WriteBehind

__all__ = ["DiskTier", "SpillEngine"]

load = mended(load)  # (an interrupt in a load's or a spill's steps: spillkit.mending)


class SpillEngine(EngineLifecycle):
    """Keeps values in a memory dict up to ``budget`` bytes and spills the rest to ``disk``.

    Parameters
    ----------
    disk : DiskTier
        Where spilled values go (a Chest's :class:`~spillkit.segments.PackedStore`, replay's size-only tier).
    policy : Policy
        Chooses the victims.
    budget : int
        Bytes of resident values to keep within; not checked here (a Chest parses its ``available_memory``).
    sizeof : callable
        Bytes a value holds, for a ``put`` without ``nbytes``.
    reload_latency, reload_bandwidth : float, default 1e-4 and 1e9
        A key's cost when none is given: ``reload_latency + nbytes / reload_bandwidth`` seconds.
    write_behind : bool or int, default False
        True: the automatic cap (Notes); anything but False (0 too) caps bytes in flight at ``int(write_behind)``.

    Attributes
    ----------
    lock : threading.RLock
        Held by every public method. ``memory`` (key to resident value), ``stats``, ``disk``, ``policy``,
        ``budget``, ``sizeof`` and ``listeners`` are public too.

    Raises
    ------
    SpillError
        Once closed, from ``put``, ``delete``, ``settle`` and a ``get`` that must load (not while a Chest's
        ``close()`` runs); and for a key a listener uses in the round making room for that same key.
    KeyError
        From ``get`` and ``delete`` of an absent key.
    TypeError, ValueError
        From ``put``, before any change: a ``cost`` not a real number, or NaN; a ``sizeof`` result not a size >= 0.

    Notes
    -----
    A put that raises (a full disk quota, an error in the round making room) stores nothing and keeps the key's earlier
    value, if any; a failed load is counted in ``stats.load_failures``; both errors carry a note naming the key.
    Eviction is ask, act, tell: the engine asks ``policy.victim()``, writes the value, and only when the write succeeded
    drops it from memory and calls ``policy.evicted``. A value that cannot be serialized is set aside (kept in memory,
    counted, warned about, no longer offered) so it never blocks the others; a failed write keeps the value in memory,
    passed over until a write of another value succeeds, and a second failure in a row stops the round
    (:mod:`spillkit.rounds`), so memory may exceed the budget until writes work again, and one value the disk refuses (a
    file too large for it) never stops the others spilling; a value that changed while it was written stays too, passed
    over until the round ends. A value loaded from disk keeps its file while unchanged, so spilling it again writes
    nothing. A spilled value that is still alive elsewhere in the process (a weak reference finds it) is handed back
    instead of a copy from disk, and counted once.

    With ``write_behind`` (True for an automatic cap of twice the largest value or an eighth of the budget, or a cap in
    bytes), a victim is handed to a :class:`~spillkit.writer.BackgroundWriter` and the put returns at once: the value
    stays readable until its write completes, memory may exceed the budget by the bytes in flight (callers wait when
    they pass the cap), and a failed background write puts the value back in memory, counted and warned about, never
    raised into an unrelated caller.

    Thread-safe: every public method holds one re-entrant lock (``lock``); the policy, the tiers and the listeners are
    called under it and hold none. Listeners run in registration order; an exception in one is counted, warned about,
    and does not affect the operation. The engine is split by concern, all under that one lock: its state and
    bookkeeping are :class:`~spillkit.ledger.EngineLedger` (a base class, so the hit path reads it without an extra
    lookup), the operations on every key at once and closing are :class:`~spillkit.lifecycle.EngineLifecycle` (a base
    class between the two), loads and the spill of a chosen victim are functions in
    :mod:`spillkit.transfers`, write-behind is :class:`~spillkit.writebehind.WriteBehind`, live-object reuse is
    :class:`~spillkit.liveobjects.LiveObjects`, a put over the whole budget is :mod:`spillkit.over_budget`, and the one
    loop that makes room is :class:`~spillkit.rounds.EvictionRounds`'s ``_make_room``. This class keeps the operations
    on one key.
    """

    def __init__(
        self,
        disk: DiskTier,
        policy: Policy,
        budget: int,
        sizeof: Callable[[Any], int],
        reload_latency: float = 1e-4,
        reload_bandwidth: float = 1e9,
        write_behind: bool | int = False,
    ) -> None:
        super().__init__(policy, budget, sizeof, reload_latency, reload_bandwidth)
        self.disk = disk
        # Whatever must live as long as this engine can still write: the Chest puts its directory
        # lock here, because a background writer keeps the engine (and its writes) going after a
        # Chest dropped without close() is gone, and the directory must stay locked until then.
        self.keepalive: object = None
        if write_behind is not False:
            self._writer = WriteBehind(self, None if write_behind is True else int(write_behind))

    # ---- operations ----------------------------------------------------------------
    def get(self, key: Hashable) -> Any:
        """Return the value, loading it from disk if needed; KeyError if absent."""
        # The hot path: explicit acquire/release costs half of a with-statement, and
        # self._touch is the policy's touched, often a C method (LRU's move_to_end).
        lock = self.lock
        lock.acquire()
        try:
            try:
                value = self.memory[key]
            except KeyError:
                value = _MISSING
            if value is _MISSING:  # (out of the except: a load's own error, or a miss, would chain to that KeyError)
                value = load(self, key)
                if self.notes.waiting:  # (spillkit.notes: once the load's bookkeeping is done)
                    self.notes.report()
                return value
            try:
                self._touch(key)
            except KeyError:
                if not self._out_of_policy(key):
                    raise
            self.stats.hits += 1  # no byte count here: it would cost a third of a hit
            if self.listeners:
                self._emit(HIT, key, self._nbytes[key])
            return value
        finally:
            lock.release()

    def put(self, key: Hashable, value: Any, cost: float | None = None, nbytes: int | None = None) -> None:
        """Store ``value``; make room unless deferred. Values over the budget go straight to disk.

        ``cost`` is a real number of seconds (stored as a float): TypeError for anything else and
        ValueError for NaN, before anything changes.
        """
        if cost is not None:
            cost = self._checked_cost(key, cost)
        if nbytes is None:
            measured = self.sizeof(value)
            nbytes = measured if type(measured) is int and measured >= 0 else checked_size(key, measured)
        lock = self.lock
        lock.acquire()
        try:
            if self.closed:
                self._check_open()
            if self._busy:  # (a listener in the round of this key's own put or load: spillkit.rounds)
                self._refuse_if_busy(key)
            refused = None
            if nbytes > self.budget:  # never resident within the budget (spillkit.over_budget)
                refused = put_over_budget(self, key, value, nbytes, cost)
                if refused is None:
                    if self.notes.waiting:  # (spillkit.notes: the put is whole)
                        self.notes.report()
                    return
            existed = key in self._nbytes  # TypeError for an unhashable key, before any change
            past_round = False  # (for spillkit.mending: only then does the new value win over the old)
            try:  # (an interrupt between two steps below: spillkit.mending makes the books whole)
                old = self._pop_resident(key, keep=True) if existed else _MISSING
                try:  # (from the pop on: a KeyboardInterrupt landing before the round lost the old value, helper-126)
                    if not self.deferred and refused is None:  # (a refused value is held over the budget anyway)
                        incoming = self._incoming(key, value, nbytes)
                        if self.memory_bytes - self.pinned_bytes + incoming > self.budget:
                            self._busy.add(key)  # (self._busy_with(key), inline: the hot path)
                            try:
                                self._make_room(incoming)
                            finally:
                                self._busy.discard(key)
                except BaseException as error:
                    error.add_note(f"spillkit: raised while making room for {describe_key(key)}, which was not stored")
                    if old is not _MISSING:
                        self._admit(key, old, self._nbytes[key])
                    raise
                past_round, self._last_popped = True, None  # (the old value is the put's own business now)
                if existed:
                    in_flight = self._writer is not None and self._writer.cancel(key)
                    self._refs.pop(key, None)
                    if key in self.disk:
                        self.disk.delete(key)
                    if old is _MISSING:  # it was spilled: a new value, not its return (as a resident one's overwrite);
                        self.policy.forgotten(key)  # after the round: a put that fails keeps the old value's ghost
                        if not in_flight:  # now it is in memory again
                            self._spilled_nbytes -= self._nbytes[key]
                self._nbytes[key] = nbytes
                if cost is None:
                    if existed:
                        self._costs.pop(key, None)
                else:
                    self._costs[key] = cost
                if refused is None:
                    self._admit(key, value, nbytes)
                else:
                    admit_refused(self, key, value, nbytes, refused)
                self.stats.puts += 1
                if self.listeners:
                    self._emit(PUT, key, nbytes, detail="" if cost is None else GIVEN_COST, object_id=id(value))
                if refused is not None and not isinstance(refused, NOT_THE_VALUES_FAULT):
                    # After the put's event: a trace says the value it put cannot be written (its "unwritable" line).
                    self._spill_failed(key, nbytes, refused, "cannot be serialized; it stays in memory")
            except BaseException as error:
                mend_if_interrupted(self, error, key, value if past_round else _MISSING, nbytes)
                self._last_popped = None  # (an error of the policy's own in the pop left it set)
                raise
            if self._writer is not None:
                self._writer.throttle()
            if self.notes.waiting:  # (spillkit.notes: the put is whole)
                self.notes.report()
        finally:
            lock.release()

    def delete(self, key: Hashable, report: bool = True) -> None:
        """Remove the key from memory and disk; KeyError if absent.

        ``report=False`` leaves the disk tier's notes (spillkit.notes) to the next operation: for
        ``pop``, which must hand its value back whatever a warning filter does.
        """
        lock = self.lock
        lock.acquire()
        try:
            if self.closed:
                self._check_open()
            if key not in self._nbytes:
                raise KeyError(key)
            if self._busy:
                self._refuse_if_busy(key)
            resident = key in self.memory
            if resident:
                self._pop_resident(key)
            else:  # spilled (or on its way): a ghost list must not take a later put of the key for its return
                self.policy.forgotten(key)
            in_flight = self._writer is not None and self._writer.cancel(key)
            self._refs.pop(key, None)
            self.disk.delete(key)
            nbytes = self._nbytes.pop(key)
            if not resident and not in_flight:
                self._spilled_nbytes -= nbytes
            self.stats.deletes += 1
            if self.listeners:
                self._emit(DELETE, key, nbytes)
            self._costs.pop(key, None)
            if report and self.notes.waiting:  # (spillkit.notes: the delete is whole)
                self.notes.report()
        except BaseException as error:
            mend_if_interrupted(self, error, key)  # (an interrupt between two steps above)
            raise
        finally:
            lock.release()

    @reports_notes
    def settle(self) -> None:
        """Spill until resident bytes are within the budget (ends a deferred stretch)."""
        with self.lock:
            self._check_open()
            if self.listeners:
                self._emit(SETTLE, None, 0)
            try:
                self._make_room(0)
            except BaseException as error:
                mend_if_interrupted(self, error)  # (an interrupt in the round)
                raise
            if self._writer is not None:
                self._writer.throttle()

    # Acting on one victim: a function of the engine (spillkit.transfers), bound here as a method.
    _spill = mended(spill_victim)
