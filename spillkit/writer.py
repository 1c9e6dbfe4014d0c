"""Write-behind: serialize and write evicted values on a background thread.

The engine hands a victim to the writer and returns; the value leaves the
policy's view at once but stays readable (and counted in ``in_flight_bytes``)
until its file is committed. The slow part, :meth:`DiskStore.prepare`
(pickling and writing a temporary file), runs without the engine's lock; the
commit (an ``os.replace`` and index updates) runs under it. A put or delete of
a key whose write is in flight cancels the write: its temporary file is
dropped at commit time, so no stale value can come back and no file is orphaned.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from .errors import WriterUnavailable

__all__ = ["BackgroundWriter", "PendingWrite"]


@dataclass(slots=True, eq=False)
class PendingWrite:
    """One value on its way to disk.

    ``evicting`` is True while the value is out of memory from the policy's
    point of view (its bytes in ``in_flight_bytes``); a read before the write
    completes takes it back into memory and clears the flag, and the write then
    only gives the resident value a file.
    """

    key: Hashable
    value: Any
    nbytes: int
    name: str
    evicting: bool = True


class BackgroundWriter:
    """A queue of pending writes and the one thread that drains it.

    The thread exists only while there is work: it starts on the first
    :meth:`submit` and exits when the queue is empty, so an idle or abandoned
    Chest leaves no thread behind. ``cap`` bounds the bytes of evicted values
    in flight; :meth:`wait_below` blocks callers (releasing the engine lock)
    until the writer catches up.

    Thread-safe: every method except the thread body is called with the
    engine's lock held, and the thread takes that lock around each commit.
    ``write`` (called without the lock) must not raise anything but an
    ``Exception``; ``finish`` is told of every outcome, failures included.
    """

    def __init__(
        self,
        lock: threading.RLock,
        write: Callable[[PendingWrite], Any],
        finish: Callable[[PendingWrite, Any, BaseException | None, float], None],
        cap: int | None,
        forked: Callable[[list[PendingWrite]], None] = lambda writes: None,
    ) -> None:
        self.cond = threading.Condition(lock)
        self._write = write
        self._finish = finish
        self._forked = forked  # told, in a forked child, of the writes its parent's thread took along
        self.fixed_cap = cap
        self.largest = 0  # the largest value handed over so far (the automatic cap is twice it)
        self.floor = 0  # the automatic cap's floor, set by the engine from its budget
        self.pending: dict[Hashable, PendingWrite] = {}  # the current write of each key
        self.in_flight_bytes = 0
        self._queue: deque[PendingWrite] = deque()
        self._thread: threading.Thread | None = None
        self._last_thread: threading.Thread | None = None  # for join(): it may still be returning
        self.failures = 0  # background writes that failed (the engine counts and warns)
        # Set (without the lock) when the Chest is gone and its directory about to go: every write not
        # finished is dropped at the thread's next step, unwarned, as if cancelled (see abandon_writes).
        self.abandoned = False
        _writers.add(self)

    @property
    def cap(self) -> int:
        """Bytes of evicted values allowed in flight before callers wait."""
        if self.fixed_cap is not None:
            return self.fixed_cap
        return max(2 * self.largest, self.floor)

    def submit(self, pending: PendingWrite) -> None:
        """Queue a write (lock held) and make sure the thread runs.

        ``RuntimeError`` when no thread can be started (a limit on threads or processes), with
        nothing queued: the caller writes the value itself. (A thread started here waits for the
        lock the caller holds before it looks at the queue.)
        """
        if self._thread is None:
            self._start()
        self.largest = max(self.largest, pending.nbytes)
        # Queued before it is pending: an interrupt between the two leaves a queued write that is not
        # current (the writer skips it), never a pending one no thread will run (helper-126: then
        # wait_for_writes returned with it still pending).
        self._queue.append(pending)
        self.pending[pending.key] = pending

    def _start(self) -> None:
        thread = threading.Thread(target=self._run, name="spillkit-writer", daemon=True)
        thread.start()  # first: a thread that failed to start must not count as running (drain would wait on it)
        self._thread = self._last_thread = thread

    def is_current(self, pending: PendingWrite) -> bool:
        """False once a put or delete of the key has cancelled this write."""
        return self.pending.get(pending.key) is pending

    def cancel(self, key: Hashable) -> PendingWrite | None:
        """Forget the key's write in flight (lock held); return it, or None."""
        pending = self.pending.pop(key, None)
        if pending is not None and pending.evicting:
            self.in_flight_bytes -= pending.nbytes
        return pending

    def _on_writer_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def wait_below(self, limit: int) -> None:
        """Block (lock released while waiting) until at most ``limit`` evicted bytes are in flight."""
        if self._on_writer_thread():
            return  # a listener called back from the writer: waiting for ourselves would hang
        while self.in_flight_bytes > limit and self._thread is not None:
            self.cond.wait()

    def drain(self) -> None:
        """Block until every queued write is done (lock held; released while waiting)."""
        if self._on_writer_thread():
            return
        while self._thread is not None:
            self.cond.wait()

    def join(self) -> None:
        """Wait for the thread to exit (call without the lock)."""
        thread = self._last_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _run(self) -> None:
        try:
            self._loop()  # returns having cleared _thread under the lock; then takes the lock no more
        except BaseException:  # however else the thread ends, the queued writes go on, in a new one
            with self.cond:
                try:
                    if self._thread is threading.current_thread():
                        self._thread = None
                        if self._queue:
                            try:
                                self._start()
                            except RuntimeError as error:  # no thread can start: each queued write fails
                                self._fail_queued(error)
                finally:
                    self.cond.notify_all()
            raise

    def _fail_queued(self, error: RuntimeError) -> None:
        # As a write the disk refused (not the value's fault: it stays spillable), finish()
        # takes each value back, counted and warned; nothing waits for it. A listener's BaseException
        # there is reported, and the rest still fail (else they would wait for a thread that never comes).
        failure = WriterUnavailable(f"no writer thread could start to write it ({error})")
        failure.__cause__ = error
        while self._queue:
            try:
                self._settle(self._queue.popleft(), None, failure, 0.0)
            except BaseException as caught:
                _report(caught)

    def _loop(self) -> None:
        cond = self.cond
        while True:
            with cond:
                if not self._queue:
                    self._thread = None
                    cond.notify_all()
                    return
                pending = self._queue.popleft()
            prepared: Any = None
            error: BaseException | None = None
            start = time.perf_counter()
            if self.is_current(pending) and not self.abandoned:  # a cancelled write is not worth serializing
                try:
                    prepared = self._write(pending)
                except BaseException as caught:  # even KeyboardInterrupt from a value's __reduce__: its write failed
                    error = caught
            seconds = time.perf_counter() - start
            with cond:
                self._settle(pending, prepared, error, seconds)
                cond.notify_all()

    def _settle(self, pending: PendingWrite, prepared: Any, error: BaseException | None, seconds: float) -> None:
        try:  # (lock held)
            self._finish(pending, prepared, error, seconds)
        except Exception as caught:
            # A listener, or a warnings filter set to "error": reported as a thread's error
            # would be, and the writer goes on (else every later flush would wait for it).
            _report(caught)

    def _after_fork_in_child(self) -> None:
        # A forked child has this writer's state but not its thread: the writes queued or under way
        # are the parent's (its thread finishes them there). Here they are forgotten, and the engine
        # takes their values back, so that nothing waits for a thread that is not there.
        if self._thread is None:
            return
        writes = list(self.pending.values())
        self._thread = self._last_thread = None
        self._queue.clear()
        self.pending.clear()
        self.in_flight_bytes = 0
        self._forked(writes)


def _report(caught: BaseException) -> None:
    """Report an error the writer thread goes on after, as an uncaught one in a thread would be."""
    threading.excepthook(threading.ExceptHookArgs((type(caught), caught, caught.__traceback__, None)))


_writers: weakref.WeakSet[BackgroundWriter] = weakref.WeakSet()


def _after_fork_in_child() -> None:  # one thread runs in the child; no engine operation was under way (forklocks)
    for writer in list(_writers):
        writer._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
