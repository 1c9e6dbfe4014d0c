"""When a settled replay counts a value against the budget: settle points and pinned stretches.

Helpers of :class:`spillkit.bound_model._Model` for the settled variants of the
FOO bound (:mod:`spillkit.bounds`): a value put lets memory exceed the budget
until the replay next settles, and a pinned value (a running task's input) is
outside the budget from its pin until a settle after its unpin. In the strict
variants only the puts a trace marks deferred do so (:func:`deferral_points`). Pure functions
of a trace's requests; thread-safe; they raise nothing on a well-formed trace.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

__all__ = ["deferral_points", "merged_stretches", "pinned_stretches", "settle_points", "settles_from"]


def merged_stretches(stretches: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping ranges merged: each request in at most one (a value is taken out of a row once)."""
    merged: list[tuple[int, int]] = []
    for low, high in sorted(stretches):
        if merged and low <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def settles_from(requests: Sequence[tuple[Any, ...]], settle_after: list[int]) -> list[int]:
    """For each request index ``u`` (and ``n``), a request at or after ``u`` where a settled replay surely settles.

    With settle records, the first one from ``u``; without, replay settles before the first
    non-del request after a put, so: after the first put from ``u`` (``settle_after``, which is
    :func:`settle_points`). ``n`` when there is none.
    """
    n = len(requests)
    recorded = any(op[0] == "settle" for op in requests)
    settles = [n] * (n + 1)
    for index in range(n - 1, -1, -1):
        tag = requests[index][0]
        if (tag == "settle") if recorded else (tag == "put"):
            settles[index] = index if recorded else settle_after[index]
        else:
            settles[index] = settles[index + 1]
    return settles


def pinned_stretches(
    pins: Mapping[int, Sequence[tuple[str, Hashable]]], settle_at: list[int], n: int
) -> dict[Hashable, list[tuple[int, int]]]:
    """Per key, the request ranges ``[from, to)`` it is outside the budget: pinned, then until a settle counts it.

    ``pins`` as :meth:`spillkit.trace.Trace.pins` gives them (a change under index ``i`` comes before
    request ``i``); ``settle_at`` is :func:`settles_from`'s result.
    """
    counts: dict[Hashable, int] = {}
    began: dict[Hashable, int] = {}
    stretches: dict[Hashable, list[tuple[int, int]]] = {}
    for index in sorted(pins):
        for change, key in pins[index]:
            count = counts.get(key, 0)
            if change == "pin":
                counts[key] = count + 1
                if not count:
                    began[key] = index
            elif count:
                counts[key] = count - 1
                if count == 1:
                    end = settle_at[min(index, n)]
                    stretches.setdefault(key, []).append((began.pop(key), end))
    for key, start in began.items():  # never unpinned
        stretches.setdefault(key, []).append((start, n))
    return stretches


def settle_points(requests: Sequence[tuple[Any, ...]]) -> list[int]:
    """For each request index, the first later request from which a value put there counts (settled mode)."""
    n = len(requests)
    recorded = any(op[0] == "settle" for op in requests)
    first, following = [n] * n, n
    for index in range(n - 1, -1, -1):
        first[index] = following
        tag = requests[index][0]
        if (tag == "settle") if recorded else (tag != "del"):
            following = index
    return first


def deferral_points(requests: Sequence[tuple[Any, ...]]) -> list[int] | None:
    """Strict variant: for each request index, the first request from which a value put there counts.

    A put the trace marks deferred (``defer`` lines: the recorded Chest's ``deferred()`` blocks, which a
    strict replay follows) counts from the next settle; any other from itself. None without marks.
    """
    if not any(op[0] == "defer" for op in requests):
        return None
    n = len(requests)
    points, following = [n] * n, n
    for index in range(n - 1, -1, -1):
        points[index] = following
        if requests[index][0] == "settle":
            following = index
    deferred = False
    for index, op in enumerate(requests):
        if op[0] == "defer":
            deferred = op[3]
        if not deferred:
            points[index] = index
    return points
