"""The budget sweeps: disk I/O against the memory budget, a row of panels per trace, one line per policy.

:func:`plot_loads_vs_budget` draws written + read bytes beside the FOO and
PFOO-L lower bounds (which bound that sum); :func:`plot_io_vs_budget` splits
the sum into bytes written and bytes read, without a bound. Both are
re-exported by :mod:`spillkit.plots`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .plot_canvas import _WIDTH, _bytes_axis, _figure, _grid, _percent_axis, _rc, _save, _short_bytes, _style, _unit
from .plot_data import _REFERENCE_LABELS, BELADY, FOO, PFOO, _check, _largest, _peak, _policies, _series, _traces

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_io_vs_budget", "plot_loads_vs_budget"]


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
