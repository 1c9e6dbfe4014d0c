"""A Chest's lifecycle: flush, close, drop, and ``with`` (the durability path is in :mod:`spillkit.persistence`).

:class:`ChestLifecycle` sits between :class:`~spillkit.chest_state.ChestState`
(the state and its accessors) and :class:`~spillkit.chest.Chest` (the mapping,
the constructor and the documentation), so that each module stays small. Its
methods are thin: the work is in plain functions of :mod:`spillkit.persistence`,
so that no Chest sits in a reference cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Self, cast

from . import closing, persistence
from .chest_state import ChestState
from .errors import SpillError

if TYPE_CHECKING:
    from .chest import Chest  # only a Chest is ever a ChestLifecycle

__all__ = ["ChestLifecycle"]


class ChestLifecycle(ChestState):
    """Flush, close and drop of a :class:`~spillkit.chest.Chest` (see each method for its failures).

    Never made on its own. Thread-safety is the engine's: each step takes its lock.
    """

    def flush(self) -> None:
        """Write every value to disk (keeping memory warm) plus an atomic key manifest.

        After ``flush()`` returns, the files, the manifest and the directory are
        fsynced, and ``Chest(path=same)`` gives back exactly the keys and values
        of this flush, even if the process is killed later before the next one:
        the files this flush names are never overwritten or removed until the
        next flush has committed its own manifest (copy-on-write). Raises
        ``SpillError`` naming the keys whose values could not be written; all
        other values are flushed and committed. A flush killed or failing
        (``OSError``) before the manifest is renamed into place leaves the
        previous flush's state. On a full disk the manifest is written into
        the room of a reserve file the first flush made (``.spillkit-reserve``),
        so the previous flush's files are still removed only after the commit.
        See docs/durability.md.

        After a failed fsync the file or segment is never fsynced again, and
        what it held is not trusted: the next flush writes each such value anew
        (from memory, or read back with its checks) and fsyncs the new copy.
        Records of a segment that an earlier good fsync covered stay trusted
        and committed; so do those that compaction copied into a segment whose
        fsync then failed (the key goes back to the original). After a failed
        fsync of the directory, the files and segments whose names were made
        since its last good fsync are written anew the same way. A value whose copy on disk fails its checks, or
        that the disk refuses, is named by the ``SpillError`` and left out of
        the manifest; the key stays (reading a damaged copy raises
        ``CorruptSpillFile``). See docs/durability.md.
        """
        persistence.flush(cast("Chest", self))

    def _check_open(self) -> None:
        if self._engine.closed:
            raise SpillError(f"the Chest at {self._path!r} is closed")

    def close(self) -> None:
        """Flush a Chest with a ``path`` of its own; remove a temporary one. Idempotent.

        Releases the directory's lock once closed, so another Chest may open the
        path (the lock is kept while the Chest stays open after a failure). An error
        the policy raises while the Chest shuts is raised once it is closed and unlocked.

        If the flush fails because of the disk (an ``OSError`` such as a full disk,
        or ``available_disk``), or because another thread kept changing a value while
        it was written (``verify_writes``), the Chest stays open with every value and
        the error says so: free space (or stop the writer) and close again, or read
        the values out. If the only
        failures are values that cannot be serialized, retrying cannot help: the
        Chest is closed anyway and the ``SpillError`` names those keys.
        """
        closing.close(cast("Chest", self))

    def _shut(self, join: bool = True) -> None:
        # join=False: called under the engine's lock, whose holder joins the writer after letting go
        # (the writer has drained by then: it writes nothing more, to the segments or elsewhere).
        try:  # (closed, the engine's policy may serve another Chest: see chest_setup._serves_an_open_chest)
            self._engine.close(join=join)  # joins the background writer before the segment files close
        finally:  # the engine is closed even when its policy raised: nothing more is written here
            try:
                self._store.close()
            finally:
                self._dir_lock.release()  # last: no other Chest may open the directory while this one writes there

    def drop(self) -> None:
        """Delete every value and the directory; the Chest is closed afterwards.

        Only what spillkit wrote goes: a persistent ``path`` that also holds
        other files (or subdirectories) keeps them, and stays with them.

        The directory's lock is released after the directory is gone, also when
        the policy raises on the way (raised once the Chest is gone). In a
        forked child this only closes the child's copy (the parent's files stay).
        If the manifest cannot be removed, the ``OSError`` is raised and nothing
        else is: the directory reopens as last flushed. Files that will not go
        after it are left, with a ``SpillWarning`` naming them.
        """
        closing.drop(cast("Chest", self))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
