"""A put of a value larger than the whole budget: straight to disk, or kept in memory if refused.

Such a value can never be resident within the budget, so the engine writes it
through to its disk tier at once instead of making room for it
(:func:`write_through`). When the write fails, what happens depends on the
engine: a deferred engine (dask's local scheduler, whose later tasks need the
value) keeps a value pickle refuses in memory, set aside; an engine that keeps
values the disk refuses (``keep_when_disk_full``: dask.distributed workers)
keeps those, passed over until a write succeeds; otherwise the put fails and
nothing is stored (:func:`put_over_budget`, :func:`admit_refused`).

These are functions of the engine, as those of :mod:`spillkit.transfers` are
(no object holding a reference back to it). None of this is on the hot path:
only values over the budget come here.

Thread-safety: call them with the engine's lock held; they take none.
Failures: :func:`put_over_budget` re-raises a write's error the engine does
not keep the value for, counted as a refused write; the error names the key
(in a note, or in its own message).

Examples
--------
>>> import tempfile
>>> from spillkit import Chest
>>> with tempfile.TemporaryDirectory() as tmp:
...     chest = Chest(path=tmp + "/c", available_memory=10, sizeof=lambda v: 20)
...     chest["big"] = [1]  # over the budget: written through, never resident
...     chest.stats.direct_writes, chest["big"], chest.stats.loads
...     chest.drop()
(1, [1], 1)
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from .errors import NOT_THE_VALUES_FAULT, ChangedWhileWritten, SpillError
from .events import GIVEN_COST, PUT
from .keys import describe_key
from .ledger import _MISSING
from .transfers import timed_write

if TYPE_CHECKING:
    from .engine import SpillEngine

__all__ = ["admit_refused", "put_over_budget", "write_through"]


def put_over_budget(
    engine: SpillEngine, key: Hashable, value: Any, nbytes: int, cost: float | None
) -> BaseException | None:
    """Write the value through; None when it is stored, or the error of a write the engine survives.

    A returned error means the put goes on and keeps the value in memory (:func:`admit_refused`).
    """
    hash(key)  # an unhashable key fails before a file is named after it
    try:
        write_through(engine, key, value, nbytes, cost)
    except Exception as error:
        # Deferred (dask, whose later tasks need it), a value that cannot be serialized stays in
        # memory, as smaller ones do when they are spilled; so does one the disk refuses, for an
        # engine that keeps such values (dask workers); otherwise the put fails.
        disk = isinstance(error, NOT_THE_VALUES_FAULT)
        if not (engine.keep_when_disk_full if disk else engine.deferred):
            engine._count_refused_write(error)  # a failed write, whatever its reason
            raise
        return error
    return None


def admit_refused(engine: SpillEngine, key: Hashable, value: Any, nbytes: int, refused: BaseException) -> None:
    """Hold a value whose write ``refused`` failed in memory, over the budget.

    One the disk refused is set aside and offered to the policy again once a write succeeds (a disk that
    works again may take it); one pickle refused is never offered.
    """
    if isinstance(refused, NOT_THE_VALUES_FAULT):  # kept until a write succeeds (keep_when_disk_full)
        engine._admit(key, value, nbytes)
        engine._set_aside(key, write_failed=True)
        why = "changed while it was written" if isinstance(refused, ChangedWhileWritten) else "disk refused it"
        engine._spill_failed(key, nbytes, refused, f"{why}; it stays in memory, over the budget")
    else:  # pickle refused it: the trace's "unwritable" line comes after the put's event (the caller's)
        engine._admit(key, value, nbytes, offer=False)
        engine._unspillable.add(key)
        engine.stats.unspillable += 1


def write_through(engine: SpillEngine, key: Hashable, value: Any, nbytes: int, cost: float | None) -> None:
    """Store a value larger than the budget straight on disk, replacing any value of the key."""
    try:
        written, seconds = timed_write(engine, key, value)
    except Exception as error:  # (counted by the put, which may keep the value in memory instead)
        if not isinstance(error, SpillError) or isinstance(error, ChangedWhileWritten):  # (others name the key)
            error.add_note(
                f"spillkit: value for key {describe_key(key)} ({nbytes} bytes) exceeds the memory "
                "budget and must go to disk; nothing was stored"
            )
        raise
    if key in engine._nbytes:
        resident = engine._pop_resident(key) is not _MISSING
        if not resident:  # (a ghost list's entry of it is no value's now: helper-108)
            engine.policy.forgotten(key)
        in_flight = engine._writer is not None and engine._writer.cancel(key)
        if not in_flight and not resident:
            engine._spilled_nbytes -= engine._nbytes[key]  # replaces a spilled value
    # Followed as a spilled value is: while the caller holds it, reads hand it back (changes and all,
    # written by a flush) instead of a second copy from disk (helper-96: get, pop and a reopen gave
    # the bytes of the put, where a dict gives the object changed since).
    engine._refs.remember(key, value)
    engine._nbytes[key] = nbytes
    engine._spilled_nbytes += nbytes
    if cost is None:
        engine._costs.pop(key, None)
    else:
        engine._costs[key] = cost
    engine.stats.puts += 1
    engine.stats.direct_writes += 1
    if engine.listeners:
        engine._emit(PUT, key, nbytes, written, seconds, detail="" if cost is None else GIVEN_COST)
