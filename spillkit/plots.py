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

The figures live in modules of their own, all re-exported here:
:mod:`spillkit.plot_budget` (the two budget sweeps),
:mod:`spillkit.plot_reduction` (the reduction relative to LRU),
:mod:`spillkit.plot_timeline` (one run over time) and :mod:`spillkit.plot_csv`
(:func:`read_rows`), on the shared helpers of :mod:`spillkit.plot_canvas`
(matplotlib, figures, look, axes) and :mod:`spillkit.plot_data` (picking
from the rows). This module draws them all: :func:`plot_all` and
:func:`plot_command`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .compare import _names
from .plot_budget import plot_io_vs_budget, plot_loads_vs_budget
from .plot_csv import REQUIRED_COLUMNS, read_rows
from .plot_data import BELADY as BELADY
from .plot_data import FOO as FOO
from .plot_data import PFOO as PFOO
from .plot_data import _check, _is_reference, _modes, _nearest
from .plot_reduction import _reductions, plot_reduction_vs_lru
from .plot_timeline import plot_timeline
from .trace import Trace

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
    traces = list(traces or ())
    for trace, name in zip(traces, _names(traces), strict=True):  # the rows' names: two w.trace are w and w-2
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
