"""The engine's side of write-behind: what an eviction, a read or a cancel does to a write in flight.

:class:`~spillkit.writer.BackgroundWriter` owns the queue and the thread;
:class:`WriteBehind` owns the engine bookkeeping around it (handing a victim
over, taking it back on a read, committing or failing its write). It lives
outside ``engine.py`` to keep the engine's one loop readable; it holds no lock
of its own (one lock, one owner): the engine calls it under the engine's lock,
and the writer thread takes that same lock around every commit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from .errors import NOT_THE_VALUES_FAULT, ChangedWhileWritten, DiskQuotaExceeded, NameTaken, SpillError
from .events import HIT, SPILL
from .tiers import StagedDiskTier
from .writer import BackgroundWriter, PendingWrite

if TYPE_CHECKING:
    from .engine import SpillEngine

__all__ = ["WriteBehind"]


class WriteBehind:
    """Write-behind bookkeeping for one :class:`~spillkit.engine.SpillEngine`.

    An evicted value leaves memory and the policy's view at once, and is
    counted in :attr:`in_flight_bytes` until its background write commits. A
    read before then takes it back into memory; a put or delete of the key
    cancels the write. ``cap`` bounds the bytes in flight (None: twice the
    largest value, at least an eighth of the engine's budget).

    Thread-safe only under the engine's lock: every method except
    :meth:`join` must be called with ``engine.lock`` held, and the writer
    thread takes that lock around each commit. A failed background write is
    never raised into a caller: the value goes back into memory (or is set
    aside when it cannot be serialized), counted in ``failures`` and the
    engine's stats, and warned about.

    Examples
    --------
    >>> import tempfile
    >>> from spillkit import Chest
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     chest = Chest(path=tmp + "/c", available_memory=10, sizeof=lambda v: 4, write_behind=True)
    ...     for i in range(8):
    ...         chest[i] = [i]
    ...     chest.wait_for_writes()
    ...     chest.engine.in_flight_bytes, chest[0]
    ...     chest.drop()
    (0, [0])
    """

    def __init__(self, engine: SpillEngine, cap: int | None) -> None:
        self._engine = engine
        self.writer = BackgroundWriter(engine.lock, self._prepare, self._finish, cap, self._taken_back_at_fork)
        self.writer.floor = engine.budget // 8
        self.pending = self.writer.pending  # the same dict, read directly by the engine and tests
        self.verify = True  # check each write's tag again afterwards (Chest(verify_writes=False) turns it off)
        # Set by a background write the disk refused, cleared by the next write that lands. Meanwhile
        # the engine writes its victims itself, one a round as without write-behind: handing them all
        # off again would fail each again (each warned), every put, on a full disk.
        self.disk_failing = False

    @property
    def in_flight_bytes(self) -> int:
        """Memory size of evicted values whose background write has not completed."""
        return self.writer.in_flight_bytes

    @property
    def failures(self) -> int:
        """Background writes that failed."""
        return self.writer.failures

    @property
    def _staged(self) -> StagedDiskTier:
        return self._engine.disk  # type: ignore[return-value]  # only DiskStore-like tiers get a writer

    def hand_off(self, key: Hashable, value: Any, nbytes: int) -> bool:
        """Evict a resident key by queueing its write (lock held).

        False, with nothing changed, when no writer thread can be started (a limit on threads):
        the engine then writes the value itself, as without write-behind.
        """
        engine, writer = self._engine, self.writer
        name = self._staged.reserve(key)
        try:
            writer.submit(PendingWrite(key, value, nbytes, name))
        except RuntimeError:  # "can't start new thread"
            self._staged.unreserve(name)
            return False
        del engine.memory[key]
        engine._release(value)
        engine.policy.evicted(key)
        writer.in_flight_bytes += nbytes
        return True

    def cancel(self, key: Hashable) -> bool:
        """Cancel the key's write in flight (lock held); True if the value was out of memory (evicting)."""
        pending = self.writer.cancel(key)
        return pending is not None and pending.evicting

    def throttle(self) -> None:
        """Wait (lock released meanwhile) while more bytes than the cap are in flight."""
        writer = self.writer
        if writer.in_flight_bytes > writer.cap:
            writer.wait_below(writer.cap)

    def rescue(self, key: Hashable) -> Any:
        """Read a value whose write is in flight: from memory, taken back if it was evicting."""
        engine = self._engine
        pending = self.writer.pending[key]
        value = pending.value
        if pending.evicting:
            pending.evicting = False
            self.writer.in_flight_bytes -= pending.nbytes
            try:
                # no room now: it is in memory regardless. Listeners in this round may not use the key
                # (spillkit.rounds): it is neither in flight nor resident until the round ends.
                with contextlib.suppress(SpillError), engine._busy_with(key):
                    engine._make_room(engine._incoming(key, value, pending.nbytes))
            finally:  # whatever the round raised: it is no longer in flight, so memory must hold it
                engine._admit(key, value, pending.nbytes)
        engine.stats.hits += 1
        if engine.listeners:
            engine._emit(HIT, key, pending.nbytes)
        return value

    def drain(self) -> None:
        """Block until every queued write is done (lock held; released while waiting)."""
        self.writer.drain()

    def join(self) -> None:
        """Wait for the writer thread to exit (call without the lock)."""
        self.writer.join()

    def _taken_back_at_fork(self, writes: list[PendingWrite]) -> None:
        # In a forked child: the writes the parent's thread took along are not this copy's. Their values
        # come back into memory (as a failed write's would), their names stay reserved: the parent's
        # thread may still commit them, so the child never writes a file under them (spillkit.fileindex).
        for pending in writes:
            if pending.evicting:
                self._take_back(pending.key, pending.value, pending.nbytes)

    def _take_back(self, key: Hashable, value: Any, nbytes: int, offer: bool = True) -> None:
        # A value handed to the writer (the policy was told it was evicted) is in memory again as it was,
        # as after a synchronous write that failed: no return from disk for a ghost list (helper-107, -108).
        self._engine.policy.forgotten(key)
        self._engine._admit(key, value, nbytes, offer=offer)

    def _prepare(self, pending: PendingWrite) -> Any:
        # On the writer thread, without the lock: the slow part (pickling, the temporary file).
        # The put has returned, so the value's owner may change it in place meanwhile: verify.
        return self._staged.prepare(pending.key, pending.value, pending.name, verify=self.verify)

    def _finish(self, pending: PendingWrite, prepared: Any, error: BaseException | None, seconds: float) -> None:
        # On the writer thread, under the lock. What the disk tier noted in this write (spillkit.spares)
        # is warned here, once the write's bookkeeping is done (an error from it reaches excepthook).
        self._settle_write(pending, prepared, error, seconds)
        if self._engine.notes.waiting:
            self._engine.notes.report()

    def _settle_write(self, pending: PendingWrite, prepared: Any, error: BaseException | None, seconds: float) -> None:
        engine, writer, staged = self._engine, self.writer, self._staged
        if writer.abandoned:  # the Chest is gone: nothing can read this write
            writer.cancel(pending.key)
        if not writer.is_current(pending):  # overwritten, deleted or abandoned meanwhile: drop it
            if prepared is not None:
                staged.discard(prepared)
            else:  # the write failed, or made nothing: its name is still reserved either way
                staged.unreserve(pending.name)
            return
        del writer.pending[pending.key]
        key, value, nbytes = pending.key, pending.value, pending.nbytes
        if error is None:
            try:
                written = staged.commit(prepared)  # on failure it removes the temporary file itself
            except Exception as caught:
                error = caught
        else:
            staged.unreserve(pending.name)
        if pending.evicting:
            writer.in_flight_bytes -= nbytes
        if error is None:
            self.disk_failing = False
            engine.stats.observe_write(written, seconds)
            if pending.evicting:
                engine.stats.spills += 1
                engine._spilled_nbytes += nbytes
                engine._refs.remember(key, value)
                if engine.listeners:
                    engine._emit(SPILL, key, nbytes, written, seconds)
            # Else it was read back while written (rescue): it never left memory, so no spill (helper-125:
            # counted one, and a trace's spill line put it out of memory); its file is a copy, as a flush's.
            return
        if writer.abandoned:  # the Chest went while this write ran (its directory with it): no one to tell
            return
        if isinstance(error, NameTaken):  # a file this Chest did not write had the name, now never chosen again:
            if pending.evicting:  # nothing failed; the next round writes the value under another name,
                self._take_back(key, value, nbytes)  # as a synchronous write does at once
            return
        writer.failures += 1
        if isinstance(error, DiskQuotaExceeded):
            engine.stats.quota_errors += 1
        serialization = not isinstance(error, NOT_THE_VALUES_FAULT)
        if isinstance(error, OSError):  # (a quota refusal costs no I/O, and must not raise into puts)
            self.disk_failing = True
        if pending.evicting:
            self._take_back(key, value, nbytes, offer=not serialization)
        elif serialization and key not in engine._unspillable:  # (set aside already: out of the policy)
            engine.policy.removed(key)
        if serialization:
            engine._unspillable.add(key)
            engine.stats.unspillable += 1
            what = "cannot be serialized; it stays in memory"
        elif isinstance(error, ChangedWhileWritten):
            what = "changed while it was written; it stays in memory"
        else:
            what = "disk write failed; it stays in memory"
        engine._spill_failed(key, nbytes, error, what)
