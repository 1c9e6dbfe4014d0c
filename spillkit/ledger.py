"""The engine's ledger: what it knows about every key, kept in step with the policy and the listeners."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Any

from . import forklocks
from .errors import NOT_THE_VALUES_FAULT, ChangedWhileWritten, SpillError, SpillWarning, WriterUnavailable, warn_caller
from .events import COST, REPLAN, SPILL_ERROR, UNSERIALIZABLE, Event, Listener
from .keys import describe_key
from .liveobjects import LiveObjects
from .notes import NO_NOTES, Notes
from .policies.base import Policy
from .residency import _MISSING, ResidentObjects
from .rounds import EvictionRounds
from .sizeof import real_number
from .stats import Stats

if TYPE_CHECKING:
    from .writebehind import WriteBehind

__all__ = ["_MISSING", "EngineLedger"]


class EngineLedger(EvictionRounds, ResidentObjects):
    """The state of a :class:`~spillkit.engine.SpillEngine` and the bookkeeping that keeps it exact.

    It holds the memory tier (a dict), every key's size and given cost, the
    resident byte count (an object stored under several keys counted once), the
    bytes whose only copy is on disk, the keys set aside as unserializable, the
    stats and the listeners; it tells the policy of every key that enters or
    leaves memory and emits events. It moves nothing to or from disk: that is
    the engine's job. The engine subclasses it rather than owning it because
    the hit path reads this state on every call, and one attribute lookup more
    per ``get`` is a measurable share of its ~300 ns.

    Thread-safe only under ``lock``, which the engine holds around every
    operation (one lock, one owner). Bookkeeping never
    raises except for a policy's own error (``set_cost``, which takes the lock
    itself, also raises KeyError for an absent key,
    :class:`~spillkit.errors.SpillError` once closed, and TypeError or ValueError
    for a cost that is not a real number or is NaN); a listener's exception
    is counted in ``listener_errors``, warned about
    (:class:`~spillkit.errors.SpillWarning`) and otherwise ignored.

    Examples
    --------
    >>> from spillkit.policies import LRU
    >>> ledger = EngineLedger(LRU(), budget=100, sizeof=len)
    >>> ledger._nbytes["a"] = 3
    >>> ledger._admit("a", "xyz", 3)
    >>> ledger.memory_bytes, "a" in ledger, ledger.spilled_keys
    (3, True, [])
    """

    def __init__(
        self,
        policy: Policy,
        budget: int,
        sizeof: Callable[[Any], int],
        reload_latency: float = 1e-4,
        reload_bandwidth: float = 1e9,
    ) -> None:
        super().__init__()  # EvictionRounds' state: _make_room, the first put, may need it
        self.lock = threading.RLock()
        forklocks.register(self)  # held across fork(): a child never inherits it held by a thread it lacks
        self.memory: dict[Hashable, Any] = {}
        self.policy = policy
        self._touch = policy.touched  # bound once: the hit path calls it on every read
        self.budget = budget
        self.sizeof = sizeof
        self.reload_latency = reload_latency
        self.reload_bandwidth = reload_bandwidth
        self.stats = Stats()
        self.listeners: list[Listener] = []
        self.warn_failures = True  # a SpillWarning for each value kept in memory by a failed write (not in replays)
        self.memory_bytes = 0
        self.deferred = False
        self.deferred_blocks = 0  # open Chest.deferred() blocks (any thread)
        # Before a resident value is dropped for its file, check that the file still encodes it
        # (it may have been changed in place since); Chest(check_in_place=False) trusts values instead.
        self.check_in_place = True
        # A victim the disk quota refuses, or a value over the budget the disk refuses, stays in memory, over
        # the budget (dask workers: as SpillBuffer at max-spill); else the put raises and stores nothing.
        self.keep_when_disk_full = False
        self.closed = False
        self.closing = False  # closed to changes while close() flushes; reads still served
        self.listener_errors = 0
        self._nbytes: dict[Hashable, int] = {}  # every key, resident or not
        self._costs: dict[Hashable, float] = {}  # costs given explicitly
        self._objects: dict[int, list[int]] = {}  # id(value) -> [resident keys holding it, nbytes, pinned ones]
        self._unspillable: set[Hashable] = set()  # resident, set aside after a serialization error
        self._pins: dict[Hashable, int] = {}  # keys a running task uses (EngineLifecycle.pin): never victims
        # Memory size of the resident objects some pinned key holds: outside the budget while pinned,
        # because whoever pinned them holds them anyway (see EngineLifecycle.pin).
        self.pinned_bytes = 0
        self._spilled_nbytes = 0  # memory size of the keys whose only copy is on disk
        self._refs = LiveObjects()  # spilled values that may still be alive elsewhere
        self._writer: WriteBehind | None = None  # None: spills are written in the caller's thread
        # What the disk tier noted during an operation (spillkit.spares), warned at its end (see
        # spillkit.notes): a warning turned into an error then stops no bookkeeping half-way.
        self.notes: Notes = NO_NOTES

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

    def _check_open(self) -> None:
        if self.closed:
            raise SpillError("this Chest is closed")

    def _count_write_error(self, error: BaseException) -> None:
        # One failed write, in spill_failures and by reason (quota and serialization are counted where they are met).
        self.stats.spill_failures += 1
        if isinstance(error, OSError):
            self.stats.disk_errors += 1
        elif isinstance(error, ChangedWhileWritten):
            self.stats.changed_errors += 1
        elif isinstance(error, WriterUnavailable):
            self.stats.writer_errors += 1

    def _count_refused_write(self, error: BaseException) -> None:
        # A write that failed and set nothing aside (a put over the budget, a flush): counted as any failed
        # write, and under serialization when the value itself is at fault (spills count it as set aside).
        self._count_write_error(error)
        if not isinstance(error, NOT_THE_VALUES_FAULT):
            self.stats.serialize_errors += 1

    def _spill_failed(self, key: Hashable, nbytes: int, error: BaseException, what: str) -> None:
        self._count_write_error(error)
        if self.warn_failures:
            warn_caller(f"value for key {describe_key(key)} {what}: {error!r}")
        if self.listeners:
            self._emit_write_error(key, nbytes, error)

    def _emit_write_error(self, key: Hashable, nbytes: int, error: BaseException) -> None:
        # A trace notes a value that cannot be serialized (UNSERIALIZABLE): its replay keeps it in memory too.
        detail = type(error).__name__ if isinstance(error, NOT_THE_VALUES_FAULT) else UNSERIALIZABLE
        self._emit(SPILL_ERROR, key, nbytes, detail=detail)

    # ---- bookkeeping ---------------------------------------------------------------
    @staticmethod
    def _checked_cost(key: Hashable, cost: object) -> float:
        # Checked before anything changes: a policy does arithmetic and comparisons on costs, so a
        # string (or a Decimal, which does not mix with float) raised inside it half-way through a
        # put or a load, leaving the key stored but out of the policy.
        # Any real number, as for sizes: numpy's bools, floats and 0-d arrays too (an int too large
        # for a float is as dear as can be); not text, nor a complex number.
        seconds = real_number(cost)
        if seconds is not None:
            if seconds == seconds:  # NaN orders against nothing: it would scramble the policy's heap
                return seconds
            raise ValueError(f"the cost of {describe_key(key)} is NaN; give seconds (nothing was changed)")
        what = f"{describe_key(cost)} ({type(cost).__name__})"
        raise TypeError(
            f"the cost of {describe_key(key)} is {what}, not a real number; give seconds (nothing was changed)"
        )

    def set_cost(self, key: Hashable, cost: float) -> None:
        """Record the key's recompute cost in seconds and let the policy re-rank it.

        ``cost`` is a real number (stored as a float); TypeError for anything else, ValueError for
        NaN, before anything changes.
        """
        cost = self._checked_cost(key, cost)
        with self.lock:
            self._check_open()
            if key not in self._nbytes:
                raise KeyError(key)
            self._costs[key] = cost
            if key in self.memory and key not in self._unspillable and key not in self._aside:
                self.policy.recosted(key, self._nbytes[key], cost)
            if self.listeners:
                self._emit(COST, key, self._nbytes[key])

    def replanned(self, tasks: tuple[Hashable, ...]) -> None:
        """Tell listeners the policy's plan now runs ``tasks`` next (:data:`~spillkit.events.REPLAN`; lock held)."""
        if self.listeners:
            self._emit(REPLAN, tasks, 0)

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
