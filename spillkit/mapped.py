"""Loading a large spilled value by mapping its file copy-on-write, instead of reading it into new memory.

A read into a fresh buffer pays twice for every page: the kernel zero-fills the new
anonymous page, then copies the page cache into it. Mapping the file privately
(``MAP_PRIVATE``) shares the page-cache pages the write left behind: a load of
366 MiB of 8 MiB arrays took 39 ms mapped against 97 ms read, checksum and a pass
over the values included (``/tmp`` micro-measurement, session 6). A page is copied
only if the value is written to, and stays the process's own; the file never sees it.

Why not :class:`mmap.mmap`: before Python 3.13 it keeps a duplicate of the file
descriptor open for as long as the mapping lives, so a few thousand loaded values
would exhaust the process's descriptors. Here the region is mapped through libc and
unmapped when the last view of it (a numpy array built on it, say) is freed.

What a mapped value changes (documented on :class:`~spillkit.chest.Chest`):

* the record is checked (size, HMAC) when it is mapped, after its header and signed
  prefix (the pickle stream) were copied into the process's own pages
  (:func:`spillfile.privatize_prefix`), so that what runs code when unpickled is what
  was checked; a page the process has not written to stays the file's page, so someone
  else who writes into the file in place later changes the value (its array data: an index
  array changed so, pandas' categorical codes say, can make indexing read out of bounds),
  and one who truncates it makes the process fault (``SIGBUS``) when the value is read, as
  with ``numpy.memmap``: a mapped load trusts whoever can write the directory afterwards. spillkit itself never
  writes into a file a value maps: a deleted value's file is reused for a later write
  (:mod:`spillkit.spares`) only when no mapping of it is left in this process and none was
  alive when the process forked (:func:`may_be_mapped`);
* the file's disk space stays taken until the value is freed, even after its key is
  deleted (the directory entry goes at once); the store counts it on disk, and against
  ``available_disk``, until then.

How a store knows: every mapping it makes is *pinned* here (:func:`pin_file`, under the
store's lock, before the mapping exists) and unpinned just before its ``munmap``. The
pins are the process's, not one store's, so a Chest reopened on a directory still sees
the mappings of values loaded through the Chest closed before it.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import mmap
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from .tempdirs import remove_all

__all__ = [
    "DEFAULT_MAP_FROM",
    "FileId",
    "Once",
    "any_mapped",
    "is_mapped",
    "map_available",
    "map_file",
    "mapped_at_fork",
    "may_be_mapped",
    "pin_file",
    "remove_tree",
    "unlinked",
    "unpin_file",
]

FileId = tuple[int, int]  # (st_dev, st_ino): a file, whatever its name, while it exists

DEFAULT_MAP_FROM = 1 << 20  # a round figure, not a measured crossover: below it a load saves little


def _bind_libc() -> tuple[Any, Any] | None:
    if os.name != "posix" or not hasattr(mmap, "MAP_PRIVATE"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        mapper, unmapper = libc.mmap, libc.munmap
    except (OSError, AttributeError):  # pragma: no cover - a POSIX libc without mmap
        return None
    mapper.restype = ctypes.c_void_p
    # addr, length, prot, flags, fd, offset (off_t: a long on LP64, and on ILP32 without large-file support)
    mapper.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    unmapper.restype = ctypes.c_int
    unmapper.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return mapper, unmapper


_LIBC = _bind_libc()
_MAP_FAILED = ctypes.c_void_p(-1).value


def map_available() -> bool:
    """True where :func:`map_file` works (POSIX systems); elsewhere values are read."""
    return _LIBC is not None


def _unmap(unmapper: Any, address: int, size: int, on_unmap: Callable[[], object] | None) -> None:
    # Told first: once unmapped, the file's inode may be freed and its number given to a new file,
    # whose mapping must not be counted before this one's end.
    if on_unmap is not None:
        on_unmap()
    unmapper(address, size)


def map_file(fd: int, size: int, on_unmap: Callable[[], object] | None = None) -> memoryview:
    """Map the first ``size`` bytes of ``fd`` private and writable; return a byte view of them.

    The caller checks that the file holds at least ``size`` bytes (a page past the end
    of the file faults when touched). The descriptor may be closed at once. The region
    is unmapped when the returned view and everything built on it are freed, just after
    ``on_unmap()`` is called, in whichever thread frees it (it must not block or raise); a
    failure once the region is mapped unmaps it at once, the same way. Thread-safe. Raises
    ``OSError`` if the kernel refuses the mapping and ``RuntimeError`` where mapping is not
    available (see :func:`map_available`).
    """
    if _LIBC is None:
        raise RuntimeError("memory-mapped loads need a POSIX system")
    if size <= 0:
        raise ValueError(f"cannot map {size} bytes")
    mapper, unmapper = _LIBC
    address = mapper(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, fd, 0)
    if address is None or address == _MAP_FAILED:
        error = ctypes.get_errno()
        raise OSError(error, f"mmap of {size} bytes failed: {os.strerror(error)}")
    # Once: this function's failure path and the region's finalizer may both run it (a KeyboardInterrupt
    # landing after the finalizer was made: helper-126 saw a second munmap, of an address maybe given to
    # another mapping since, and the pin undone twice).
    release = Once(functools.partial(_unmap, unmapper, address, size, on_unmap))
    try:
        region = (ctypes.c_ubyte * size).from_address(address)
        unmap = weakref.finalize(region, release)
        # At exit, live values may still be read by other exit handlers; the kernel unmaps anyway.
        unmap.atexit = False
        view = memoryview(region).cast("B")
    except BaseException:
        release()
        raise
    return view


class Once:
    """``fn()`` the first time it is called, nothing after: an ``on_unmap`` both a caller's failure path
    and the mapping's finalizer may call (an interrupt just after :func:`map_file` returns leaves both)."""

    def __init__(self, fn: Callable[[], object]) -> None:
        self._fn: Callable[[], object] | None = fn

    def __call__(self) -> None:
        fn, self._fn = self._fn, None
        if fn is not None:
            fn()


# ---- which files this process maps ---------------------------------------------------------------
# Pins are counted under _pins_lock by pin_file and the queries. Unpins come from the finalizers of
# freed values, in any thread and at any allocation (the cyclic GC), even one made while that thread
# holds _pins_lock: so they only append to a deque (atomic, lock-free) that the next pin or query
# drains. A mapping's pin is counted before the mapping exists, so its unpin always finds it.
_pins_lock = threading.Lock()
_pins: dict[FileId, int] = {}
_unpinned: collections.deque[FileId] = collections.deque()


def _drain() -> None:  # _pins_lock held
    while _unpinned:
        file_id = _unpinned.popleft()
        left = _pins[file_id] - 1
        if left:
            _pins[file_id] = left
        else:
            del _pins[file_id]


def pin_file(file_id: FileId) -> None:
    """Count a mapping of ``file_id`` about to be made; :func:`unpin_file` undoes it. Thread-safe."""
    with _pins_lock:
        _drain()
        _pins[file_id] = _pins.get(file_id, 0) + 1


def unpin_file(file_id: FileId) -> None:
    """Undo one :func:`pin_file` of ``file_id`` (its mapping is about to go, or was never made). Never blocks."""
    _unpinned.append(file_id)


def is_mapped(file_id: FileId) -> bool:
    """True while some mapping of ``file_id`` is pinned in this process. Thread-safe."""
    with _pins_lock:
        _drain()
        return file_id in _pins


def may_be_mapped(file_id: FileId) -> bool:
    """True if ``file_id`` is mapped here now, or was when this process forked (a child may map it still)."""
    return file_id in _mapped_at_fork or is_mapped(file_id)


def any_mapped() -> bool:
    """True while any mapping is pinned in this process (lets a store skip a ``stat``). Thread-safe."""
    with _pins_lock:
        _drain()
        return bool(_pins)


# Files mapped when the process forked: the child shares those mappings, and a page it has not
# written to still shows the file, so the file must never be written into (reused) again.
_mapped_at_fork: set[FileId] = set()


def unlinked(file_id: FileId) -> None:
    """Forget that ``file_id`` was mapped at a fork: its last name is gone. Thread-safe.

    Its number can come back only for a new file, once no process maps the old one any more
    (a child's mapping keeps the inode alive), and a new file is no child's: it may be reused.
    Without this, a file that took the number of one mapped at some earlier fork was never
    kept as a spare, for the life of the process.
    """
    _mapped_at_fork.discard(file_id)


def mapped_at_fork(full: str) -> FileId | None:
    """The id of the file ``full`` if it has one name and was mapped at a fork (see :func:`unlinked`), else None."""
    if not _mapped_at_fork:
        return None
    try:
        info = os.stat(full, follow_symlinks=False)
    except OSError:
        return None
    file_id = (info.st_dev, info.st_ino)
    return file_id if info.st_nlink == 1 and file_id in _mapped_at_fork else None


def remove_tree(path: str, remove: Callable[[str], None] = remove_all) -> None:
    """``remove(path)`` (default :func:`~spillkit.tempdirs.remove_all`), then :func:`unlinked` for the files it
    removed that were mapped at a fork."""
    candidates: list[tuple[FileId, str]] = []
    inodes = {inode for _, inode in tuple(_mapped_at_fork)}
    if inodes:
        try:
            with os.scandir(path) as entries:  # readdir gives the inode: a stat only for a number mapped at a fork
                for entry in entries:
                    file_id = mapped_at_fork(entry.path) if entry.inode() in inodes else None
                    if file_id is not None:
                        candidates.append((file_id, entry.path))
        except OSError:
            pass  # forgets nothing: those numbers are merely never reused
    remove(path)
    for file_id, full in candidates:
        if not os.path.lexists(full):
            unlinked(file_id)


def _before_fork() -> None:
    # Held until the fork is done: a mapping another thread pins meanwhile is pinned after it.
    _pins_lock.acquire()
    _drain()
    _mapped_at_fork.update(_pins)


def _after_fork_in_parent() -> None:
    _pins_lock.release()


def _after_fork_in_child() -> None:
    global _pins_lock
    _pins_lock = threading.Lock()  # held by the parent's forking thread (and maybe another) at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
