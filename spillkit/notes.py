"""Warnings that wait for the end of an engine operation (see :mod:`spillkit.spares`).

A disk tier may meet a fault it recovers from (a spare file it cannot reuse or remove) in
the middle of an operation. Warned there, a warning turned into an error (``-W error``)
would stop the engine's bookkeeping half-way: a key deleted from the store but still
listed, a Chest closed before it was flushed. So the tier only notes the fault, per thread,
and the engine calls ``report_notes`` once the operation is whole.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

__all__ = ["reports_notes"]


class _Reporting(Protocol):
    report_notes: Callable[[], None] | None


F = TypeVar("F", bound=Callable[..., Any])


def reports_notes(method: F) -> F:
    """Once ``method`` (an engine operation) has returned, warn what the disk tier noted meanwhile."""

    @functools.wraps(method)
    def run(self: _Reporting, *args: Any, **kwargs: Any) -> Any:
        result = method(self, *args, **kwargs)
        if self.report_notes is not None:
            self.report_notes()
        return result

    return cast(F, run)
