"""Solving the LP of :class:`spillkit.bound_model._Model`: exactly with HiGHS (FOO), or greedily (PFOO-L).

:func:`_solve` is :func:`spillkit.bounds.foo_lower_bound`'s solver (SciPy and
numpy are imported only when it runs); :func:`_greedy` is
:func:`spillkit.bounds.pfoo_lower_bound`'s, and :func:`_solve`'s fallback.
"Solving" in :mod:`spillkit.bounds`' module docstring says how the LP is posed.
"""

from __future__ import annotations

import bisect
import math

from .bound_model import _Model
from .extras import missing_extra

__all__: list[str] = []  # helpers of spillkit.bounds

_SLACK = 2e-7  # of the budget, taken off the LP's answer: twice the error seen from HiGHS's tolerances


def _solve(model: _Model, compress: bool = True) -> tuple[float, str]:
    """Solve the model's LP with HiGHS; return (I/O bytes, status)."""
    try:
        import numpy as np
        from scipy.optimize import linprog  # type: ignore[import-untyped]
        from scipy.sparse import coo_matrix  # type: ignore[import-untyped]
    except ImportError as error:  # pragma: no cover - exercised only without SciPy
        raise missing_extra("the FOO lower bound", "SciPy", "plot") from error
    budget = float(max(model.budget, 1))  # the unit of the scaled LP (a budget of 0 leaves only empty values)
    base = float(model.constant + sum(s for s, read in zip(model.sizes, model.reads, strict=True) if read))
    nx, nw = len(model.sizes), len(model.writes)
    if nx == 0:
        return base, "optimal"
    rows = model.rows(compress)
    nk = len(rows)
    if nk == 0:  # no moment where the values kept could overflow the budget: keep them all
        return float(model.constant), "optimal"
    sizes = np.asarray(model.sizes, dtype=float) / budget
    reads = np.asarray(model.reads, dtype=float)
    cost = np.concatenate([-sizes * reads, np.asarray(model.writes, dtype=float) / budget, np.zeros(nk)])
    # Flow rows: G_i - G_{i-1} - sum(entering/leaving terms since the previous kept row) = 0.
    eq_i, eq_j, eq_v = list(range(nk)), [nx + nw + i for i in range(nk)], [1.0] * nk
    eq_i += range(1, nk)
    eq_j += [nx + nw + i for i in range(nk - 1)]
    eq_v += [-1.0] * (nk - 1)
    if nk:
        for (row, variable), size in model.flow.items():
            if row <= rows[-1]:
                eq_i.append(bisect.bisect_left(rows, row))
                eq_j.append(variable)
                eq_v.append(-size / budget)
    total = nx + nw + nk
    a_eq = coo_matrix((eq_v, (eq_i, eq_j)), shape=(nk, total)).tocsr()
    # Writes: w_L + x_j >= 1, as -x_j - w_L <= -1.
    ub_i = [j for j in range(nx) for _ in (0, 1)]
    ub_j = [k for j in range(nx) for k in (j, nx + model.owner[j])]
    a_ub = coo_matrix(([-1.0] * (2 * nx), (ub_i, ub_j)), shape=(nx, total)).tocsr()
    upper = np.concatenate([np.ones(nx + nw), 1.0 - np.asarray([model.touched[r] for r in rows]) / budget])
    lower = np.concatenate([np.zeros(nx + nw), np.full(nk, -np.inf)])
    result = linprog(
        cost, A_ub=a_ub, b_ub=-np.ones(nx), A_eq=a_eq if nk else None, b_eq=np.zeros(nk) if nk else None,
        bounds=np.column_stack([lower, upper]), method="highs",
    )  # fmt: skip
    if result.status != 0:
        return _greedy(model), f"{result.message} (PFOO-L bound reported)"
    # From the solution itself, not base + fun * budget (base can be 1e10 and the answer 0: cancellation),
    # less what HiGHS's tolerances may have left out (about 1e-7 of the budget): a bound, never above.
    # Every run moves whole bytes, so the bound rounds up to the next integer and stays one.
    x = np.clip(result.x[:nx], 0.0, 1.0)
    w = np.clip(result.x[nx : nx + nw], 0.0, 1.0)
    io = model.constant + float(np.dot(np.asarray(model.sizes, dtype=float) * reads, 1.0 - x))
    io += float(np.dot(np.asarray(model.writes, dtype=float), w))
    return max(float(model.constant), float(math.ceil(io - _SLACK * budget))), "optimal"


def _greedy(model: _Model) -> float:
    """PFOO-L: one aggregate constraint, sum_j s_j * len_j * x_j <= B * n - sum_r t_r, solved greedily."""
    base = model.constant + sum(s for s, read in zip(model.sizes, model.reads, strict=True) if read) + sum(model.writes)
    lengths = model.lengths()
    carrier = [-1] * len(model.writes)  # the longest interval of each value carries its write
    for j, owner in enumerate(model.owner):
        if carrier[owner] < 0 or lengths[j] > lengths[carrier[owner]]:
            carrier[owner] = j
    items = []
    for j, size in enumerate(model.sizes):
        value = int(model.reads[j]) + int(carrier[model.owner[j]] == j and model.writes[model.owner[j]] > 0)
        if value:
            items.append((lengths[j] / value, size * value, size * lengths[j]))
    items.sort()
    room = float(model.budget) * model.n - sum(model.touched)
    saved = 0.0
    for _, value, weight in items:
        if weight <= room:
            room -= weight
            saved += value
        else:
            saved += value * room / weight
            break
    return max(0.0, base - saved)
