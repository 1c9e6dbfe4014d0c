"""The events a Chest emits, and the listener type that receives them.

Events are flows (something happened); current state such as resident bytes is
read from the engine at the time it is needed, never rebuilt from events.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "CHANGED",
    "COST",
    "DELETE",
    "EVICT",
    "FLUSH",
    "FREE",
    "GIVEN_COST",
    "HIT",
    "KINDS",
    "LOAD",
    "MISS",
    "PIN",
    "POPPED",
    "PUT",
    "REPLAN",
    "REUSED",
    "SETTLE",
    "SPILL",
    "SPILL_ERROR",
    "UNPIN",
    "UNSERIALIZABLE",
    "Event",
    "Listener",
]

PUT: Final = "put"  # a value was stored (nbytes = its size in memory)
HIT: Final = "hit"  # a read served from memory
LOAD: Final = "load"  # a read served from disk (seconds = read + decode time)
MISS: Final = "miss"  # a read of a key that is not there
SPILL: Final = "spill"  # a value was written to disk and left memory
EVICT: Final = "evict"  # a value left memory; its unchanged file was reused, nothing written
DELETE: Final = "delete"  # a key was deleted
SPILL_ERROR: Final = "spill-error"  # a write failed; the value stays in memory
COST: Final = "cost"  # a key's recompute cost was set (cost = the new cost)
SETTLE: Final = "settle"  # the caller asked the engine to get back within budget (key is None)
FLUSH: Final = "flush"  # the caller flushed: every value has a file now (key is None; after its writes)
CHANGED: Final = "changed"  # a value in memory no longer matches its file (changed in place): it is written again
FREE: Final = "free"  # the caller asked the engine to free memory now (Chest.evict(); key is None); spills follow
PIN: Final = "pin"  # a key was pinned (kept from eviction: a running task uses it); pins add up
UNPIN: Final = "unpin"  # one pin of the key was undone
REPLAN: Final = "replan"  # a graph-aware policy's plan was predicted again (key: the tasks to run next, a tuple)
GIVEN_COST: Final = "given-cost"  # detail of a put whose cost the caller gave (not the reload estimate)
REUSED: Final = "reused"  # detail of a load served by a spilled object still alive elsewhere (no read)
UNSERIALIZABLE: Final = "unserializable"  # detail of a spill-error whose value cannot be serialized (its own fault)
POPPED: Final = "popped"  # detail of a load by pop(): read from disk for the caller, not cached (a delete follows)
KINDS: Final = (
    PUT, HIT, LOAD, MISS, SPILL, EVICT, DELETE, SPILL_ERROR, COST, SETTLE, FREE, PIN, UNPIN, REPLAN, FLUSH, CHANGED
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened to one key.

    Attributes
    ----------
    kind : str
        One of :data:`KINDS`.
    key : Hashable
        The key concerned.
    nbytes : int
        The value's size in memory (0 for a miss).
    disk_bytes : int
        Bytes written or read on disk by this event (0 when none).
    cost : float
        The key's recompute cost in seconds as the policy sees it.
    seconds : float
        Wall time the event's I/O took (0 for memory-only events).
    time : float
        ``time.time()`` when the event was emitted.
    detail : str
        Extra context, e.g. the error class of a failed spill.
    object_id : int
        For ``put`` and ``load``: ``id()`` of the value now in memory, so a
        recorder can tell one object stored under two keys (dask's aliases).
        0 otherwise.

    Parameters
    ----------
    kind, key, nbytes, disk_bytes, cost, seconds, time, detail, object_id
        The attributes above, in this order (a dataclass); ``detail``
        defaults to ``""`` and ``object_id`` to 0. Nothing is checked.

    Raises
    ------
    dataclasses.FrozenInstanceError
        On any assignment to an attribute.

    Notes
    -----
    Frozen (and slotted): an event never changes once made, so one event may
    be handed to every listener, on any thread, without a copy or a lock.
    """

    kind: str
    key: Hashable
    nbytes: int
    disk_bytes: int
    cost: float
    seconds: float
    time: float
    detail: str = ""
    object_id: int = 0


Listener = Callable[[Event], None]
