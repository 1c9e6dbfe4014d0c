"""Each policy's disk I/O reduction relative to LRU, per workload, at one budget: :func:`plot_reduction_vs_lru`.

Re-exported by :mod:`spillkit.plots`; :func:`_reductions` also tells
:func:`spillkit.plots.plot_all` whether there is a reduction to draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .plot_canvas import _WIDTH, _figure, _rc, _save, _style
from .plot_data import _REFERENCE_LABELS, BELADY, FOO, _check, _is_reference, _nearest, _policies, _traces
from .sizes import format_percent

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_reduction_vs_lru"]


_CUT = -50.0  # reduction plots cut bars below this (much worse than LRU) to keep the gains legible


def _reductions(
    rows: Sequence[dict[str, Any]], fraction: float, mode: str
) -> tuple[list[tuple[str, dict[str, float]]], list[float]]:
    """Per workload with LRU I/O near ``fraction``: each other row's reduction in % and the budget used."""
    bars: list[tuple[str, dict[str, float]]] = []  # (workload, policy -> reduction %)
    budgets: list[float] = []
    for trace in _traces(rows):
        mine = [r for r in rows if r["trace"] == trace and (r["mode"] == mode or _is_reference(r))]
        chosen = _nearest((float(r["budget_fraction"]) for r in mine), fraction)
        at = {str(r["policy"]): float(r["io_bytes"]) for r in mine if float(r["budget_fraction"]) == chosen}
        base = at.get("lru")
        if not base or chosen is None or len(at) < 2:  # no I/O to reduce, or nothing beside LRU to compare
            continue
        budgets.append(chosen)
        bars.append((trace, {p: 100.0 * (1.0 - io / base) for p, io in at.items() if p != "lru"}))
    return bars, budgets


def plot_reduction_vs_lru(
    rows: Sequence[dict[str, Any]], path: str, fraction: float = 0.25, mode: str | None = None
) -> Figure:
    """Each policy's disk I/O reduction relative to LRU, per workload, at one budget (default 25% of peak).

    A bar per policy and workload: ``1 - io / io_LRU`` in percent (above zero:
    less I/O than LRU; below: more). The black bar of each workload marks the
    FOO bound's reduction, the most any policy could achieve. The y axis ends
    a little below -50% (1.5 times LRU's I/O); bars past it are cut and labelled with their value. Workloads where LRU
    does no I/O at that budget are left out (there is nothing to reduce).

    Parameters
    ----------
    rows : sequence of dict
        Rows from :func:`spillkit.compare.compare` or :func:`read_rows`.
    path : str
        The PNG to write.
    fraction : float
        The budget, as a fraction of peak; each trace uses its nearest measured budget.
    mode : str, optional
        The replay mode to draw (default ``"settled"`` if present).

    Returns
    -------
    matplotlib.figure.Figure
        The figure: one axes, one bar container per policy (and one for the bound).
    """
    mode = _check(rows, mode)
    policies = [p for p in _policies([r for r in rows if r["mode"] == mode]) if p != "lru"]
    bars, budgets = _reductions(rows, fraction, mode)
    if not bars:
        raise ValueError(
            f"no workload with LRU results doing I/O near {format_percent(fraction)} of peak in {mode} mode"
        )
    extra = [p for p in (BELADY,) if any(p in b for _, b in bars)]
    series = policies + extra + ([FOO] if any(FOO in b for _, b in bars) else [])
    values = [v for _, b in bars for p, v in b.items() if p in series and not math.isnan(v)]
    bottom = max(_CUT, min(values, default=0.0)) - 8.0  # bars further down are cut here and labelled
    top = max([0.0, *values]) + 8.0
    with _rc():
        figure = _figure(_WIDTH, 5.0)
        ax = figure.subplots()
        width = 0.86 / max(len(series), 1)
        cut_labels = [0] * len(bars)  # per workload: cut bars' labels stack upwards (side by side, they overlapped)
        for index, policy in enumerate(series):
            xs = [i - 0.43 + width * (index + 0.5) for i in range(len(bars))]
            ys = [b.get(policy, math.nan) for _, b in bars]
            if policy == FOO:
                color, hatch, label = "black", None, _REFERENCE_LABELS[FOO] + ": best possible"
            elif policy == BELADY:
                color, hatch, label = "white", "////", _REFERENCE_LABELS[BELADY]
            else:
                color, hatch, label = _style(policy)[0], None, policy
            ax.bar(xs, [max(y, bottom) for y in ys], width=width, color=color, hatch=hatch,
                   edgecolor="black" if hatch else color, linewidth=0.6, label=label)  # fmt: skip
            for group, (x, y) in enumerate(zip(xs, ys, strict=True)):
                if y < bottom:
                    ax.annotate(f"{policy} {y:.0f}% (cut)", (x + width / 2, bottom), ha="left", va="bottom",
                                xytext=(2, 3 + 11 * cut_labels[group]), textcoords="offset points", fontsize=8,
                                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.5})  # fmt: skip
                    cut_labels[group] += 1
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylim(bottom, top)
        ax.set_xlim(-0.5, len(bars) - 0.5)
        ax.set_xticks(range(len(bars)))
        same = len({format_percent(b) for b in budgets}) == 1
        ax.set_xticklabels([name if same else f"{name}\n({format_percent(budget)})" for (name, _), budget in
                            zip(bars, budgets, strict=True)])  # fmt: skip
        ax.set_ylabel("I/O reduction vs LRU (%)\n(bytes written + read; higher is better)")
        ax.set_xlabel("workload")
        ax.grid(True, axis="y", alpha=0.3)
        figure.legend(loc="outside right upper", frameon=False)
        at_text = f"{format_percent(budgets[0])} of peak" if same else f"about {format_percent(fraction)} of peak"
        ax.set_title(f"Disk I/O saved relative to LRU at a budget of {at_text}, {mode} mode")
        _save(figure, path)
    return figure
