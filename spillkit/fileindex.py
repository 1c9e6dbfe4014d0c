"""The bookkeeping of a :class:`~spillkit.storage.DiskStore` that touches no file.

:class:`FileIndex` holds a disk store's state and every method that only reads
or updates it: the key to file-name index, name reservations for writes in
progress, and what the durability bookkeeping reports
(:meth:`~FileIndex.has_copy`, :meth:`~FileIndex.unsynced_keys`,
:attr:`~FileIndex.retained`). :class:`~spillkit.storage.DiskStore` inherits it
and adds everything that opens, writes, renames, fsyncs or unlinks files, so
that the modules the tests inject disk faults into (``spillkit.storage``'s
``os`` and ``open``) still hold every such call.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import weakref
from collections.abc import Hashable, Iterator
from typing import Any

from .codecs import Codec
from .loadprints import LoadPrints
from .mapped import FileId
from .naming import candidate_name
from .security import process_secret
from .spares import SparePool

__all__ = ["FileIndex"]

_FREE: Any = object()


class FileIndex:
    """A disk store's key to file-name index, reservations and durability state (no I/O).

    Each key maps to one file in ``path``; :meth:`reserve` picks a name that no
    other key owns or reserves (compared casefolded, so names stay injective on
    case-insensitive disks) and that no committed manifest protects. The
    sets that :meth:`~spillkit.filesync.FileSync.sync` and
    :meth:`~spillkit.filesync.FileSync.protect` maintain live here too.

    Not thread-safe: the engine that owns the store holds the lock, except
    that ``DiskStore.prepare`` takes temporary names from ``_temp_counter``,
    whose ``next()`` is atomic. Nothing here touches the disk, so nothing
    raises ``OSError``: :meth:`file_bytes`,
    :meth:`filename` and :meth:`unreserve` raise ``KeyError`` for a key or name
    they do not hold, changing nothing.
    """

    def __init__(
        self,
        path: str,
        codec: Codec,
        available_disk: int | None = None,
        secret: bytes | None = None,
        map_from: int | None = None,
    ) -> None:
        self.path = path
        self.map_from = map_from  # records this large or larger are mapped, not read (None: never)
        self.codec = codec
        self.available_disk = available_disk
        self.secret = process_secret() if secret is None else secret
        self.prints = LoadPrints(codec, self.secret)  # loaded compressed records: the in-place check's digests
        self.total_bytes = 0
        self._names: dict[Hashable, str] = {}
        self._sizes: dict[Hashable, int] = {}
        self._tags: dict[Hashable, bytes] = {}  # the HMAC of each key's current file: an older file is refused
        self._owners: dict[str, Hashable] = {}  # casefolded name -> key: injective even on case-insensitive disks
        self._reserved: dict[str, list[Any]] = {}  # casefolded name -> [key, writes in progress]
        self._dirty: set[str] = set()  # names renamed into place since the last good fsync of the directory
        self._unsynced: set[str] = set()  # names whose fsync (or the directory's) failed: unknown until written anew
        self._temp_counter = itertools.count(1)  # next() is atomic: prepare runs in several threads
        # Bytes written to temporary files and thrown away (a write dropped, made again because the value
        # changed meanwhile, or refused at its commit): disk I/O no spill counts; exported as a metric.
        # A lock: prepare counts too, without the engine's.
        self.discarded_bytes = 0
        self._discarded_lock = threading.Lock()
        # Crash consistency (see protect()): casefolded names the committed manifest references,
        # and the ones among them no key owns any more (name -> size), unlinked at the next protect().
        self._protected: set[str] = set()
        self._retained: dict[str, int] = {}
        self._foreign: set[str] = set()  # casefolded names a file this Chest did not write took: never used
        # Mapped loads: a file deleted or replaced while a loaded value maps it keeps its blocks until the
        # value is freed (spillkit.mapped counts the mappings): its bytes stay counted here until then.
        self._held: dict[FileId, int] = {}
        self._orphans: set[str] = set()  # files of deleted keys that could not be unlinked: retried
        self._spares = SparePool(path)  # deleted values' files, kept for later writes to reuse
        self._unpinned_reads: collections.deque[None] = collections.deque()  # reads whose file no pin marks
        self._shared_at_fork: set[str] = set()  # casefolded names of files a forked child may read: never reused
        # 0 in the process that made the store; in a forked child, names of its own (see _after_fork_in_child)
        self._attempt_base = 0
        _stores.add(self)

    def __contains__(self, key: object) -> bool:
        return key in self._names

    def count_discarded(self, nbytes: int) -> None:
        """Add ``nbytes`` written to a temporary file that was thrown away to :attr:`discarded_bytes`."""
        with self._discarded_lock:
            self.discarded_bytes += nbytes

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._names))

    def file_bytes(self, key: Hashable) -> int:
        """Bytes the key's file takes on disk (header included)."""
        return self._sizes[key]

    def filename(self, key: Hashable) -> str:
        """Full path of the key's file (the key must be stored)."""
        return os.path.join(self.path, self._names[key])

    def tag(self, key: Hashable) -> bytes | None:
        """The HMAC of the key's current file (None for a file adopted without one)."""
        return self._tags.get(key)

    def _name_for(self, key: Hashable) -> str:
        name = self._names.get(key)
        if name is not None and name.casefold() not in self._protected:
            return name
        attempt = self._attempt_base
        while True:
            name = candidate_name(key, attempt)
            folded = name.casefold()
            owner = self._owners.get(folded, _FREE)
            reserved = self._reserved.get(folded)
            if (
                (owner is _FREE or (_same_key(owner, key) and folded not in self._protected))
                and (reserved is None or _same_key(reserved[0], key))
                and folded not in self._protected
                and folded not in self._foreign
            ):
                return name
            attempt += 1

    def reserve(self, key: Hashable) -> str:
        """Choose the key's file name and hold it until :meth:`commit` or :meth:`discard`."""
        name = self._name_for(key)
        entry = self._reserved.setdefault(name.casefold(), [key, 0])
        entry[1] += 1
        return name

    def unreserve(self, name: str) -> None:
        """Release a name held by :meth:`reserve` when no write follows."""
        entry = self._reserved[name.casefold()]
        entry[1] -= 1
        if not entry[1]:
            del self._reserved[name.casefold()]

    def adopt(self, key: Hashable, name: str, size: int, tag: bytes | None = None) -> None:
        """Register a file that already exists (used when re-opening a directory)."""
        self._names[key] = name
        self._sizes[key] = size
        if tag is not None:
            self._tags[key] = tag
        self._owners[name.casefold()] = key
        self.total_bytes += size

    def has_copy(self, key: Hashable) -> bool:
        """True when the key has a file that can stand in for its value (not one :meth:`unsynced_keys` lists)."""
        name = self._names.get(key)
        return name is not None and name not in self._unsynced

    def unsynced_keys(self) -> list[Hashable]:
        """Keys whose file (or its name, by a failed fsync of the directory) failed an fsync, not written anew since."""
        if not self._unsynced:
            return []
        return [key for key, name in self._names.items() if name in self._unsynced]

    @property
    def retained(self) -> frozenset[str]:
        """Files kept only because the last committed manifest names them (no key owns them now)."""
        return frozenset(self._retained)

    def names(self) -> dict[Hashable, str]:
        """A copy of the key to file-name index."""
        return dict(self._names)


# A forked child's copy of a store shares its parent's files but not its bookkeeping: a delete
# or an overwrite there unlinked or replaced a file the parent still reads from. In the child,
# every file the parent made is treated as a committed manifest's: kept, and written around
# (copy-on-write). A child cannot flush (spillkit.persistence), so nothing ever unlinks them.
_stores: weakref.WeakSet[FileIndex] = weakref.WeakSet()


def _names_now(store: FileIndex) -> set[str]:
    # _owners, the names a commit in another thread is recording (it sets _names before _owners), and
    # the names reserved for writes under way (the parent's writer thread may still commit them)
    return {*store._owners, *(name.casefold() for name in list(store._names.values())), *list(store._reserved)}


def _after_fork_in_child() -> None:
    for store in list(_stores):
        store._discarded_lock = threading.Lock()  # the parent's writer thread may have held it (helper-108)
        store._protected.update(_names_now(store))
        # Names no process shares: the parent goes on naming keys as before (a key's first name is a
        # function of the key), so the child's file of a key would replace one the parent writes later.
        store._attempt_base = os.getpid() << 20


def _before_fork() -> None:  # the parent's side: the child may map any file there now, so none is reused
    for store in list(_stores):
        store._shared_at_fork.update(_names_now(store))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def _same_key(a: object, b: object) -> bool:
    # As a dict compares keys: identity, then == only for equal hashes. Two keys whose names collide
    # (same type and repr) are distinct to a dict if their hashes differ, and their __eq__ may even raise.
    return a is b or (hash(a) == hash(b) and a == b)
