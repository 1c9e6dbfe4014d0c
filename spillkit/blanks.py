"""Empty files made ahead by a background thread, for the spills of large values to write into.

Why: creating a file is the costliest step of a spill here. On this machine's ext4 an
``open(O_CREAT)`` took 335-660 us of CPU, more than writing 1 MiB into the file (~215 us),
and threads that spill do not overlap it (session 14; 6 us on ``/dev/shm``). Made ahead
by a thread of their own, they cost the spilling thread little: bench_core's spill+load
of 200 x 1 MiB took 0.75x and 0.84x the time without them in two full runs at 704f59a
(its row without them, ``benchmarks/README.md``), and 0.95x and 0.91x in 15 pairs run
alternately in one process (two runs). Not all of the creations' cost: the thread's
creations and the spills' renames take the same directory's lock. A file system where creating files is
slow (a network one) should gain the same way; not measured.

What keeps this safe, as for the spares (:mod:`spillkit.spares`), which hand these out when
they have no spare to offer:

* a blank has a temporary name (``.tmp-<pid>-s<token>-b<n>``): a crash leaves it where
  re-opening a directory sweeps temporary files, and the write that takes it moves it into
  place with ``os.replace``, as it would a file of its own;
* the write opens it again without following links and checks it is the same regular file
  (:meth:`SparePool.open <spillkit.spares.SparePool.open>`);
* only :data:`AHEAD` are made per store, and only once a store has spilled a large value;
* closing the store waits for a file being made and removes them all, so a directory being
  removed never gets a file after its listing; a forked child forgets its parent's;
* a file the thread cannot make stops it making more for that store: the spill then makes
  its own file, as without blanks, and meets the error itself.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import threading
import weakref

from .mapped import FileId

__all__ = ["AHEAD", "BlankFiles"]

AHEAD = 2  # a spill takes one at a time; two cover the next spill while the thread makes a third
IDLE = 1.0  # seconds without a request after which the thread ends (the next request starts another)


class BlankFiles:
    """The empty files made ahead for one store's directory.

    Thread-safe: :meth:`take` runs in the spilling thread (or a write-behind writer), the
    files are made in the process's blank-making thread, :meth:`close` in the closing one.
    Never raises: a file that cannot be made is not offered.
    """

    def __init__(self, directory: str, prefix: str) -> None:
        self._directory = directory
        self._prefix = prefix  # the spare pool's: .tmp-<pid>-s<token>-
        self._counter = itertools.count(1)
        self._files: list[tuple[str, FileId]] = []
        # Re-entrant: the cyclic GC may run in the thread making a file and free a Chest whose finalizer
        # closes these same blanks (helper-91: with plain locks the thread, and the GC, hung for good).
        self._lock = threading.RLock()  # the list and the flags
        self._making = threading.RLock()  # held while a file is made: close, in another thread, waits for it
        self._closed = False
        self._failed = False  # a file could not be made: no more for this store
        self._queued = False  # the thread has been asked already
        self._pid = os.getpid()

    def take(self) -> tuple[str, FileId] | None:
        """A blank file's path and id, removed from those offered; or None. Asks for more."""
        with self._lock:
            blank = self._files.pop() if self._files else None
            ask = not (self._closed or self._failed or self._queued) and len(self._files) < AHEAD
            self._queued = self._queued or ask
        if ask and not _ask(self):
            with self._lock:
                self._failed = True
        return blank

    def make(self) -> None:
        """Make files until :data:`AHEAD` are offered (the blank-making thread)."""
        with self._making:
            with self._lock:
                self._queued = False
            while True:
                with self._lock:
                    if self._closed or self._failed or len(self._files) >= AHEAD or os.getpid() != self._pid:
                        return
                path = os.path.join(self._directory, f"{self._prefix}b{next(self._counter)}")
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                except OSError:
                    with self._lock:
                        self._failed = True
                    return
                try:
                    info = os.fstat(fd)
                except OSError:
                    info = None
                finally:
                    os.close(fd)
                blank = None if info is None else (path, (info.st_dev, info.st_ino))
                with self._lock:
                    kept = blank is not None and not self._closed  # (closed by a finalizer the GC ran here)
                    if blank is not None and kept:
                        self._files.append(blank)
                    self._failed = self._failed or blank is None
                if not kept:
                    _unlink(path)
                    return

    def clear(self) -> None:
        """Remove the files offered now (more are made at the next spill)."""
        with self._lock:
            files, self._files = self._files, []
        for path, _ in files:
            _unlink(path)

    def close(self) -> None:
        """Make no more files, waiting for one being made, and remove them all. Idempotent."""
        with self._making, self._lock:
            self._closed = True
        self.clear()

    def forget(self) -> None:
        """Drop every file without touching it and make no more (a forked child: they are the parent's)."""
        self._lock = threading.RLock()
        self._making = threading.RLock()  # maybe held by the parent's thread at the fork
        self._files = []
        self._closed = True

    def __len__(self) -> int:
        return len(self._files)


def _unlink(path: str) -> None:
    # Failing (gone with its directory, say), it is a temporary name: swept when the directory is reopened.
    with contextlib.suppress(OSError):
        os.unlink(path)


# One thread makes the files of every store in the process: a spill asks it, and goes on.
_requests: queue.SimpleQueue[weakref.ref[BlankFiles]] = queue.SimpleQueue()
_thread: threading.Thread | None = None
_thread_lock = threading.Lock()


def _ask(blanks: BlankFiles) -> bool:
    """Queue ``blanks`` for the thread, started if need be; False if no thread could start."""
    global _thread
    _requests.put(weakref.ref(blanks))
    with _thread_lock:
        if _thread is None or not _thread.is_alive():  # (alive: one that ended on an error is replaced)
            thread = threading.Thread(target=_serve, name="spillkit-blank-files", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # can't start new thread: spills make their own files
                return False
            _thread = thread
    return True


def _serve() -> None:
    global _thread
    while True:
        try:
            request = _requests.get(timeout=IDLE)
        except queue.Empty:
            with _thread_lock:  # a request put after this check finds no thread, and starts one
                if _requests.empty():
                    _thread = None
                    return
            continue
        blanks = request()
        if blanks is not None:
            blanks.make()
        del blanks  # not kept alive while the thread waits


def _after_fork_in_child() -> None:
    global _requests, _thread, _thread_lock
    _requests, _thread, _thread_lock = queue.SimpleQueue(), None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
