"""What the figures of :mod:`spillkit.plots` draw, picked from comparison rows.

The names of the reference rows (bounds and Belady-Size) and their legend
labels; the modes, traces and policies the rows hold; one policy's series of
(budget %, value) points; the checks every figure makes before drawing. No
matplotlib here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from .policies import policy_names

__all__ = ["BELADY", "FOO", "PFOO"]


FOO, PFOO, BELADY = "bound:foo", "bound:pfoo-l", "belady-size"
_REFERENCE_LABELS = {
    FOO: "FOO lower bound",
    PFOO: "PFOO-L bound (looser)",
    BELADY: "belady-size (clairvoyant replay)",
}


def _is_reference(row: dict[str, Any]) -> bool:
    policy = str(row["policy"])
    return policy.startswith("bound:") or policy == BELADY


def _modes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The replay modes of the policy rows, ``settled`` first (the dask integration's default)."""
    found = {str(r["mode"]) for r in rows if not _is_reference(r)}
    return sorted(found, key=lambda m: (m != "settled", m))


def _traces(rows: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(str(r["trace"]) for r in rows))


def _policies(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Policy names in registry order, then any others in order of appearance."""
    seen = list(dict.fromkeys(str(r["policy"]) for r in rows if not _is_reference(r)))
    known = [p for p in policy_names() if p in seen]
    return known + [p for p in seen if p not in known]


def _series(
    rows: Sequence[dict[str, Any]], trace: str, policy: str, mode: str | None, field: str, scale: float = 1.0
) -> tuple[list[float], list[float]]:
    """(budget % of peak, value / scale) pairs of one policy on one trace, sorted by budget."""
    points = sorted(
        (100.0 * float(r["budget_fraction"]), float(r[field]) / scale)
        for r in rows
        if r["trace"] == trace
        and r["policy"] == policy
        and (mode is None or r["mode"] == mode)
        and r.get(field) is not None
        and not _missing(r[field])
    )
    return [p[0] for p in points], [p[1] for p in points]


def _missing(value: Any) -> bool:
    return value == "" or (isinstance(value, float) and math.isnan(value))


def _check(rows: Sequence[dict[str, Any]], mode: str | None) -> str:
    if not rows:
        raise ValueError("no results to plot")
    modes = _modes(rows)
    if not modes:
        raise ValueError("no policy results to plot (only bounds)")
    if mode is None:
        return modes[0]
    if mode not in modes:
        raise ValueError(f"no results in mode {mode!r}; the rows have {modes}")
    return mode


def _largest(rows: Sequence[dict[str, Any]], trace: str, mode: str, fields: Sequence[str]) -> float:
    """The most bytes any drawn row of ``trace`` has in ``fields``: sets a panel's unit and height."""
    values = [
        float(r[f])
        for r in rows
        if r["trace"] == trace and (r["mode"] == mode or _is_reference(r))
        for f in fields
        if f in r and not _missing(r[f])
    ]
    return max(values, default=0.0)


def _peak(rows: Sequence[dict[str, Any]], trace: str) -> float | None:
    for r in rows:
        if r["trace"] == trace and float(r["budget_fraction"]) > 0:
            return float(r["budget"]) / float(r["budget_fraction"])
    return None


def _nearest(values: Iterable[float], target: float) -> float | None:
    values = list(values)
    return min(values, key=lambda v: (abs(v - target), v)) if values else None
