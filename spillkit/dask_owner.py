"""Which computation uses a :func:`~spillkit.dask.spilling` Chest, and where the others go.

Part of :mod:`spillkit.dask_loads`: :class:`ChestOwnership` is the base of
:class:`~spillkit.dask_loads.WorkerLoads`, the block's ``cache=``. One computation at
a time uses the Chest (its scheduling thread claims it); dask's local schedulers use
their cache only in their scheduling thread, so one that starts meanwhile (in another
thread, or nested in a task) is routed by its thread to a dict of its own. The block's
close of a Chest waits for the computation that has it.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any

from .extras import missing_extra

try:
    from dask.callbacks import Callback
except ImportError as error:  # (tests/test_extras.py)
    raise missing_extra("spillkit.dask", "dask", "dask") from error

from .chest import Chest
from .errors import SpillWarning

if TYPE_CHECKING:
    from .dask_loads import WorkerLoads

__all__ = ["ChestOwnership", "Run", "forget_ended"]


_TAKEN = "another computation is using this spilling() Chest; this one runs without it, in memory"
_HAND_PUT = "key(s) of this graph are already in the spilling() Chest; this computation runs without it, in memory"


class _Unshared(dict[Hashable, Any]):
    """The plain dict cache of a computation that cannot share the Chest (see :meth:`WorkerLoads.schedule`)."""


class ChestOwnership:
    """Who uses the Chest: its owner, threads routed to dicts of their own, and the close that waits.

    Thread-safe: claims and releases take a lock of their own; routing is by thread.
    """

    def __init__(self, chest: Chest) -> None:
        self.chest = chest
        self.active = True  # until the spilling() block that made this cache ends
        self.replaced: dict[str, Any] = {}  # the dask.config settings the block found (spillkit.dask)
        self._lock = threading.Lock()
        self._owner: int | None = None  # the thread whose computation uses the Chest (one at a time)
        self._scheduler: int | None = None  # the thread scheduling it, when it takes markers
        self._private: dict[int, list[_Unshared]] = {}  # scheduling threads routed to dicts of their own
        # schedule() decided for the next computation of this thread: it claimed the Chest for it
        # ("scheduled"), or gave it a dict of its own ("declined"); ChestCallback takes the word.
        self._handoff: tuple[int, str] | None = None
        self._nested: dict[int, _Unshared] = {}  # computations started without ChestCallback, see _mapping
        self._close: Callable[[], None] | None = None  # the block's close of its Chest, once no computation has it

    def claim(self) -> bool:
        """Let this thread's computation use the Chest if no computation does (nor one it is nested in)."""
        with self._lock:
            if self._owner is not None:
                return False
            self._owner = threading.get_ident()
            self._nested.pop(self._owner, None)  # this thread's computations without callbacks are over
            return True

    def take_handoff(self) -> str | None:
        """What :meth:`schedule` decided for this thread's computation starting now, once (ChestCallback asks)."""
        handoff = self._handoff
        if handoff is not None and handoff[0] == threading.get_ident():
            self._handoff = None
            return handoff[1]
        return None

    def owns(self) -> bool:
        """True on the thread whose computation uses the Chest."""
        return self._owner == threading.get_ident()

    def release(self) -> None:
        """End this thread's use of the Chest (it stops handing out markers too)."""
        with self._lock:
            if self._owner == threading.get_ident():
                self._owner = self._scheduler = None

    def close_when_free(self, close: Callable[[], None]) -> None:
        """Run ``close`` (the ended block's close of its Chest) now, or once no computation has the Chest.

        A computation in another thread may have it when the block ends (``dask.config`` is the
        process's): closed under it, its next put or read would fail.
        """
        with self._lock:
            self._close = close
        self.close_if_due()

    def close_if_due(self) -> None:
        """Run the close :meth:`close_when_free` was given, if no computation has the Chest now."""
        with self._lock:
            close, self._close = (self._close, None) if self._owner is None else (None, self._close)
        if close is None:
            return
        try:
            close()
        except Exception as error:  # not the error of the computation that happened to end last
            warnings.warn(f"closing the spilling() Chest once its block had ended failed: {error!r}",
                          SpillWarning, stacklevel=2)  # fmt: skip

    def go_private(self) -> None:
        """Route this thread's cache use to a new dict of its own, until :meth:`end_private`."""
        self._private.setdefault(threading.get_ident(), []).append(_Unshared())

    def end_private(self) -> _Unshared:
        """Stop routing this thread to its newest dict, and return that dict (the computation keeps it)."""
        stack = self._private[threading.get_ident()]
        private = stack.pop()
        if not stack:
            del self._private[threading.get_ident()]
        return private

    def warn_if_hand_put(self, dsk: Mapping[Any, Any], stacklevel: int) -> bool:
        """Warn (and return True) when keys the graph computes are in the Chest, put there by hand.

        dask's local scheduler would take them for computed: the computation must run without the Chest.
        """
        found = sum(1 for key in dsk if key in self.chest)
        if found:
            warnings.warn(f"{found} {_HAND_PUT}", RuntimeWarning, stacklevel=stacklevel)
        return found > 0

    def role_for(self, dsk: Mapping[Any, Any]) -> str:
        """How the computation of ``dsk`` starting in this thread uses the Chest (ChestCallback asks).

        "scheduled" or "declined" (:meth:`WorkerLoads.schedule` decided), "shared" (this thread's
        computation has it), "claimed" (it takes it), or "private" (a dict of its own, warned).
        """
        # dask's local schedulers use their cache only in their scheduling thread, so routing by
        # thread keeps a computation that cannot have the Chest (another one, in another thread
        # or one it is nested in, has it) from deleting that one's keys under it.
        decided = self.take_handoff()  # by WorkerLoads.schedule, which runs this computation
        if decided is not None:
            return decided
        if self.owns():  # this thread's computation has it: this is a second callback on the Chest
            return "shared"  # (a computation nested in a task runs no callbacks at all)
        if self.claim():  # a scheduler= of its own: it takes the Chest
            if not self.warn_if_hand_put(dsk, stacklevel=5):
                return "claimed"
            self.release()
            self.go_private()
            return "private"
        self.go_private()
        warnings.warn(_TAKEN, RuntimeWarning, stacklevel=4)
        return "private"


@dataclasses.dataclass
class Run:
    """How one computation under way uses the Chest, as one ChestCallback sees it.

    ``role``: "scheduled" (by WorkerLoads.schedule), "claimed" (a scheduler= of its own took the
    Chest), "shared" (another callback's computation has it), "private" / "own dict" (it found the
    Chest taken: a dict of its own), "plain" (not spilling()'s cache).
    """

    role: str
    cache: WorkerLoads | None
    graph: Any = None  # the graph dask passes to every hook of this computation: how _finish finds its run
    deferred: bool = False  # this callback counts one deferral of the Chest for it
    data: tuple[Hashable, ...] = ()  # the graph's literal data, pinned for it
    inputs: dict[Hashable, tuple[Hashable, ...]] = dataclasses.field(default_factory=dict)  # running task: its pins
    stores: list[Hashable] = dataclasses.field(default_factory=list)  # partd stores, pinned until it ends


def forget_ended(kind: type[Any]) -> None:
    """Take the ended blocks' callbacks of class ``kind`` out of ``Callback.active``.

    dask's ``local_callbacks`` put them back: a computation in another thread that outlived a block
    puts back, when it ends, the set it found, with that block's callback in it. Such a callback takes
    no computation on, but it holds its closed Chest, and each block in a long-running program would
    leave one more. The set is copied in one C call (other threads add to and take from it: iterated
    in Python it could change meanwhile, helper-108), and each ended callback is discarded from it, as
    dask's own ``add_callbacks`` does; replacing the set could lose a callback another thread adds.
    """
    for hooks in tuple(Callback.active):
        owner = getattr(hooks[0] if hooks else None, "__self__", None)
        if isinstance(owner, kind) and owner._over:
            Callback.active.discard(hooks)
