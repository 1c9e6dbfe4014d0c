"""Warnings that wait for the end of an engine operation (see :mod:`spillkit.spares`).

A disk tier may meet a fault it recovers from (a spare file it cannot reuse or remove) in
the middle of an operation. Warned there, a warning turned into an error (``-W error``)
would stop the engine's bookkeeping half-way: a key deleted from the store but still
listed, a Chest closed before it was flushed. So the tier only notes the fault, per thread,
and the engine reports the notes once the operation is whole. ``waiting`` is a plain count,
so that the hot paths (a put, a delete) pay one attribute read when there is nothing to say.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

__all__ = ["NO_NOTES", "Notes", "reports_notes"]


class Notes(Protocol):
    """Where an engine's disk tier keeps its notes (a :class:`~spillkit.spares.SparePool`)."""

    waiting: int  # notes of any thread not reported yet (a hint: read without a lock)

    def report(self, *, hold_errors: bool = False) -> None:
        """Warn this thread's notes; with ``hold_errors``, one a filter makes an error stays for the next report."""


class _NoNotes:
    waiting = 0

    def report(self, *, hold_errors: bool = False) -> None:
        pass


NO_NOTES: Notes = _NoNotes()  # an engine whose tier notes nothing (replay's)


class _Reporting(Protocol):
    notes: Notes


F = TypeVar("F", bound=Callable[..., Any])


def reports_notes(method: F) -> F:
    """Once ``method`` (an engine operation off the hot path) has returned, warn what the disk tier noted."""

    @functools.wraps(method)
    def run(self: _Reporting, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        if self.notes.waiting:
            self.notes.report()
        return result

    return cast(F, run)
