"""The spill engine: the one loop that moves values between memory and disk."""

from __future__ import annotations

import contextlib
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Protocol

from .errors import CorruptSpillFile, DiskQuotaExceeded, SpillError, SpillWarning
from .events import (
    COST,
    DELETE,
    EVICT,
    GIVEN_COST,
    HIT,
    LOAD,
    MISS,
    PUT,
    REUSED,
    SETTLE,
    SPILL,
    SPILL_ERROR,
    Event,
    Listener,
)
from .policies.base import Policy
from .stats import Stats
from .writer import BackgroundWriter, PendingWrite

__all__ = ["DiskTier", "SpillEngine"]

_MISSING: Any = object()


class DiskTier(Protocol):
    """What the engine needs from a disk tier (a DiskStore, or a size-only tier in replay)."""

    total_bytes: int

    def __contains__(self, key: object) -> bool: ...
    def write(self, key: Hashable, value: Any) -> int: ...
    def read(self, key: Hashable) -> Any: ...
    def delete(self, key: Hashable) -> None: ...
    def file_bytes(self, key: Hashable) -> int: ...
    def sync(self) -> None: ...


class StagedDiskTier(DiskTier, Protocol):
    """A disk tier whose writes can be prepared without the engine's lock (for write-behind)."""

    def reserve(self, key: Hashable) -> str: ...
    def unreserve(self, name: str) -> None: ...
    def prepare(self, key: Hashable, value: Any, name: str) -> Any: ...
    def commit(self, prepared: Any) -> int: ...
    def discard(self, prepared: Any) -> None: ...


class SpillEngine:
    """Keeps values in a memory dict up to ``budget`` bytes and spills the rest to ``disk``.

    Eviction is ask, act, tell: the engine asks ``policy.victim()``, writes the
    value, and only when the write succeeded drops it from memory and calls
    ``policy.evicted``. A value that cannot be serialized is set aside (kept in
    memory, counted, warned about, no longer offered) so it never blocks the
    others; a disk error stops the current round and the value stays in
    memory, so memory may exceed the budget until writes work again. A value
    loaded from disk keeps its file while unchanged, so spilling it again
    writes nothing. A spilled value that is still alive elsewhere in the
    process (a weak reference finds it) is handed back instead of a copy from
    disk, and counted once.

    With ``write_behind`` (True for an automatic cap of twice the largest value
    or an eighth of the budget, or a cap in bytes), a victim is handed to a
    :class:`~spillkit.writer.BackgroundWriter` and the put returns at once: the
    value stays readable until its write completes, memory may exceed the
    budget by the bytes in flight (callers wait when they pass the cap), and a
    failed background write puts the value back in memory, counted and warned
    about, never raised into an unrelated caller.

    Thread-safe: every public method holds one re-entrant lock (``lock``);
    the policy, the tiers and the listeners are called under it and hold none.
    Listeners run in registration order; an exception in one is counted,
    warned about, and does not affect the operation.
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
        self.lock = threading.RLock()
        self.memory: dict[Hashable, Any] = {}
        self.disk = disk
        self.policy = policy
        self._touch = policy.touched  # bound once: the hit path calls it on every read
        self.budget = budget
        self.sizeof = sizeof
        self.reload_latency = reload_latency
        self.reload_bandwidth = reload_bandwidth
        self.stats = Stats()
        self.listeners: list[Listener] = []
        self.memory_bytes = 0
        self.deferred = False
        self.deferred_blocks = 0  # open Chest.deferred() blocks (any thread)
        self.closed = False
        self.listener_errors = 0
        self._nbytes: dict[Hashable, int] = {}  # every key, resident or not
        self._costs: dict[Hashable, float] = {}  # costs given explicitly
        self._objects: dict[int, list[int]] = {}  # id(value) -> [resident keys holding it, nbytes]
        self._unspillable: set[Hashable] = set()  # resident, set aside after a serialization error
        self._spilled_nbytes = 0  # memory size of the keys whose only copy is on disk
        self._refs: dict[Hashable, weakref.ref[Any]] = {}  # spilled values that may still be alive
        self._writer: BackgroundWriter | None = None
        if write_behind is not False:
            cap = None if write_behind is True else int(write_behind)
            self._writer = BackgroundWriter(self.lock, self._prepare_pending, self._finish_pending, cap)
            self._writer.floor = budget // 8

    # ---- reading state -------------------------------------------------------------
    def __contains__(self, key: object) -> bool:
        return key in self._nbytes

    def __len__(self) -> int:
        return len(self._nbytes)

    def keys(self) -> Iterator[Hashable]:
        """A snapshot iterator over every key (never loads)."""
        with self.lock:
            return iter(list(self._nbytes))

    def nbytes(self, key: Hashable) -> int:
        """The key's size in memory, whether resident or spilled."""
        return self._nbytes[key]

    def cost(self, key: Hashable) -> float:
        """The key's recompute cost: as given, else the estimated reload time."""
        return self._cost(key, self._nbytes[key])

    def _cost(self, key: Hashable, nbytes: int) -> float:
        # The one place the default cost is defined: the estimated time to reload the value.
        cost = self._costs.get(key)
        if cost is None:
            return self.reload_latency + nbytes / self.reload_bandwidth
        return cost

    def given_cost(self, key: Hashable) -> float | None:
        """The cost given for the key, or None when it uses the reload estimate."""
        return self._costs.get(key)

    @property
    def spilled_keys(self) -> list[Hashable]:
        """Keys whose only copy is on disk."""
        with self.lock:
            return [k for k in self._nbytes if k not in self.memory]

    def spilled_bytes(self) -> int:
        """Memory size of the values out of memory, on disk or on their way (O(1))."""
        if self._writer is not None:
            return self._spilled_nbytes + self._writer.in_flight_bytes
        return self._spilled_nbytes

    @property
    def in_flight_bytes(self) -> int:
        """Memory size of evicted values whose background write has not completed."""
        return 0 if self._writer is None else self._writer.in_flight_bytes

    @property
    def unspillable_keys(self) -> frozenset[Hashable]:
        """Resident keys set aside because they could not be serialized."""
        return frozenset(self._unspillable)

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
                return self._load(key)
            try:
                self._touch(key)
            except KeyError:
                if key not in self._unspillable:
                    raise
            self.stats.hits += 1  # no byte count here: it would cost a third of a hit
            if self.listeners:
                self._emit(HIT, key, self._nbytes[key])
            return value
        finally:
            lock.release()

    def put(self, key: Hashable, value: Any, cost: float | None = None, nbytes: int | None = None) -> None:
        """Store ``value``; make room unless deferred. Values over the budget go straight to disk."""
        if nbytes is None:
            nbytes = int(self.sizeof(value))
        lock = self.lock
        lock.acquire()
        try:
            if self.closed:
                self._check_open()
            if nbytes > self.budget:
                hash(key)  # an unhashable key fails before a file is named after it
                self._write_through(key, value, nbytes, cost)
                return
            existed = key in self._nbytes  # TypeError for an unhashable key, before any change
            old = self._pop_resident(key) if existed else _MISSING
            if not self.deferred:
                incoming = 0 if id(value) in self._objects else nbytes
                if self.memory_bytes + incoming > self.budget:
                    try:
                        self._make_room(incoming)
                    except BaseException as error:
                        error.add_note(f"spillkit: raised while making room for {key!r}, which was not stored")
                        if old is not _MISSING:
                            self._admit(key, old, self._nbytes[key])
                        raise
            if existed:
                in_flight = self._cancel_write(key)
                self._refs.pop(key, None)
                if key in self.disk:
                    self.disk.delete(key)
                if old is _MISSING and not in_flight:  # it was spilled; now it is in memory again
                    self._spilled_nbytes -= self._nbytes[key]
            self._nbytes[key] = nbytes
            if cost is None:
                if existed:
                    self._costs.pop(key, None)
            else:
                self._costs[key] = cost
            self._admit(key, value, nbytes)
            self.stats.puts += 1
            if self.listeners:
                self._emit(PUT, key, nbytes, detail="" if cost is None else GIVEN_COST, object_id=id(value))
            if self._writer is not None:
                self._throttle()
        finally:
            lock.release()

    def delete(self, key: Hashable) -> None:
        """Remove the key from memory and disk; KeyError if absent."""
        lock = self.lock
        lock.acquire()
        try:
            if self.closed:
                self._check_open()
            if key not in self._nbytes:
                raise KeyError(key)
            resident = key in self.memory
            if resident:
                self._pop_resident(key)
            in_flight = self._cancel_write(key)
            self._refs.pop(key, None)
            self.disk.delete(key)
            nbytes = self._nbytes.pop(key)
            if not resident and not in_flight:
                self._spilled_nbytes -= nbytes
            self.stats.deletes += 1
            if self.listeners:
                self._emit(DELETE, key, nbytes)
            self._costs.pop(key, None)
        finally:
            lock.release()

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
                value = self.disk.read(key) if pending is None else pending.value
            self.delete(key)
            return value

    def set_cost(self, key: Hashable, cost: float) -> None:
        """Record the key's recompute cost in seconds and let the policy re-rank it."""
        with self.lock:
            self._check_open()
            if key not in self._nbytes:
                raise KeyError(key)
            self._costs[key] = cost
            if key in self.memory and key not in self._unspillable:
                self.policy.recosted(key, self._nbytes[key], cost)
            if self.listeners:
                self._emit(COST, key, self._nbytes[key])

    def settle(self) -> None:
        """Spill until resident bytes are within the budget (ends a deferred stretch)."""
        with self.lock:
            self._check_open()
            if self.listeners:
                self._emit(SETTLE, None, 0)
            self._make_room(0)
            if self._writer is not None:
                self._throttle()

    def evict_one(self) -> int:
        """Spill values until one frees memory; return bytes freed, or -1. Never raises."""
        with self.lock:
            before = self.memory_bytes
            while True:
                try:
                    key = self.policy.victim()
                    if not self._spill(key, background=False):  # the caller wants the bytes freed now
                        return -1
                except Exception:
                    return -1
                if self.memory_bytes < before:
                    return before - self.memory_bytes

    def restore(self, key: Hashable, nbytes: int, cost: float | None) -> None:
        """Register a key whose value is already on disk (re-opening a directory)."""
        with self.lock:
            if key not in self._nbytes:
                self._spilled_nbytes += nbytes
            self._nbytes[key] = nbytes
            if cost is not None:
                self._costs[key] = cost

    def write_all(self) -> list[tuple[Hashable, BaseException]]:
        """Give every resident value a file (kept in memory too); return the failures."""
        failures: list[tuple[Hashable, BaseException]] = []
        with self.lock:
            self.wait_for_writes()
            for key in list(self.memory):
                if key in self.disk:
                    continue
                try:
                    self._timed_write(key, self.memory[key])
                except Exception as error:
                    self.stats.spill_failures += 1
                    failures.append((key, error))
                    continue
                if key in self._unspillable:  # it could be written after all: offer it again
                    self._unspillable.discard(key)
                    nbytes = self._nbytes[key]
                    self.policy.admitted(key, nbytes, self._cost(key, nbytes))
            self.disk.sync()
        return failures

    def clear(self) -> None:
        """Delete every key."""
        with self.lock:
            self._check_open()
            for key in list(self._nbytes):
                self.delete(key)

    def wait_for_writes(self) -> None:
        """Block until every background write has completed (no-op without write-behind)."""
        if self._writer is not None:
            with self.lock:
                self._writer.drain()

    def close(self, forget_memory: bool = True) -> None:
        """Refuse every later operation; drop resident values (their files stay)."""
        with self.lock:
            self.wait_for_writes()
            self._refs.clear()
            if forget_memory:
                for key in list(self.memory):
                    self._pop_resident(key)
                    if key in self.disk:
                        self._spilled_nbytes += self._nbytes[key]
            self.closed = True
        if self._writer is not None:
            self._writer.join()  # outside the lock: the thread takes it to finish

    def _check_open(self) -> None:
        if self.closed:
            raise SpillError("this Chest is closed")

    # ---- the one loop that makes room ----------------------------------------------
    def _make_room(self, incoming: int) -> None:
        limit = self.budget - incoming
        while self.memory_bytes > limit:
            try:
                key = self.policy.victim_for(self.memory_bytes - limit, self.disk.__contains__)
            except KeyError:
                return
            if not self._spill(key):
                return

    def _spill(self, key: Hashable, background: bool = True) -> bool:
        """Act on one victim; False when the disk failed and the round should stop."""
        value = self.memory[key]
        nbytes = self._nbytes[key]
        if key in self.disk:
            written, seconds, kind = 0, 0.0, EVICT
            self.stats.evictions += 1
        elif background and self._writer is not None:
            self._hand_off(key, value, nbytes, self._writer)
            return True
        else:
            try:
                written, seconds = self._timed_write(key, value)
            except SpillError:
                raise
            except OSError as error:
                self._spill_failed(key, nbytes, error, "disk write failed; it stays in memory")
                return False
            except Exception as error:
                self.policy.removed(key)
                self._unspillable.add(key)
                self.stats.unspillable += 1
                self._spill_failed(key, nbytes, error, "cannot be serialized; it stays in memory")
                return True
            kind = SPILL
            self.stats.spills += 1
        del self.memory[key]
        self._spilled_nbytes += nbytes
        self._release(value)
        self._remember(key, value)
        self.policy.evicted(key)
        if self.listeners:
            self._emit(kind, key, nbytes, written, seconds)
        return True

    def _remember(self, key: Hashable, value: Any) -> None:
        # A weak reference finds the value again if something else keeps it alive (a running
        # task holding an array): loading it back then returns that object, not a disk copy.
        with contextlib.suppress(TypeError):  # ints, strings, tuples, lists, dicts cannot be
            self._refs[key] = weakref.ref(value)

    # ---- write-behind --------------------------------------------------------------
    def _hand_off(self, key: Hashable, value: Any, nbytes: int, writer: BackgroundWriter) -> None:
        del self.memory[key]
        self._release(value)
        self.policy.evicted(key)
        pending = writer.pending.get(key)
        if pending is None:
            writer.submit(PendingWrite(key, value, nbytes, self._staged.reserve(key)))
        else:  # read back while its first write was running: that write now completes the eviction
            pending.evicting = True
        writer.in_flight_bytes += nbytes

    @property
    def _staged(self) -> StagedDiskTier:
        return self.disk  # type: ignore[return-value]  # only DiskStore-like tiers get a writer

    def _cancel_write(self, key: Hashable) -> bool:
        """Cancel the key's write in flight; True if the value was out of memory (evicting)."""
        if self._writer is None:
            return False
        pending = self._writer.cancel(key)
        return pending is not None and pending.evicting

    def _throttle(self) -> None:
        writer = self._writer
        if writer is not None and writer.in_flight_bytes > writer.cap:
            writer.wait_below(writer.cap)

    def _prepare_pending(self, pending: PendingWrite) -> Any:
        # On the writer thread, without the lock: the slow part (pickling, the temporary file).
        return self._staged.prepare(pending.key, pending.value, pending.name)

    def _finish_pending(
        self, pending: PendingWrite, prepared: Any, error: BaseException | None, seconds: float
    ) -> None:
        # On the writer thread, under the lock.
        writer = self._writer
        assert writer is not None
        staged = self._staged
        if not writer.is_current(pending):  # overwritten or deleted meanwhile: drop it
            if prepared is not None:
                staged.discard(prepared)
            elif error is None:
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
            self.stats.observe_write(written, seconds)
            self.stats.spills += 1
            if pending.evicting:
                self._spilled_nbytes += nbytes
                self._remember(key, value)
            if self.listeners:
                self._emit(SPILL, key, nbytes, written, seconds)
            return
        writer.failures += 1
        if isinstance(error, DiskQuotaExceeded):
            self.stats.quota_errors += 1
        serialization = not isinstance(error, (OSError, SpillError))
        if pending.evicting:
            self._admit(key, value, nbytes, offer=not serialization)
        elif serialization:
            self.policy.removed(key)
        if serialization:
            self._unspillable.add(key)
            self.stats.unspillable += 1
            what = "cannot be serialized; it stays in memory"
        else:
            what = "disk write failed; it stays in memory"
        self._spill_failed(key, nbytes, error, what)

    def _timed_write(self, key: Hashable, value: Any) -> tuple[int, float]:
        start = time.perf_counter()
        try:
            written = self.disk.write(key, value)
        except DiskQuotaExceeded:
            self.stats.quota_errors += 1
            raise
        seconds = time.perf_counter() - start
        self.stats.observe_write(written, seconds)
        return written, seconds

    def _spill_failed(self, key: Hashable, nbytes: int, error: BaseException, what: str) -> None:
        self.stats.spill_failures += 1
        warnings.warn(f"value for key {key!r} {what}: {error!r}", SpillWarning, stacklevel=5)
        if self.listeners:
            self._emit(SPILL_ERROR, key, nbytes, detail=type(error).__name__)

    def _write_through(self, key: Hashable, value: Any, nbytes: int, cost: float | None) -> None:
        try:
            written, seconds = self._timed_write(key, value)
        except OSError:
            self.stats.spill_failures += 1
            raise
        except Exception as error:
            if not isinstance(error, SpillError):
                error.add_note(
                    f"spillkit: value for key {key!r} ({nbytes} bytes) exceeds the memory "
                    "budget and must go to disk; nothing was stored"
                )
            raise
        if key in self._nbytes:
            resident = self._pop_resident(key) is not _MISSING
            if not self._cancel_write(key) and not resident:
                self._spilled_nbytes -= self._nbytes[key]  # replaces a spilled value
            self._refs.pop(key, None)
        self._nbytes[key] = nbytes
        self._spilled_nbytes += nbytes
        if cost is None:
            self._costs.pop(key, None)
        else:
            self._costs[key] = cost
        self.stats.puts += 1
        self.stats.direct_writes += 1
        if self.listeners:
            self._emit(PUT, key, nbytes, written, seconds, detail="" if cost is None else GIVEN_COST)

    def _load(self, key: Hashable) -> Any:
        self._check_open()
        if key not in self._nbytes:
            self.stats.misses += 1
            if self.listeners:
                self._emit(MISS, key, 0)
            raise KeyError(key)
        if self._writer is not None and key in self._writer.pending:
            return self._rescue(key, self._writer)
        nbytes = self._nbytes[key]
        ref = self._refs.pop(key, None)
        value = None if ref is None else ref()
        if value is not None:  # still alive elsewhere: hand back that object, read nothing
            self.stats.reused += 1
            if self.listeners:
                self._emit(LOAD, key, nbytes, detail=REUSED, object_id=id(value))
        else:
            start = time.perf_counter()
            try:
                value = self.disk.read(key)
            except Exception as error:
                self.stats.load_failures += 1
                if not isinstance(error, CorruptSpillFile):  # that one names the key already
                    error.add_note(f"spillkit: raised while loading the value of key {key!r} from disk")
                raise
            seconds = time.perf_counter() - start
            read = self.disk.file_bytes(key)
            self.stats.observe_read(read, seconds)
            if self.listeners:
                self._emit(LOAD, key, nbytes, read, seconds, object_id=id(value))
        if nbytes <= self.budget:
            # Loads make room even while puts are deferred: deferral exists so that values
            # about to be deleted are not written, and a value being read is not one of them.
            try:
                self._make_room(nbytes)
            except SpillError:
                return value  # no room can be made now; serve it without caching
            self._spilled_nbytes -= nbytes
            self._admit(key, value, nbytes)
            if self._writer is not None:
                self._throttle()
        return value

    def _rescue(self, key: Hashable, writer: BackgroundWriter) -> Any:
        """Read a value whose write is in flight: from memory, taken back if it was evicting."""
        pending = writer.pending[key]
        value = pending.value
        if pending.evicting:
            pending.evicting = False
            writer.in_flight_bytes -= pending.nbytes
            with contextlib.suppress(SpillError):  # no room now: it is in memory regardless
                self._make_room(pending.nbytes)
            self._admit(key, value, pending.nbytes)
        self.stats.hits += 1
        if self.listeners:
            self._emit(HIT, key, pending.nbytes)
        return value

    # ---- bookkeeping ---------------------------------------------------------------
    def _admit(self, key: Hashable, value: Any, nbytes: int, offer: bool = True) -> None:
        self.memory[key] = value
        entry = self._objects.get(id(value))
        if entry is None:
            self._objects[id(value)] = [1, nbytes]
            self.memory_bytes += nbytes
        else:
            entry[0] += 1  # the same object under a second key is counted once
        if offer:  # a value set aside as unserializable is never offered to the policy
            self.policy.admitted(key, nbytes, self._cost(key, nbytes))

    def _pop_resident(self, key: Hashable) -> Any:
        value = self.memory.pop(key, _MISSING)
        if value is _MISSING:
            return value
        self._release(value)
        if key in self._unspillable:
            self._unspillable.discard(key)
        else:
            self.policy.removed(key)
        return value

    def _release(self, value: Any) -> None:
        entry = self._objects[id(value)]
        entry[0] -= 1
        if not entry[0]:
            del self._objects[id(value)]
            self.memory_bytes -= entry[1]

    def _emit(
        self,
        kind: str,
        key: Hashable,
        nbytes: int,
        disk_bytes: int = 0,
        seconds: float = 0.0,
        detail: str = "",
        object_id: int = 0,
    ) -> None:
        cost = self._cost(key, nbytes)
        event = Event(kind, key, nbytes, disk_bytes, cost, seconds, time.time(), detail, object_id)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception as error:
                self.listener_errors += 1
                warnings.warn(f"spillkit listener {listener!r} failed: {error!r}", SpillWarning, stacklevel=4)
