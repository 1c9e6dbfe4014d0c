"""Ending a Chest: :func:`close` (a last flush, then shut) and :func:`drop` (every value and the directory go).

:class:`~spillkit.chest.Chest` keeps the public methods and their
documentation and calls these; the guarantees are in docs/durability.md.
Functions of the Chest rather than methods of a helper it owns, for the
reason :mod:`spillkit.persistence` gives (no reference cycle).

Thread-safety: both take the engine's lock, and join the background writer
after letting it go (the writer may need the lock to end). Failures: a
``close`` whose flush fails on the disk (or on values it could not write)
leaves the Chest open, with a note saying so, and re-raises. An error the
policy raises once the Chest is past its flush (shutting, or deleting every
value) is raised only after the Chest is closed and its directory unlocked:
a Chest is never left closed with its lock held.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING

from .errors import ChangedWhileWritten, DiskQuotaExceeded, SpillError, SpillWarning
from .manifest import remove_manifest
from .mapped import remove_tree
from .persistence import flush
from .reopen import remove_own

if TYPE_CHECKING:
    from .chest import Chest

__all__ = ["close", "drop"]


def close(chest: Chest) -> None:
    """Flush and shut a Chest with a ``path`` of its own, drop a temporary one: :meth:`~spillkit.chest.Chest.close`."""
    engine = chest._engine
    if chest._temporary:
        chest.drop()  # idempotent; takes the lock itself, and joins the writer once it has let go
    else:
        try:
            _close_locked(chest)
        finally:
            if engine.closed:
                engine.join_writer()  # without the lock: the writer thread may take it to end
    if engine.notes.waiting:  # what the disk tier noted, removing its spares (spillkit.notes)
        engine.notes.report()


def _close_locked(chest: Chest) -> None:
    engine = chest._engine
    with engine.lock:  # held to the end: nothing changes between the flush and the shut
        if engine.closed:
            return
        if os.getpid() != chest._owner_pid:  # a forked child's copy: shut it, flush nothing (see flush)
            engine.close()
            return
        # Closed from here for every other thread: a put or delete that waited for the lock (or comes
        # while the flush waits for writes) is refused, not lost after the flush, nor stored unflushed.
        engine.closed = engine.closing = True  # closing: reads still served until the shut (or a failure)
        still_open = f"spillkit: the Chest at {chest._path!r} is still open; nothing was dropped"
        try:
            flush(chest, closing=True)
        except OSError as error:  # fsync or the manifest: the disk may work again later
            engine.closed = engine.closing = False
            error.add_note(still_open)
            raise
        except SpillError as error:
            if any(isinstance(e, (OSError, DiskQuotaExceeded, ChangedWhileWritten)) for _, e in chest._flush_failures):
                engine.closed = engine.closing = False
                error.add_note(still_open)
                raise
            chest._shut(join=False)  # only values that can never be written failed: the error names them
            raise
        except BaseException:
            chest._shut(join=False)
            raise
        chest._shut(join=False)


def drop(chest: Chest) -> None:
    """Delete every value and the directory, then release the lock: :meth:`~spillkit.chest.Chest.drop`."""
    engine = chest._engine
    try:
        with engine.lock:
            if engine.closed:
                return
            if os.getpid() != chest._owner_pid:
                # A forked child shares its parent's files: dropping its copy must not delete them.
                engine.close()
                return
            # First, while the Chest is still whole: waiting lets go of the lock, and another thread must
            # then find every value, not an emptied Chest still open that takes puts only to lose them.
            engine.wait_for_writes()
            if engine.closed:  # closed by another thread meanwhile
                return
            try:
                chest._store.clear()  # at once: deleting key by key would compact segments about to go
                engine.clear(unfindable_ok=True)  # (a key whose hash changed goes with the rest)
            finally:  # whatever a policy raised on the way: the values are going, so the Chest goes too
                _remove(chest)
    finally:
        if engine.closed:
            engine.join_writer()  # without the lock: the writer may take it to end (joining twice is harmless)


def _remove(chest: Chest) -> None:
    # The end of a drop: closed, the directory gone and its lock released, even if a step raises.
    try:
        chest._engine.close(join=False)
    finally:
        try:
            chest._store.close()
            if chest._finalizer is not None:
                chest._finalizer()
            else:
                try:  # first: a kill during the removal must not leave half the files named
                    unsynced = remove_manifest(chest._path)
                except OSError as error:  # nothing else is removed: the directory stays whole, as last flushed
                    error.add_note(f"drop: {chest._path!r} was not removed; it reopens with its last flush's values")
                    raise
                remove_tree(chest._path, remove_own)  # spillkit's files only: the directory may hold others'
                if unsynced is not None:  # (after the removal: a warning made an error must not stop it)
                    message = f"the removal of {chest._path!r}'s manifest may not be durable: {unsynced!r}"
                    warnings.warn(message, SpillWarning, stacklevel=4)
        finally:
            chest._dir_lock.release()  # held while the directory went: no Chest could start on it half-removed
