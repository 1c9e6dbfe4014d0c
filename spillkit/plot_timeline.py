"""Memory and disk bytes over one replayed run, with every spill and load marked: :func:`plot_timeline`.

It replays the trace itself (a results CSV does not hold what a timeline
needs). Re-exported by :mod:`spillkit.plots`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .compare import _name
from .plot_canvas import _WIDTH, _figure, _rc, _save, _unit
from .replay import replay
from .sizes import format_bytes, format_percent
from .trace import Trace, read_trace

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_timeline"]


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
            top.set_ylim(0, largest / factor * 1.08 or 1.0)  # nothing ever held (an empty trace): not 0 to 0
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
        fraction = f", {format_percent(limit / peak)} of peak" if peak else ""
        figure.suptitle(f"{name}: memory and disk over the run, budget {format_bytes(limit)}{fraction}, {mode} mode")
        _save(figure, path)
    return figure
