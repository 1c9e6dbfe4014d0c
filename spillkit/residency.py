"""Resident objects: memory counted once per object, whatever the keys that hold it (a base of the ledger).

dask stores one object under several keys (aliases); a value read back may also be the
object another key holds. ``memory_bytes`` counts each resident object once, at the
size measured for the key it was first admitted under: an object that grew in place
since is not measured again, under that key or another (counting an alias at its
larger measure was tried and dropped: a round making room for the growth could spill
the object's other key, and the object then came in whole, over the budget; and
replays, which measure each put, would no longer match). ``pinned_bytes`` counts the
objects that a pinned key holds (a running task's inputs), which are outside the budget;
:meth:`ResidentObjects.pin` and ``unpin`` (the engine's, taking its lock) set the pins.

Thread-safety: only under the engine's lock, like the rest of the ledger. Nothing here
raises but the policy's own errors.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable
from typing import TYPE_CHECKING, Any

from .events import PIN, UNPIN

if TYPE_CHECKING:
    from .events import Listener
    from .policies.base import Policy

__all__ = ["_MISSING", "ResidentObjects"]

_MISSING: Any = object()


class ResidentObjects:
    """Admitting values to memory and letting them go, with their objects counted once.

    Not thread-safe by itself: the engine's lock covers every call.
    """

    # The ledger's state these methods read and change, declared for the type checker.
    memory: dict[Hashable, Any]
    memory_bytes: int
    pinned_bytes: int
    policy: Policy
    _objects: dict[int, list[int]]  # id -> [keys holding it, bytes counted, pinned keys holding it]
    _pins: dict[Hashable, int]
    _unspillable: set[Hashable]
    _aside: list[Hashable]
    _write_failed: set[Hashable]
    # The last (key, value) a put's _pop_resident took out of memory: where spillkit.mending finds the old
    # value when the put was interrupted just as the call returned it (before it could keep it anywhere).
    _last_popped: tuple[Hashable, Any] | None = None

    lock: threading.RLock
    listeners: list[Listener]

    if TYPE_CHECKING:

        def _cost(self, key: Hashable, nbytes: int) -> float: ...

        def _emit(self, kind: str, key: Hashable, nbytes: int) -> None: ...

    def _incoming(self, key: Hashable, value: Any, nbytes: int) -> int:
        # Bytes admitting ``value`` adds to memory within the budget: none when the object is resident
        # under another key, or when the key is pinned (outside the budget).
        return 0 if id(value) in self._objects or (self._pins and key in self._pins) else nbytes

    def _admit(self, key: Hashable, value: Any, nbytes: int, offer: bool = True) -> None:
        self.memory[key] = value
        entry = self._objects.get(id(value))
        if entry is None:
            entry = self._objects[id(value)] = [1, nbytes, 0]
            self.memory_bytes += nbytes
        else:
            entry[0] += 1  # the same object under a second key is counted once, at its first measure
        if self._pins and key in self._pins:  # an input loaded for a running task
            self._hold(entry, 1)
        if offer:  # a value set aside as unserializable is never offered to the policy
            self.policy.admitted(key, nbytes, self._cost(key, nbytes))

    def _pop_resident(self, key: Hashable, keep: bool = False) -> Any:
        # ``keep``: the value is also left in _last_popped (a put's old value: the put lets go of it).
        value = self.memory.get(key, _MISSING)
        if value is _MISSING:
            return value
        try:
            if self._pins and key in self._pins:
                self._hold(self._objects[id(value)], -1)
            self._release(value)
            if key in self._unspillable:
                self._unspillable.discard(key)
            elif self._aside and key in self._aside:  # out of the policy for now: not offered again
                self._aside.remove(key)
                self._write_failed.discard(key)
            else:
                self.policy.removed(key)
        finally:  # (whatever the policy raised: the value leaves memory all the same)
            # Out of memory last, kept aside first: wherever an interrupt lands, spillkit.mending finds it.
            if keep:
                self._last_popped = (key, value)
            del self.memory[key]
        return value

    def _hold(self, entry: list[int], change: int) -> None:
        # One more (or one fewer) pinned key holds this resident object: outside the budget while any does.
        entry[2] += change
        if entry[2] == change:  # 0 -> 1
            self.pinned_bytes += entry[1]
        elif not entry[2]:  # 1 -> 0
            self.pinned_bytes -= entry[1]

    def _release(self, value: Any) -> None:
        entry = self._objects[id(value)]
        entry[0] -= 1
        if not entry[0]:
            del self._objects[id(value)]
            self.memory_bytes -= entry[1]

    def pin(self, keys: Iterable[Hashable]) -> None:
        """Keep ``keys`` in memory, outside the budget, while something uses them (pins add up).

        For a running task's inputs: spilling a value the task holds frees no memory (the task
        keeps it), and the task may still change it in place (dask's disk shuffle appends to a
        partd object it was given): the spilled copy would miss those changes once the task lets
        go. So a pinned victim is passed over for the round, and a resident pinned value does not
        count against the budget (``pinned_bytes``; ``memory_bytes`` includes it): counted, it
        would only push other values out to be read back later. When the last pin goes it counts
        again, and the next put or :meth:`settle` spills to the budget. Keys need not be present
        (an input still on disk is pinned when loaded).
        """
        with self.lock:
            pins, memory = self._pins, self.memory
            for key in keys:
                count = pins.get(key, 0)
                pins[key] = count + 1
                if not count and key in memory:
                    self._hold(self._objects[id(memory[key])], 1)
                if self.listeners:
                    self._emit(PIN, key, 0)

    def unpin(self, keys: Iterable[Hashable]) -> None:
        """Undo one :meth:`pin` of ``keys`` (a key not pinned is ignored); spills nothing itself."""
        with self.lock:
            pins, memory = self._pins, self.memory
            for key in keys:
                count = pins.get(key, 0)
                if count > 1:
                    pins[key] = count - 1
                elif count:
                    del pins[key]
                    if key in memory:
                        self._hold(self._objects[id(memory[key])], -1)
                else:
                    continue
                if self.listeners:
                    self._emit(UNPIN, key, 0)
