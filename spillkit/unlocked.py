"""Reading a spilled value with the engine's lock let go, so loads in several threads overlap.

A load used to hold the engine's one lock through the file read, the checks and the
unpickling: two threads loading (dask workers resolving their inputs, a user's thread
pool) took turns, and every put waited for them. Here the record is opened under the
lock (the open descriptor keeps its bytes readable whatever happens to the key), read,
checked and decoded without it, and the result is reconciled under the lock again:
the key may have been loaded by another thread, deleted or overwritten meanwhile.

Only a tier with ``open_for_read`` / ``finish_read`` / ``still_current`` (a
:class:`~spillkit.storage.DiskStore`, and a :class:`~spillkit.segments.PackedStore`
for values in files of their own) is read this way, and only when the calling thread
holds the lock once: a caller that took it around the get relies on nothing changing.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import SpillEngine

__all__ = ["forget_stale_digest", "live_object", "read_value", "still_unchanged"]


def read_value(engine: SpillEngine, key: Hashable) -> tuple[Any, Any]:
    """Read ``key``'s value from disk; return it with the opened record if the lock was let go, else None.

    Called with the lock held once or more; returns (or raises) with it held exactly as before.
    """
    disk: Any = engine.disk
    open_for_read = getattr(disk, "open_for_read", None)
    pending = None if open_for_read is None else open_for_read(key)
    if pending is None:
        return disk.read(key), None
    lock: Any = engine.lock
    count = getattr(lock, "_recursion_count", None)  # CPython's RLock; anything else keeps the lock
    if count is None or count() != 1:
        return disk.finish_read(pending), None
    # What _release_save returns here: held once (checked above), by this thread. Built beforehand, so that
    # an interrupt landing just as _release_save returns still finds it (helper-126: the lock stayed let go,
    # and the caller's release raised RuntimeError in place of the KeyboardInterrupt).
    state = (1, threading.get_ident())
    try:
        lock._release_save()  # as threading.Condition.wait lets go of an RLock
        value = disk.finish_read(pending)
    finally:  # (entered only once _release_save has run: no signal check comes between the try and it)
        lock._acquire_restore(state)
    return value, pending


def still_unchanged(engine: SpillEngine, key: Hashable, pending: Any, nbytes: int) -> bool:
    """After a read without the lock: is ``pending`` still the key's record, with its value on disk only?

    ``nbytes`` is the size the load saw: an equal value put back with another size estimate
    has the same record (same bytes, same tag) but must not be admitted at the old size.
    """
    if engine.closed or key in engine.memory or engine._nbytes.get(key) != nbytes:
        return False
    if engine._writer is not None and key in engine._writer.pending:
        return False
    if live_object(engine, key) is not None:  # loaded and spilled again meanwhile, and alive: that object is the value
        return False
    return bool(engine.disk.still_current(pending))  # type: ignore[attr-defined]


def forget_stale_digest(engine: SpillEngine, pending: Any) -> None:
    """After a read without the lock that found its key changed: drop the digest it kept if its record is gone.

    (:mod:`spillkit.loadprints`: a key deleted, or given a newer record, while it was read.)
    """
    disk: Any = engine.disk
    prints = getattr(disk, "prints", None)
    if prints is not None and not disk.still_current(pending):
        prints.forget_record(pending.key, pending.tag)


def live_object(engine: SpillEngine, key: Hashable) -> Any:
    """The spilled key's object if something in the process still holds it (left remembered), else None."""
    ref = engine._refs.get(key)
    return None if ref is None else ref()
