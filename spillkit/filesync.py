"""Durability of a file-per-value store: fsync of files and directory, and the committed files kept.

:class:`FileSync` is :class:`~spillkit.storage.DiskStore`'s base (above the read
path): :meth:`~FileSync.sync` makes the files renamed into place durable, and
:meth:`~FileSync.protect` keeps the files a committed manifest names (copy-on-write
for crash consistency), unlinking those it no longer names. A file unlinked (or
replaced) while a loaded value maps it stays counted until that value is freed
(:class:`~spillkit.diskspace.DiskSpace`): its blocks outlive its name.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable

from .diskspace import DiskSpace
from .errors import SpillWarning
from .mapped import mapped_at_fork, unlinked
from .regularfile import SAFE_OPEN, ensure_regular

__all__ = ["FileSync"]


class FileSync(DiskSpace):
    """fsync and protection of committed files for :class:`~spillkit.storage.DiskStore`.

    Not thread-safe: the engine that owns the store holds its lock. Failures are
    the ``OSError`` of the first failed fsync (never retried: see :meth:`sync`);
    a file that cannot be unlinked is warned about and retried at the next
    :meth:`protect`.
    """

    def _drop_file(self, name: str, size: int, reuse: bool = False) -> OSError | None:
        """Unlink the file ``name``, which no key holds now; return the error that left it on disk, if any.

        Its ``size`` stops counting unless a loaded value still maps it. A file
        already missing is not an error. With ``reuse``, the file may be kept as a
        spare for a later write instead (:mod:`spillkit.spares`; counted there).
        """
        full = os.path.join(self.path, name)
        # Not while a read no pin marks is going on, nor a file a forked child may read (spillkit.spares).
        free_to_reuse = reuse and not self._unpinned_reads and name.casefold() not in self._shared_at_fork
        if free_to_reuse and self._spares.keep(full, size):
            self.total_bytes -= size
            return None
        self.total_bytes -= self._hold(self._mapped_id(full), size)
        forked_id = mapped_at_fork(full)
        try:
            os.unlink(full)
        except FileNotFoundError:
            pass
        except OSError as error:
            return error
        if forked_id is not None:
            unlinked(forked_id)  # its number may come back for a new file, which may then be reused
        return None

    def sync(self) -> None:
        """fsync every file renamed into place since the last sync, then the directory.

        Raises the ``OSError`` of the first failure, as :meth:`sync_files` and
        :meth:`sync_directory` say. Nothing whose fsync failed is fsynced again:
        Linux may drop the dirty pages of a failed writeback (marked clean, the
        error reported once), so a second fsync could succeed with the bytes,
        or names, never on disk.
        """
        self.sync_files()
        self.sync_directory()

    def sync_files(self) -> None:
        """fsync every file renamed into place since the last good directory fsync (:meth:`sync` without the directory).

        Raises the ``OSError`` of the first failed fsync; that file's key is
        then listed by :meth:`unsynced_keys` and the file never fsynced again.
        """
        for name in sorted(self._dirty):
            full = os.path.join(self.path, name)
            try:  # a FIFO planted under the name since would block this open, with the engine's lock held
                fd = ensure_regular(os.open(full, os.O_RDONLY | SAFE_OPEN), full)
            except OSError:
                self._dirty.discard(name)
                self._unsynced.add(name)  # not the file written: its key is written anew, or named by the flush
                raise
            try:
                os.fsync(fd)
            except OSError:
                self._dirty.discard(name)
                self._unsynced.add(name)
                raise
            finally:
                os.close(fd)

    def sync_directory(self) -> None:
        """fsync the directory, so that the names renamed into place since its last good fsync are durable.

        Raises the ``OSError`` if it fails; the keys of the files renamed into
        place since the last good directory fsync are then listed by
        :meth:`unsynced_keys` (their names may be lost) until written anew.
        """
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError:
            self._unsynced |= self._dirty
            self._dirty.clear()
            raise
        finally:
            os.close(fd)
        self._dirty.clear()

    def protect(self, names: Iterable[str], *, add: bool = False) -> None:
        """Keep the files ``names`` (a committed manifest's) from now on; unlink those it no longer names.

        Called once a manifest is durable: the files the previous manifest needed
        and this one does not (superseded or deleted since) are removed. A file
        that cannot be removed is warned about and tried again at the next call
        (a re-open removes it too). With
        ``add=True`` the names are protected as well, and nothing is removed (for
        the moment before a commit, when either manifest may end up on disk).
        """
        if add:
            self._protected.update(name.casefold() for name in names)
            return
        self._protected = {name.casefold() for name in names}
        for name in list(self._orphans):  # left by a failed unlink: try again now
            if name.casefold() in self._owners or name.casefold() in self._protected:
                self._orphans.discard(name)  # the name was taken again: the file is a key's now
                continue
            try:
                os.unlink(os.path.join(self.path, name))
            except FileNotFoundError:
                pass
            except OSError:
                continue
            self._orphans.discard(name)
        for name, size in list(self._retained.items()):
            if name.casefold() in self._protected:
                continue
            del self._retained[name]
            error = self._drop_file(name, size)
            if error is not None:
                self._orphans.add(name)  # tried again at the next protect(), like a deleted key's
                warnings.warn(f"could not remove the superseded file {name!r}: {error!r}", SpillWarning, stacklevel=3)
