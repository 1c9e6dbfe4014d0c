"""Spare files: a deleted value's file, kept to be written over by a later spill instead of unlinked.

Why: writing a value into a new file makes the kernel allocate every page of it in the
page cache, and unlinking the file later frees them all again; writing over a file that
already has its pages is a plain copy. Measured on this machine (``/tmp``, 50 arrays of
7.6 MiB, 5 rounds, session 10): new files took 0.082-0.091 s to write plus 0.023-0.026 s
to unlink; writing over existing files of the same size took 0.042-0.045 s. A job that
spills, reads back and deletes values all along gains most: ``benchmarks/bench_churn.py``
went from 1.48x to 1.08x raw file I/O. Where every spill comes before the first delete
(dask's anomaly workload at a quarter of its peak) there is nothing to reuse.

What keeps this safe:

* a file is kept only when nothing can still read it: no mapping of it in this process,
  none alive when the process forked (:func:`spillkit.mapped.may_be_mapped`), and no
  read in progress (``FileReads.open_for_read`` pins every file it opens for a read
  without the lock, from ``min_size`` (:data:`SPARE_FROM`) bytes up);
* a kept file is renamed at once to a temporary name (``.tmp-<pid>-s<token>-<n>``), so no key
  names it, a crash leaves it where re-opening sweeps temporary files, and the write
  that takes it moves it into place with ``os.replace`` as it would a new file;
* it is opened again without following links, must still be the same regular file
  (device and inode), and is truncated to the record's length after the write;
* a forked child forgets the spares it inherited (the parent may write over them) and keeps
  none of its own; the parent never reuses a file that existed when it forked (the child may
  map it).

With no spare to offer, the pool hands out an empty file made ahead (:mod:`spillkit.blanks`).

The pool keeps at most :data:`SPARE_LIMIT` files; their bytes count on disk
(``disk_bytes``) and against ``available_disk``. They are removed before the quota
refuses a write, when a write finds the disk full (then written again), at a flush and
at close.
"""

from __future__ import annotations

import collections
import itertools
import os
import secrets
import stat
import threading
import warnings
import weakref
from dataclasses import dataclass

from .blanks import BlankFiles
from .errors import SpillWarning
from .mapped import FileId, may_be_mapped
from .regularfile import SAFE_OPEN

__all__ = ["SPARE_FROM", "SPARE_LIMIT", "Spare", "SparePool"]

SPARE_FROM = 256 * 1024  # smaller files are cheap to make and to drop, and packed values never have files
SPARE_LIMIT = 4  # a spill usually follows a delete closely: a few spares serve it, and bound the disk kept


@dataclass(frozen=True, slots=True)
class Spare:
    """A kept file: its temporary path, its length and which file it is."""

    path: str
    size: int
    file_id: FileId


class SparePool:
    """The spare files of one store's directory.

    Thread-safe (a lock of its own): :meth:`keep` runs under the engine's lock, :meth:`take`
    in a write being prepared without it (write-behind). Never raises: a file that cannot
    be renamed, opened or checked is not kept, or not reused, and the caller unlinks it or
    writes a new file as it would have without spares. A disk error (or a spare found
    replaced) is noted and warned about (:class:`~spillkit.errors.SpillWarning`) only when
    :meth:`report` is called, which the engine does at the end of its operation
    (:mod:`spillkit.notes`), so that a warning turned into an error cannot leave one half
    done. A file already gone is no error. Only the process that made the pool keeps files:
    a forked child's pool keeps none.
    """

    def __init__(self, directory: str, min_size: int = SPARE_FROM) -> None:
        self.directory = directory
        self.min_size = min_size  # files smaller than this are unlinked, and reads of them not pinned
        self._lock = threading.RLock()  # re-entrant: a GC under it may free a store whose __del__ clears this pool
        self._spares: list[Spare] = []
        self._counter = itertools.count(1)
        self._prefix = f".tmp-{os.getpid()}-s{secrets.token_hex(4)}-"  # unique among the process's pools too
        self.blanks = BlankFiles(directory, self._prefix)  # empty files made ahead, offered when no spare is kept
        self._pid = os.getpid()
        self._local = threading.local()  # each thread's notes, warned by report() in that thread
        self.waiting = 0  # notes of every thread not reported yet (spillkit.notes: a hint for the hot paths)
        _pools.add(self)

    @property
    def bytes(self) -> int:
        """Bytes of the files kept now."""
        return sum(spare.size for spare in tuple(self._spares))

    def __len__(self) -> int:
        return len(self._spares)

    def keep(self, full: str, size: int) -> bool:
        """Keep the file ``full`` (no key's any more) as a spare; False when the caller should unlink it."""
        if size < self.min_size or len(self._spares) >= SPARE_LIMIT or os.getpid() != self._pid:
            return False
        try:
            info = os.stat(full, follow_symlinks=False)
        except OSError as error:
            self._note("could not look at", full, error)
            return False
        file_id = (info.st_dev, info.st_ino)
        if info.st_size != size or info.st_nlink != 1 or may_be_mapped(file_id):
            return False
        path = os.path.join(self.directory, f"{self._prefix}{next(self._counter)}")
        with self._lock:
            if len(self._spares) >= SPARE_LIMIT:
                return False
            try:
                os.rename(full, path)
            except OSError as error:
                self._note("could not keep", full, error)
                return False
            self._spares.append(Spare(path, size, file_id))
        return True

    def take(self, size: int) -> Spare | None:
        """The spare that best fits ``size`` bytes (the smallest as large, else the largest), removed; or None."""
        with self._lock:
            if not self._spares:
                blank = self.blanks.take()
                return None if blank is None else Spare(blank[0], 0, blank[1])
            large_enough = [spare for spare in self._spares if spare.size >= size]
            spare = min(large_enough, key=_size) if large_enough else max(self._spares, key=_size)
            self._spares.remove(spare)
            return spare

    def open(self, spare: Spare) -> int | None:
        """A descriptor to write over ``spare`` from its start, or None (the caller removes it and writes anew)."""
        try:
            fd = os.open(spare.path, os.O_WRONLY | SAFE_OPEN)
        except OSError as error:  # (a link planted under its name: ELOOP)
            self._note("could not reuse", spare.path, error)
            return None
        try:
            info = os.fstat(fd)
        except OSError as error:
            self._note("could not reuse", spare.path, error)
            info = None
        if info is None or (info.st_dev, info.st_ino) != spare.file_id or not stat.S_ISREG(info.st_mode):
            os.close(fd)
            if info is not None:
                self._note("did not reuse", spare.path, "it was replaced since it was kept")
            return None  # not the file kept: left alone, a fresh file is written
        return fd

    def close(self) -> None:
        """Unlink every spare and blank file, and make no more blanks (the store is closing)."""
        self.blanks.close()  # a pool of its own (and a thread): clear() below unlinks only the spares
        self.clear()

    def clear(self) -> int:
        """Unlink every spare (a flush, or making room on the disk); return the bytes freed.

        The blank files stay: they take no bytes.
        """
        with self._lock:
            spares, self._spares = self._spares, []
        freed = 0
        for spare in spares:
            try:
                os.unlink(spare.path)
            except FileNotFoundError:
                pass
            except OSError as error:
                self._note("could not remove", spare.path, error)
                with self._lock:  # still on disk: kept, and counted, for the next clear
                    self._spares.append(spare)
                continue
            freed += spare.size
        return freed

    def report(self, *, hold_errors: bool = False) -> None:
        """Warn about this thread's errors noted since its last report (once the caller's bookkeeping is done).

        The engine calls it at the end of each operation (:mod:`spillkit.notes`), the
        background writer at the end of each write: a warning turned into an error then stops
        nothing half-way, and a write-behind thread's notes never reach another thread's caller.
        With ``hold_errors`` (``pop``, which must return its value), a warning that a filter
        turns into an error is not raised: it stays noted, for the next operation to report.
        """
        notes: collections.deque[str] | None = getattr(self._local, "notes", None)
        while notes:
            if hold_errors:
                try:
                    warnings.warn(notes[0], SpillWarning, stacklevel=4)
                except Exception:
                    return
                notes.popleft()
                self.waiting -= 1
                continue
            message = notes.popleft()
            self.waiting -= 1
            warnings.warn(message, SpillWarning, stacklevel=4)

    def forget(self) -> None:
        """Drop every spare without touching the files (a forked child: they are the parent's)."""
        self.blanks.forget()
        self._spares = []
        self._lock = threading.RLock()
        self._local = threading.local()
        self.waiting = 0

    def note(self, message: str) -> None:
        """Keep ``message`` for this thread's next :meth:`report`."""
        self._local.__dict__.setdefault("notes", collections.deque()).append(message)
        self.waiting += 1

    def _note(self, what: str, path: str, error: OSError | str) -> None:
        if not isinstance(error, FileNotFoundError):  # gone already (a directory removed, a cleaner): nothing lost
            reason = error if isinstance(error, str) else repr(error)
            self.note(f"{what} the spare spill file {path!r}: {reason}")


def _size(spare: Spare) -> int:
    return spare.size


_pools: weakref.WeakSet[SparePool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_pools):
        pool.forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
