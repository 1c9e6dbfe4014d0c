"""The spill engine: the one loop that moves values between memory and disk."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Protocol

from .errors import DiskQuotaExceeded, SpillError, SpillWarning
from .events import COST, DELETE, EVICT, GIVEN_COST, HIT, LOAD, MISS, PUT, SETTLE, SPILL, SPILL_ERROR, Event, Listener
from .policies.base import Policy
from .stats import Stats

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


class SpillEngine:
    """Keeps values in a memory dict up to ``budget`` bytes and spills the rest to ``disk``.

    Eviction is ask, act, tell: the engine asks ``policy.victim()``, writes the
    value, and only when the write succeeded drops it from memory and calls
    ``policy.evicted``. A value that cannot be serialized is set aside (kept in
    memory, counted, warned about, no longer offered) so it never blocks the
    others; a disk error stops the current round and the value stays in
    memory, so memory may exceed the budget until writes work again. A value
    loaded from disk keeps its file while unchanged, so spilling it again
    writes nothing.

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
        self.closed = False
        self.listener_errors = 0
        self._nbytes: dict[Hashable, int] = {}  # every key, resident or not
        self._costs: dict[Hashable, float] = {}  # costs given explicitly
        self._objects: dict[int, list[int]] = {}  # id(value) -> [resident keys holding it, nbytes]
        self._unspillable: set[Hashable] = set()  # resident, set aside after a serialization error
        self._spilled_nbytes = 0  # memory size of the keys whose only copy is on disk

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
        """Memory size of the values whose only copy is on disk (a running count: O(1))."""
        return self._spilled_nbytes

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
                    except BaseException:
                        if old is not _MISSING:
                            self._admit(key, old, self._nbytes[key])
                        raise
            if existed and key in self.disk:
                self.disk.delete(key)
            if existed and old is _MISSING:  # it was spilled; now it is in memory again
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
            self.disk.delete(key)
            nbytes = self._nbytes.pop(key)
            if not resident:
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
            value = self.memory[key] if key in self.memory else self.disk.read(key)
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

    def evict_one(self) -> int:
        """Spill values until one frees memory; return bytes freed, or -1. Never raises."""
        with self.lock:
            before = self.memory_bytes
            while True:
                try:
                    key = self.policy.victim()
                    if not self._spill(key):
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
            for key in list(self.memory):
                if key in self.disk:
                    continue
                try:
                    self._timed_write(key, self.memory[key])
                except Exception as error:
                    failures.append((key, error))
            self.disk.sync()
        return failures

    def clear(self) -> None:
        """Delete every key."""
        with self.lock:
            self._check_open()
            for key in list(self._nbytes):
                self.delete(key)

    def close(self, forget_memory: bool = True) -> None:
        """Refuse every later operation; drop resident values (their files stay)."""
        with self.lock:
            if forget_memory:
                for key in list(self.memory):
                    self._pop_resident(key)
                    if key in self.disk:
                        self._spilled_nbytes += self._nbytes[key]
            self.closed = True

    def _check_open(self) -> None:
        if self.closed:
            raise SpillError("this Chest is closed")

    # ---- the one loop that makes room ----------------------------------------------
    def _make_room(self, incoming: int) -> None:
        limit = self.budget - incoming
        while self.memory_bytes > limit:
            try:
                key = self.policy.victim()
            except KeyError:
                return
            if not self._spill(key):
                return

    def _spill(self, key: Hashable) -> bool:
        """Act on one victim; False when the disk failed and the round should stop."""
        value = self.memory[key]
        nbytes = self._nbytes[key]
        if key in self.disk:
            written, seconds, kind = 0, 0.0, EVICT
            self.stats.evictions += 1
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
        self.policy.evicted(key)
        if self.listeners:
            self._emit(kind, key, nbytes, written, seconds)
        return True

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
        if key in self._nbytes and self._pop_resident(key) is _MISSING:
            self._spilled_nbytes -= self._nbytes[key]  # replaces a spilled value
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
        start = time.perf_counter()
        try:
            value = self.disk.read(key)
        except Exception:
            self.stats.load_failures += 1
            raise
        seconds = time.perf_counter() - start
        read = self.disk.file_bytes(key)
        nbytes = self._nbytes[key]
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
        return value

    # ---- bookkeeping ---------------------------------------------------------------
    def _admit(self, key: Hashable, value: Any, nbytes: int) -> None:
        self.memory[key] = value
        entry = self._objects.get(id(value))
        if entry is None:
            self._objects[id(value)] = [1, nbytes]
            self.memory_bytes += nbytes
        else:
            entry[0] += 1  # the same object under a second key is counted once
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
