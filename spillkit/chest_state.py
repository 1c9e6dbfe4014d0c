"""A Chest's state and everything that reads or steers it beyond the mapping and the lifecycle.

:class:`ChestState` declares the private attributes that
:func:`spillkit.chest_setup.setup_chest` sets and :mod:`spillkit.persistence`
uses, and holds the read-only views of them (``inmem``, ``path``, sizes,
``policy``, ``stats``, ``engine``) and the engine controls meant for
integrations (costs, listeners, deferred settling, manual eviction).
:class:`~spillkit.chest_lifecycle.ChestLifecycle` (flush, close, drop)
inherits it, and :class:`~spillkit.chest.Chest` inherits that and keeps the
mapping, the constructor and the documentation, as
:class:`~spillkit.engine.SpillEngine` inherits its
:class:`~spillkit.ledger.EngineLedger`.
"""

from __future__ import annotations

import contextlib
import types
import weakref
from collections.abc import Hashable, Iterator, Mapping
from typing import Any, Self

from .dirlock import DirLock
from .engine import SpillEngine
from .events import Listener
from .policies import Policy
from .reserve import Reserve
from .segments import PackedStore
from .stats import Stats

__all__ = ["ChestState"]


class ChestState:
    """The state of a :class:`~spillkit.chest.Chest` and its accessors beyond the mapping.

    Never made on its own and without a constructor: when a Chest is made,
    :func:`~spillkit.chest_setup.setup_chest` sets the attributes declared
    here, which :mod:`spillkit.persistence` uses too. The properties are
    read-only views of that state; the methods steer the engine for
    integrations (costs, listeners, deferred settling, manual eviction). All
    are the Chest's public API (``help(Chest)`` lists them with their
    docstrings). Thread-safe as the Chest is (see its Notes).
    """

    # Set by setup_chest (the constructor) and used by spillkit.persistence:
    _temporary: bool
    _path: str
    _finalizer: weakref.finalize[Any, Any] | None
    _owner_pid: int
    _flushed: bool
    _reserve: Reserve | None
    _dir_lock: DirLock
    _secret: bytes
    _store: PackedStore
    _engine: SpillEngine
    _flush_failures: tuple[tuple[Hashable, BaseException], ...] = ()  # the last flush's unwritten keys
    _committed: list[tuple[Any, ...]] | None = None  # the manifest on disk, as reopen.manifest_rows; None: unknown

    # ---- beyond a dict -------------------------------------------------------------
    def set_cost(self, key: Hashable, seconds: float) -> None:
        """Record how many seconds ``key``'s value takes to recompute (a real number, as for :meth:`Chest.put`)."""
        self._engine.set_cost(key, seconds)

    @property
    def inmem(self) -> Mapping[Hashable, Any]:
        """A read-only live view of the values held in memory."""
        return types.MappingProxyType(self._engine.memory)

    @property
    def closed(self) -> bool:
        """True after :meth:`close` or :meth:`drop`."""
        return self._engine.closed

    @property
    def path(self) -> str:
        """The directory that holds spilled values."""
        return self._path

    @property
    def available_memory(self) -> int:
        """The memory budget in bytes."""
        return self._engine.budget

    @property
    def memory_bytes(self) -> int:
        """Bytes of values currently held in memory (shared objects counted once)."""
        return self._engine.memory_bytes

    @property
    def disk_bytes(self) -> int:
        """Bytes of spill files on disk (segment files whole: records deleted but not yet compacted count).

        A file deleted while a loaded value still maps it (``map_loads``) counts until that value is freed.
        """
        with self._engine.lock:
            return self._store.recount()

    # ---- dask.distributed's manual-eviction protocol ------------------------------
    @property
    def fast(self) -> Mapping[Hashable, Any]:
        """The in-memory values (dask.distributed tests it for emptiness before ``evict``)."""
        return self.inmem

    @property
    def slow(self) -> Mapping[Hashable, Any]:
        """The values out of memory, on disk or on their way (a view: reading one loads it).

        dask.distributed's worker metrics count ``len(data.slow)`` tasks as on disk, not in memory.
        """
        return _OutOfMemory(self._engine)

    def evict(self) -> int:
        """Spill values until one frees memory; return the bytes freed, or -1. Never raises."""
        if self._engine.closed:
            return -1
        return self._engine.evict_one()

    @property
    def spilled_total(self) -> tuple[int, int]:
        """(memory bytes of the values whose only copy is on disk, bytes on disk of the values' files).

        The second is ``disk_bytes`` without the spare files kept for reuse (:mod:`spillkit.spares`):
        dask.distributed reports it as spilled data.
        """
        with self._engine.lock:
            on_disk = self._store.recount()
            return self._engine.spilled_bytes(), on_disk - self._store.spare_bytes

    @property
    def policy(self) -> Policy:
        """The eviction policy in use."""
        return self._engine.policy

    @property
    def stats(self) -> Stats:
        """Cumulative counters (hits, loads, misses, spills, bytes, seconds, failures)."""
        return self._engine.stats

    @property
    def engine(self) -> SpillEngine:
        """The engine behind this Chest (for integrations; not needed for dict use)."""
        return self._engine

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(event)`` for every event from now on, after earlier listeners."""
        with self._engine.lock:
            self._engine.listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling ``listener``; ValueError if it was not added."""
        with self._engine.lock:
            self._engine.listeners.remove(listener)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[Self]:
        """Let puts exceed the budget until the block ends (or :meth:`settle` is called).

        For integrations that know deletes are coming: dask stores a task's
        result before deleting the inputs it no longer needs, so settling after
        the deletes avoids writing values that are about to disappear.
        """
        engine = self._engine
        with engine.lock:
            # A count, not a saved flag: blocks opened by two threads may close in any order,
            # and the Chest is deferred while any is open.
            engine.deferred_blocks += 1
            engine.deferred = True
        try:
            yield self
        finally:
            with engine.lock:
                engine.deferred_blocks -= 1
                if not engine.deferred_blocks:
                    engine.deferred = False
                    engine.settle()

    def settle(self) -> None:
        """Spill until memory is within the budget (pinned values, outside it, stay: see ``engine.pin``)."""
        self._engine.settle()

    def wait_for_writes(self) -> None:
        """Block until every background write in flight has completed (see ``write_behind``).

        Values whose write failed are back in memory by then; others are spilled in their place,
        and waited for, so memory is within the budget again (unless puts are deferred).
        """
        engine, writer = self._engine, self._engine._writer
        if writer is None:
            return
        engine.wait_for_writes()
        with engine.lock:
            # A write that failed for the value's own sake (it cannot be pickled, it kept changing)
            # put it back, over the budget, with nothing in flight: others go in its place. Not while
            # the disk fails: then each put writes one victim itself (see spillkit.writebehind).
            over = engine.memory_bytes - engine.pinned_bytes > engine.budget
            if over and not (engine.closed or engine.deferred or writer.disk_failing):
                engine.settle()
                engine.wait_for_writes()


class _OutOfMemory(Mapping[Hashable, Any]):
    """The keys of an engine that are not in memory, as a read-only mapping (see ``ChestState.slow``)."""

    def __init__(self, engine: SpillEngine) -> None:
        self._engine = engine

    def __len__(self) -> int:
        return len(self._engine) - len(self._engine.memory)  # two dict lengths: no lock, no copy

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._engine.spilled_keys)

    def __getitem__(self, key: Hashable) -> Any:
        if key in self._engine.memory or key not in self._engine:
            raise KeyError(key)
        return self._engine.get(key)
