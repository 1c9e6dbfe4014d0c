"""An exclusive lock on a Chest's directory, held for as long as the Chest is open.

Two live Chests on one directory destroy each other's values: each takes the
other's unflushed spill files for a killed process's leftovers and removes
them, and each commits its own manifest over the other's. So a Chest takes
``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``<path>/.spillkit-lock`` before it
reads or changes anything else in the directory, and a second Chest on the
path, in this process or another, raises
:class:`~spillkit.errors.ChestLocked` having changed nothing.

``flock``, not ``fcntl.lockf`` (POSIX record locks): a flock lock belongs to
the open file description, so a second ``open()`` of the lock file conflicts
even in the same process, as two Chests in one process must. POSIX locks
belong to the process: they never conflict within it, and closing *any*
descriptor of the file drops them. Either kind is released by the kernel
when the holder dies however it dies (``SIGKILL``, the OOM killer), so a lock
file left behind never blocks: only a live holder does. The holder writes
its pid into the file (best effort) for the error message; while the file is
unlocked its contents mean nothing.

The file stays when a Chest closes: unlinking it would let one process lock
the old inode (opened just before) while another creates and locks a new one.
It is hidden (no key's file name starts with a dot), so a re-open's clean-up
(``reopen.remove_leftovers``, ``reopen.remove_unreferenced_segments``) leaves it
alone. ``drop()`` removes it with the directory while still holding it; a
Chest waiting to lock it then finds another inode, or none, under the name
and locks the one there now.

Forks. A forked child inherits the descriptor, and with it the lock (a flock
is shared by every descriptor of the open file description). The lock stays
the parent's: after ``os.fork()`` the child closes its copies (an
``os.register_at_fork`` hook), so a long-lived child (a multiprocessing pool
worker) never keeps the directory locked after its parent closed the Chest
or died, and a child that opens a Chest on the path gets ``ChestLocked``
like any other process. A child never unlocks (``LOCK_UN`` on a shared
description would unlock the parent); the parent unlocks explicitly before
closing, which frees a copy made by a fork that ran no hooks too. A forked
child's copy of the Chest is not the directory's owner (it never removes
it); if it goes on writing there after its parent died, nothing stops a new
Chest from opening the directory meanwhile.

The lock file can be unlinked by hand (taken for a stale one) while its
Chest is open; a second Chest would then create and lock a new file. So the
directory itself is locked too, the same way (``flock`` on a descriptor of
the directory, taken after the file's): a second Chest finds it held
whatever happened to the file. Where the file system refuses ``flock`` on a
directory, the file's lock alone serves.

Limits: the lock is only as good as ``flock`` on the file system (on NFS it
may be local to one machine, or emulated with POSIX locks). Without
``fcntl`` (Windows) nothing is locked.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref

from . import lockfiles
from .errors import ChestLocked  # noqa: F401 (raised by lockfiles.acquire; the example catches it)

__all__ = ["LOCK_NAME", "DirLock"]

LOCK_NAME = ".spillkit-lock"
_held: weakref.WeakSet[DirLock] = weakref.WeakSet()  # the fork hook closes the child's copies


class DirLock:
    """An exclusive ``flock`` on ``directory``'s lock file, taken at construction.

    Parameters
    ----------
    directory : str
        An existing directory; its lock file is created (0600) if missing.

    Raises
    ------
    ChestLocked
        Another open Chest (another open description of the file, in this
        process or another) holds the lock. Nothing was changed on disk.
    SpillError
        The lock file cannot be created or opened (a read-only directory, a
        symbolic link or something other than a file under its name), or the
        file system refuses ``flock``. Nothing was changed on disk.

    Notes
    -----
    Thread-safe: :meth:`release` may be called from several threads and is
    idempotent. In a forked child it does nothing (the child holds no lock).
    Garbage collection releases the lock too, and the kernel does when the
    process dies. Releasing never raises.

    Examples
    --------
    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> directory = tmp.name
    >>> lock = DirLock(directory)
    >>> try:
    ...     DirLock(directory)
    ... except ChestLocked as error:
    ...     error.pid == os.getpid()
    True
    >>> lock.release()
    >>> DirLock(directory).release()  # free again
    >>> tmp.cleanup()
    """

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self._pid = os.getpid()
        self._mutex = threading.Lock()
        self._fd, self._dir_fd = (-1, -1) if lockfiles.fcntl is None else lockfiles.acquire(directory, self.path)
        _held.add(self)

    @property
    def held(self) -> bool:
        """True while this process holds the lock through this object."""
        return self._fd >= 0

    @property
    def fd(self) -> int:
        """The lock file's descriptor while held, else -1."""
        return self._fd

    def release(self) -> None:
        """Unlock and close the file (idempotent; never raises; a no-op in a forked child)."""
        # All under the mutex, the descriptor forgotten last: a fork in between leaves the child a
        # descriptor its at-fork hook still sees and closes (forgotten first, the child would keep it).
        with self._mutex:
            if self._fd < 0:
                return
            for fd in (self._dir_fd, self._fd):
                if fd < 0:
                    continue
                if os.getpid() == self._pid:
                    # Explicit: a child forked without Python's hooks may still share the description.
                    with contextlib.suppress(OSError):
                        lockfiles.fcntl.flock(fd, lockfiles.fcntl.LOCK_UN)
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fd = self._dir_fd = -1

    def _forget_in_child(self) -> None:
        self._mutex = threading.Lock()  # another thread of the parent may have held it at the fork
        fds, self._fd, self._dir_fd = (self._fd, self._dir_fd), -1, -1
        for fd in fds:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)  # never LOCK_UN: the description, and the lock, are the parent's too

    def __del__(self) -> None:
        try:  # noqa: SIM105 (not contextlib: at interpreter exit module globals may already be None)
            self.release()
        except Exception:
            pass


def _after_fork_in_child() -> None:
    for lock in list(_held):
        lock._forget_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
