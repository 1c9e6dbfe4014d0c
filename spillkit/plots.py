"""Figures of a policy comparison: I/O against budget beside the lower bound, reductions relative to LRU, timelines.

Every function takes the rows :func:`spillkit.compare.compare` returns (or
:func:`read_rows` of a CSV written by :func:`spillkit.compare.write_csv`),
writes one PNG and returns the matplotlib ``Figure`` it drew, so callers and
tests can inspect its axes and lines. matplotlib is imported only when a
figure is drawn, and drawn on its Agg canvas (no window, no global pyplot
state); without it these functions raise ``ImportError`` naming the extra to
install.

Which quantity is drawn beside the bound matters: the FOO and PFOO-L bounds
bound the *total* disk I/O of a budget (bytes written plus bytes read back),
not the bytes read alone, so :func:`plot_loads_vs_budget` draws every policy's
written + read bytes on the same axis as the bounds, and
:func:`plot_io_vs_budget` splits that total into its two parts (without a
bound, since none bounds either part alone).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .compare import COLUMNS, _name
from .policies import policy_names
from .replay import replay
from .sizes import format_bytes
from .trace import Trace, read_trace

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "REQUIRED_COLUMNS",
    "plot_all",
    "plot_command",
    "plot_io_vs_budget",
    "plot_loads_vs_budget",
    "plot_reduction_vs_lru",
    "plot_timeline",
    "read_rows",
]

#: Columns a results CSV must have for :func:`read_rows` (the ones the figures use).
REQUIRED_COLUMNS = ("trace", "budget", "budget_fraction", "mode", "policy", "bytes_written", "bytes_read", "io_bytes")

_TEXT_COLUMNS = frozenset({"trace", "mode", "policy"})
_FLOAT_COLUMNS = frozenset(
    {"budget_fraction", "io_seconds", "recompute_seconds", "ratio_to_bound", "replay_seconds", "solve_seconds"}
)

FOO, PFOO, BELADY = "bound:foo", "bound:pfoo-l", "belady-size"
_REFERENCE_LABELS = {
    FOO: "FOO lower bound",
    PFOO: "PFOO-L bound (looser)",
    BELADY: "belady-size (clairvoyant replay)",
}

_WIDTH = 10.0  # inches; at 100 dpi a figure is 1000 px wide, still legible shrunk to a README's ~800 px
_DPI = 100
_FONT = {
    "font.size": 10,
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "legend.fontsize": 9.5,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "figure.titlesize": 13,
}

# A fixed look per policy, the same in every figure.
_STYLE: dict[str, tuple[str, str]] = {
    "lru": ("#1f77b4", "o"),
    "lfu": ("#ff7f0e", "v"),
    "size": ("#2ca02c", "s"),
    "cost": ("#d62728", "^"),
    "nextuse": ("#9467bd", "D"),
    "lrc": ("#8c564b", "P"),
    "fifo": ("#e377c2", "X"),
    "sieve": ("#7f7f7f", "<"),
    "s3fifo": ("#bcbd22", ">"),
    "arc": ("#17becf", "h"),
    "cachey": ("#393b79", "*"),
}
_BUILT_IN = len(_STYLE)
_SPARE = ["#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1"]
_SPARE_MARKERS = "ov^sDPX<>h*p"


def _import_matplotlib() -> Any:
    """Import matplotlib (lazily) or say which extra provides it."""
    try:
        import matplotlib
        from matplotlib.backends import backend_agg  # noqa: F401 - the canvas every figure here draws on
    except ImportError as error:
        raise ImportError(
            'spillkit\'s plots need matplotlib, which is not installed: pip install "spillkit[plot]"'
        ) from error
    return matplotlib


def _figure(width: float, height: float) -> Figure:
    """A new Figure on an Agg canvas (touches neither pyplot nor the user's backend)."""
    _import_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str) -> None:
    """Write ``figure`` as a PNG, reduced to a 256-colour palette (a third of the bytes, no visible change)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buffer = io.BytesIO()
    figure.savefig(buffer, dpi=_DPI, format="png")
    try:
        from PIL import Image  # a dependency of matplotlib
    except ImportError:  # pragma: no cover - matplotlib requires Pillow
        with open(path, "wb") as file:
            file.write(buffer.getvalue())
        return
    buffer.seek(0)
    with Image.open(buffer) as image:
        image.convert("RGB").quantize(256).save(path, format="PNG", optimize=True)


def _style(policy: str) -> tuple[str, str]:
    if policy not in _STYLE:
        index = len(_STYLE) - _BUILT_IN
        _STYLE[policy] = (_SPARE[index % len(_SPARE)], _SPARE_MARKERS[index % len(_SPARE_MARKERS)])
    return _STYLE[policy]


def _is_reference(row: dict[str, Any]) -> bool:
    policy = str(row["policy"])
    return policy.startswith("bound:") or policy == BELADY


def _unit(largest: float) -> tuple[float, str]:
    """The binary unit that shows ``largest`` bytes with one to four digits."""
    for factor, name in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if largest >= factor:
            return float(factor), name
    return 1.0, "bytes"


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


def _plot_policies(
    ax: Any,
    rows: Sequence[dict[str, Any]],
    trace: str,
    policies: Sequence[str],
    mode: str,
    field: str,
    factor: float,
    handles: dict[str, Any],
    markersize: float,
    linewidth: float,
) -> list[float]:
    """Draw each policy's ``field`` line on ``ax`` (first line of a policy kept in ``handles``); return the x values."""
    fractions: list[float] = []
    for policy in policies:
        xs, ys = _series(rows, trace, policy, mode, field, factor)
        if not xs:
            continue
        color, marker = _style(policy)
        (line,) = ax.plot(xs, ys, color=color, marker=marker, markersize=markersize, linewidth=linewidth, label=policy)
        handles.setdefault(policy, line)
        fractions += xs
    return fractions


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


def _percent_axis(ax: Axes, fractions: Iterable[float]) -> None:
    """A log x axis of budgets in % of peak, ticked at the budgets measured."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ticks = sorted(set(fractions))
    ax.set_xscale("log")
    if ticks:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}%"))
        ax.set_xlim(ticks[0] / 1.25, ticks[-1] * 1.25)


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


def _bytes_axis(ax: Axes, largest: float, unit: str, what: str) -> None:
    """A linear y axis from zero up to ``largest`` (already in ``unit``), labelled ``what (unit)``."""
    ax.set_ylim(0, largest * 1.08 if largest > 0 else 1)
    ax.set_ylabel(f"{what} ({unit})")


def _short_bytes(nbytes: float) -> str:
    """``"184 MiB"``, ``"2.98 GiB"``: three significant digits."""
    factor, unit = _unit(nbytes)
    return f"{nbytes / factor:.3g} {unit}"


def _peak(rows: Sequence[dict[str, Any]], trace: str) -> float | None:
    for r in rows:
        if r["trace"] == trace and float(r["budget_fraction"]) > 0:
            return float(r["budget"]) / float(r["budget_fraction"])
    return None


def _grid(count: int, columns: int) -> tuple[int, int]:
    columns = max(1, min(columns, count))
    return math.ceil(count / columns), columns


def plot_loads_vs_budget(
    rows: Sequence[dict[str, Any]], path: str, mode: str | None = None, columns: int = 3
) -> Figure:
    """Disk I/O the loads cost (bytes written + read back) against the budget, beside the lower bounds.

    One panel per trace, budget in % of the trace's peak on a log x axis, one
    line per policy. The FOO bound bounds the *sum* of bytes written and read
    (no policy can do less total I/O), so that sum is what every policy shows
    here; the grey area under the bound is out of any policy's reach.
    PFOO-L and clairvoyant Belady-Size are drawn when the rows have them.

    Parameters
    ----------
    rows : sequence of dict
        Rows from :func:`spillkit.compare.compare` or :func:`read_rows`.
    path : str
        The PNG to write (its directory is created).
    mode : str, optional
        The replay mode to draw (default ``"settled"`` if present, else the first).
    columns : int
        Panels per row of the grid.

    Returns
    -------
    matplotlib.figure.Figure
        The figure drawn: one axes per trace (and one for the legend when the
        grid has a spare cell), one line per policy and per reference row.
    """
    mode = _check(rows, mode)
    traces = _traces(rows)
    policies = _policies([r for r in rows if r["mode"] == mode])
    nrows, ncols = _grid(len(traces), columns)
    with _rc():
        figure = _figure(_WIDTH, 0.6 + 2.6 * nrows + (0 if nrows * ncols > len(traces) else 0.7))
        grid = figure.add_gridspec(nrows, ncols)
        axes = [figure.add_subplot(grid[i // ncols, i % ncols]) for i in range(len(traces))]
        handles: dict[str, Any] = {}
        for index, trace in enumerate(traces):
            ax = axes[index]
            largest = _largest(rows, trace, mode, ["io_bytes"])
            factor, unit = _unit(largest)
            fractions: list[float] = []
            fractions += _plot_policies(ax, rows, trace, policies, mode, "io_bytes", factor, handles, 5, 1.4)
            xs, ys = _series(rows, trace, FOO, None, "io_bytes", factor)
            if xs:
                (line,) = ax.plot(xs, ys, color="black", linewidth=2.4, label=_REFERENCE_LABELS[FOO])
                fill = ax.fill_between(xs, 0, ys, color="0.85", zorder=0, label="below the FOO bound: unreachable")
                handles.setdefault(FOO, line)
                handles.setdefault("unreachable", fill)
                fractions += xs
            for reference, style in ((PFOO, "--"), (BELADY, ":")):
                xs, ys = _series(rows, trace, reference, None, "io_bytes", factor)
                if xs:
                    (line,) = ax.plot(xs, ys, color="black", linestyle=style, linewidth=1.6,
                                      marker="x" if reference == BELADY else None,
                                      label=_REFERENCE_LABELS[reference])  # fmt: skip
                    handles.setdefault(reference, line)
            _percent_axis(ax, fractions)
            _bytes_axis(ax, largest / factor, unit, "written + read")
            peak = _peak(rows, trace)
            ax.set_title(f"{trace} (peak {_short_bytes(peak)})" if peak else trace)
            ax.grid(True, alpha=0.3)
            if index // ncols == nrows - 1 or index + ncols >= len(traces):
                ax.set_xlabel("budget (% of peak)")
        labels = [h.get_label() for h in handles.values()]
        if len(traces) < nrows * ncols:  # the legend fills the last row's spare cells
            spare = figure.add_subplot(grid[nrows - 1, len(traces) % ncols :])
            spare.set_axis_off()
            spare.legend(list(handles.values()), labels, loc="center", frameon=False,
                         ncols=max(1, 3 * (ncols - len(traces) % ncols) // 2))  # fmt: skip
        else:
            figure.legend(list(handles.values()), labels, loc="outside lower center", ncols=min(len(labels), 6),
                          frameon=False)  # fmt: skip
        figure.suptitle(f"Disk I/O (bytes written + read back) vs memory budget, {mode} mode")
        _save(figure, path)
    return figure


def _rc() -> Any:
    matplotlib = _import_matplotlib()
    return matplotlib.rc_context(_FONT)


def plot_io_vs_budget(rows: Sequence[dict[str, Any]], path: str, mode: str | None = None) -> Figure:
    """Bytes written to disk and bytes read back against the budget: a row of two panels per trace.

    The left panel of each row is bytes written (spills), the right bytes read
    (loads), on one shared y axis so the two compare directly. No bound is
    drawn: the FOO bound is on their sum (see :func:`plot_loads_vs_budget`).
    Belady-Size is drawn when the rows have its byte counts.

    Parameters
    ----------
    rows : sequence of dict
        Rows from :func:`spillkit.compare.compare` or :func:`read_rows`.
    path : str
        The PNG to write.
    mode : str, optional
        The replay mode to draw (default ``"settled"`` if present).

    Returns
    -------
    matplotlib.figure.Figure
        The figure: ``2 * traces`` axes, one line per policy in each.
    """
    mode = _check(rows, mode)
    traces = _traces(rows)
    policies = _policies([r for r in rows if r["mode"] == mode])
    with _rc():
        figure = _figure(_WIDTH, 1.2 + 2.0 * len(traces))
        axes = figure.subplots(len(traces), 2, squeeze=False, sharex=True)
        handles: dict[str, Any] = {}
        for row_index, trace in enumerate(traces):
            largest = _largest(rows, trace, mode, ["bytes_written", "bytes_read"])
            factor, unit = _unit(largest)
            fractions: list[float] = []
            for column, (field, what) in enumerate((("bytes_written", "written"), ("bytes_read", "read"))):
                ax = axes[row_index][column]
                fractions += _plot_policies(ax, rows, trace, policies, mode, field, factor, handles, 4.5, 1.3)
                xs, ys = _series(rows, trace, BELADY, None, field, factor)
                if xs:
                    (line,) = ax.plot(xs, ys, color="black", linestyle=":", marker="x", linewidth=1.6,
                                      label=_REFERENCE_LABELS[BELADY])  # fmt: skip
                    handles.setdefault(BELADY, line)
                ax.grid(True, alpha=0.3)
                ax.set_title(f"{trace}: bytes {what}")
            for ax, what in zip(axes[row_index], ("written", "read"), strict=True):
                _percent_axis(ax, fractions)
                _bytes_axis(ax, largest / factor, unit, what)
        for ax in axes[-1]:
            ax.set_xlabel("budget (% of peak)")
        figure.legend(list(handles.values()), [h.get_label() for h in handles.values()],
                      loc="outside lower center", ncols=min(len(handles), 6), frameon=False)  # fmt: skip
        figure.suptitle(f"Bytes written (spilled) and read back (loaded) vs budget, {mode} mode")
        _save(figure, path)
    return figure


def _nearest(values: Iterable[float], target: float) -> float | None:
    values = list(values)
    return min(values, key=lambda v: (abs(v - target), v)) if values else None


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
        raise ValueError(f"no workload with LRU results doing I/O near {fraction:.0%} of peak in {mode} mode")
    extra = [p for p in (BELADY,) if any(p in b for _, b in bars)]
    series = policies + extra + ([FOO] if any(FOO in b for _, b in bars) else [])
    values = [v for _, b in bars for p, v in b.items() if p in series and not math.isnan(v)]
    bottom = max(_CUT, min(values, default=0.0)) - 8.0  # bars further down are cut here and labelled
    top = max([0.0, *values]) + 8.0
    with _rc():
        figure = _figure(_WIDTH, 5.0)
        ax = figure.subplots()
        width = 0.86 / max(len(series), 1)
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
            for x, y in zip(xs, ys, strict=True):
                if y < bottom:
                    ax.annotate(f"{y:.0f}% (cut)", (x + width / 2, bottom), xytext=(2, 3), textcoords="offset points",
                                ha="left", va="bottom", fontsize=8)  # fmt: skip
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylim(bottom, top)
        ax.set_xlim(-0.5, len(bars) - 0.5)
        ax.set_xticks(range(len(bars)))
        same = len({f"{b:.0%}" for b in budgets}) == 1
        ax.set_xticklabels([name if same else f"{name}\n({budget:.0%})" for (name, _), budget in
                            zip(bars, budgets, strict=True)])  # fmt: skip
        ax.set_ylabel("I/O reduction vs LRU (%)\n(bytes written + read; higher is better)")
        ax.set_xlabel("workload")
        ax.grid(True, axis="y", alpha=0.3)
        figure.legend(loc="outside right upper", frameon=False)
        at_text = f"{budgets[0]:.0%} of peak" if same else f"about {fraction:.0%} of peak"
        ax.set_title(f"Disk I/O saved relative to LRU at a budget of {at_text}, {mode} mode")
        _save(figure, path)
    return figure


def _budget_bytes(trace: Trace, budget: int | str) -> int:
    if isinstance(budget, str) and budget.strip().endswith("%"):
        return int(trace.peak_bytes() * float(budget.strip()[:-1]) / 100)
    from .sizes import parse_bytes

    return parse_bytes(budget)


def plot_timeline(
    trace: Trace | str,
    policy: str | Sequence[str],
    budget: int | str,
    path: str,
    mode: str = "settled",
) -> Figure:
    """Memory and disk bytes over one replayed run, with every spill and load marked.

    Replays ``trace`` with ``policy`` at ``budget`` (bytes, a size such as
    ``"1 GiB"``, or ``"25%"`` of the trace's peak) and draws the bytes resident
    in memory and on disk after every request; beneath, a strip marks each
    spill (a write), each eviction of a value already on disk (no write) and
    each load. Several policies give one such pair of panels each, on shared axes.

    Parameters
    ----------
    trace : Trace or str
        A trace, or the path of a trace file.
    policy : str or sequence of str
        A registered policy name, or several to draw one above the other.
    budget : int or str
        The memory budget.
    path : str
        The PNG to write.
    mode : str
        The replay mode (``"settled"``, ``"strict"`` or ``"dead-skip"``).

    Returns
    -------
    matplotlib.figure.Figure
        The figure: per policy, a bytes axes (memory, disk and budget lines)
        and a marker axes (one line of markers per decision kind that occurs).
    """
    loaded = trace if isinstance(trace, Trace) else read_trace(trace)
    name = _name(trace)
    names = [policy] if isinstance(policy, str) else list(policy)
    if not names:
        raise ValueError("give at least one policy")
    limit = _budget_bytes(loaded, budget)
    peak = loaded.peak_bytes()
    results = [replay(loaded, p, limit, mode=mode, timeline=True) for p in names]
    largest = max([limit] + [max(m, d) for r in results for _, m, d in r.timeline])
    factor, unit = _unit(largest)
    with _rc():
        figure = _figure(_WIDTH, 0.8 + 3.4 * len(names))
        axes = figure.subplots(2 * len(names), 1, sharex=True, squeeze=False,
                               gridspec_kw={"height_ratios": [3.0, 1.0] * len(names)})  # fmt: skip
        for index, result in enumerate(results):
            top, strip = axes[2 * index][0], axes[2 * index + 1][0]
            steps = [t[0] for t in result.timeline]
            top.plot(steps, [t[1] / factor for t in result.timeline], color="#1f77b4", linewidth=1.2,
                     drawstyle="steps-post", label="in memory")  # fmt: skip
            top.plot(steps, [t[2] / factor for t in result.timeline], color="#ff7f0e", linewidth=1.2,
                     drawstyle="steps-post", label="on disk")  # fmt: skip
            top.axhline(limit / factor, color="black", linestyle="--", linewidth=1.0, label="budget")
            top.set_ylim(0, largest / factor * 1.08)
            top.set_ylabel(f"bytes ({unit})")
            top.grid(True, alpha=0.3)
            top.set_title(
                f"{result.policy}: wrote {format_bytes(result.bytes_written)} in {result.spills} spills, "
                f"read {format_bytes(result.bytes_read)} in {result.loads} loads"
            )
            kinds = [("spill", "spill (write)", "#d62728"), ("evict", "evict (on disk)", "#7f7f7f"),
                     ("load", "load (read)", "#2ca02c")]  # fmt: skip
            present = [k for k in kinds if any(m[1] == k[0] for m in result.markers)] or kinds[::2]
            for row, (kind, _label, color) in enumerate(present):
                xs = [m[0] for m in result.markers if m[1] == kind]
                strip.plot(xs, [row] * len(xs), linestyle="none", marker="|", markersize=9, color=color,
                           alpha=0.6, label=kind)  # fmt: skip
            strip.set_yticks(range(len(present)))
            strip.set_yticklabels([k[1] for k in present])
            strip.set_ylim(-0.6, len(present) - 0.4)
            strip.grid(True, axis="x", alpha=0.3)
        figure.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncols=3, frameon=False)
        axes[-1][0].set_xlabel("request index (put, get, delete and settle operations of the trace)")
        axes[-1][0].set_xlim(0, max(len(result.timeline), 1))
        fraction = f", {limit / peak:.0%} of peak" if peak else ""
        figure.suptitle(f"{name}: memory and disk over the run, budget {format_bytes(limit)}{fraction}, {mode} mode")
        _save(figure, path)
    return figure


def plot_all(rows: Sequence[dict[str, Any]], out_dir: str, traces: Sequence[str | Trace] | None = None) -> list[str]:
    """Write every figure of a comparison into ``out_dir``; return the PNG paths.

    For each replay mode in the rows: ``loads_vs_budget-MODE.png``,
    ``io_vs_budget-MODE.png`` and (when LRU was run)
    ``reduction_vs_lru-MODE.png`` at 25% of peak. For each trace given (its
    file name must match the rows' trace names), ``timeline-TRACE.png``: LRU
    and the policy with the least I/O at the budget nearest 25% of peak, in
    the first mode (``settled`` when present).

    Parameters
    ----------
    rows : sequence of dict
        Rows from :func:`spillkit.compare.compare` or :func:`read_rows`.
    out_dir : str
        Directory for the PNG files (created if missing).
    traces : sequence of str or Trace, optional
        Traces to draw timelines of.

    Returns
    -------
    list of str
        The paths written.
    """
    modes = [_check(rows, None), *_modes(rows)[1:]]
    os.makedirs(out_dir, exist_ok=True)
    written: list[str] = []
    for mode in modes:
        for stem, function in (("loads_vs_budget", plot_loads_vs_budget), ("io_vs_budget", plot_io_vs_budget)):
            path = os.path.join(out_dir, f"{stem}-{mode}.png")
            function(rows, path, mode=mode)
            written.append(path)
        if _reductions(rows, 0.25, mode)[0]:  # else LRU was not run, or did no I/O: nothing to reduce
            path = os.path.join(out_dir, f"reduction_vs_lru-{mode}.png")
            plot_reduction_vs_lru(rows, path, mode=mode)
            written.append(path)
    for trace in traces or ():
        name = _name(trace)
        mine = [r for r in rows if r["trace"] == name and r["mode"] == modes[0] and not _is_reference(r)]
        chosen = _nearest((float(r["budget_fraction"]) for r in mine), 0.25)
        if chosen is None:
            continue
        at = [r for r in mine if float(r["budget_fraction"]) == chosen]
        best = min(at, key=lambda r: (float(r["io_bytes"]), r["policy"] != "lru"))["policy"]
        shown = list(dict.fromkeys(["lru", best])) if any(r["policy"] == "lru" for r in at) else [best]
        path = os.path.join(out_dir, f"timeline-{name}.png")
        plot_timeline(trace, shown, int(at[0]["budget"]), path, mode=modes[0])
        written.append(path)
    return written


def read_rows(path: str) -> list[dict[str, Any]]:
    """Read a results CSV written by :func:`spillkit.compare.write_csv` back into rows with numbers.

    Counts become ``int``, fractions and seconds ``float``; empty cells (a
    bound row has no hit count) are left out of their row, as in the rows
    :func:`~spillkit.compare.compare` returned.

    Parameters
    ----------
    path : str
        The CSV file.

    Returns
    -------
    list of dict
        One dict per data line.

    Raises
    ------
    ValueError
        If a column the figures need is missing (naming them), or (naming the line) a cell the
        figures need is empty, a number is malformed, negative or not finite, or a mode is unknown.
    OSError
        If the file cannot be read.
    """
    try:
        # utf-8-sig: a spreadsheet that saves "CSV UTF-8" starts the file with a byte order mark
        with open(path, newline="", encoding="utf-8-sig") as file:
            return _read_rows(csv.DictReader(file), path)
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a spillkit results CSV (not UTF-8 text at byte {error.start})") from None


def _read_rows(reader: csv.DictReader[str], path: str) -> list[dict[str, Any]]:
    try:
        header = reader.fieldnames or []
    except csv.Error as error:
        raise ValueError(f"{path}:1: not a spillkit results CSV ({error})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ValueError(
            f"{path}: not a spillkit results CSV: missing column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} (expected a file written by spillkit compare, with columns "
            f"{', '.join(COLUMNS)})"
        )
    rows: list[dict[str, Any]] = []
    while True:
        try:
            raw = next(reader)
        except StopIteration:
            return rows
        except csv.Error as error:  # e.g. a cell longer than the csv module's field limit
            raise ValueError(f"{path}:{reader.line_num + 1}: {error}") from None  # the bad line is not counted
        row: dict[str, Any] = {}
        for column, text in raw.items():
            if column is None or text is None or text == "":
                continue  # a ragged line's extra cells, or an empty cell
            try:
                row[column] = _parse_cell(column, text)
            except ValueError as error:
                raise ValueError(f"{path}:{reader.line_num}: column {column!r}: {_short(text)} {error}") from None
        empty = [c for c in _NEEDED if c not in row]
        if empty:
            raise ValueError(f"{path}:{reader.line_num}: empty {', '.join(empty)} (every row needs them)")
        rows.append(row)


def _short(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37]) + "..."


#: Cells every row must fill: bound rows leave hits, loads and the written/read split empty.
_NEEDED = ("trace", "budget", "budget_fraction", "mode", "policy", "io_bytes")
_MODES = frozenset({"strict", "settled", "dead-skip", "bound"})


def _parse_cell(column: str, text: str) -> Any:
    """A cell's value; ValueError (saying why, without the cell) if a column the figures use is wrong."""
    if column == "mode" and text not in _MODES:
        raise ValueError(f"is not a replay mode ({', '.join(sorted(_MODES))})")  # it also names the PNG files
    if column in _TEXT_COLUMNS:
        return text
    number: float
    try:
        number = float(text) if column in _FLOAT_COLUMNS else int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            if column in COLUMNS:
                raise ValueError("is not a number") from None
            return text  # an extra column of text
    if column in COLUMNS and column != "ratio_to_bound" and not (number >= 0 and math.isfinite(number)):
        raise ValueError("is not a finite number of at least 0")  # ratio_to_bound is NaN with no bound
    return number


def plot_command(csv_path: str, out_dir: str) -> list[str]:
    """``spillkit plot RESULTS.csv -o DIR``: draw every figure of a saved comparison.

    Timelines need the traces themselves, which a CSV does not hold; use
    :func:`plot_timeline` (or ``spillkit compare``) for those.

    Parameters
    ----------
    csv_path : str
        A CSV written by ``spillkit compare`` (or :func:`spillkit.compare.write_csv`).
    out_dir : str
        Directory for the PNG files.

    Returns
    -------
    list of str
        The PNG paths written.
    """
    rows = read_rows(csv_path)
    try:
        return plot_all(rows, out_dir)
    except ValueError as error:  # e.g. only bound rows: say which file has nothing to plot
        raise ValueError(f"{csv_path}: {error}") from error
