"""The canvas the figures of :mod:`spillkit.plots` share: lazy matplotlib, Agg figures, PNG output, look and axes.

matplotlib is imported only inside these functions (:func:`import_matplotlib`
raises ``ImportError`` naming the ``spillkit[plot]`` extra without it), never
when this module is imported. Also here: figure width, resolution and fonts,
a fixed colour and marker per policy, byte units, and the budget and byte axes
of the budget sweeps.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .extras import missing_extra
from .sizes import format_percent

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__: list[str] = []  # helpers of spillkit.plot_*; the figures are public through spillkit.plots


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
    "text.parse_math": False,  # trace and policy names are text: "run$\\foo$" made a figure fail (helper-106)
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


def import_matplotlib() -> Any:
    """Import matplotlib (lazily) or say which extra provides it."""
    try:
        import matplotlib
        from matplotlib.backends import backend_agg  # noqa: F401 - the canvas every figure here draws on
    except ImportError as error:
        raise missing_extra("drawing figures", "matplotlib", "plot") from error
    return matplotlib


def _figure(width: float, height: float) -> Figure:
    """A new Figure on an Agg canvas (touches neither pyplot nor the user's backend)."""
    import_matplotlib()
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


def _rc() -> Any:
    matplotlib = import_matplotlib()
    return matplotlib.rc_context(_FONT)


def _style(policy: str) -> tuple[str, str]:
    if policy not in _STYLE:
        index = len(_STYLE) - _BUILT_IN
        _STYLE[policy] = (_SPARE[index % len(_SPARE)], _SPARE_MARKERS[index % len(_SPARE_MARKERS)])
    return _STYLE[policy]


def _unit(largest: float) -> tuple[float, str]:
    """The binary unit that shows ``largest`` bytes with one to four digits."""
    for factor, name in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if largest >= factor:
            return float(factor), name
    return 1.0, "bytes"


def _percent_axis(ax: Axes, fractions: Iterable[float]) -> None:
    """An x axis of budgets in % of peak, ticked at the budgets measured: log, or linear with a budget of 0.

    A budget of 0 (``--budgets 0``, a percentage too small for one byte, or any budget of an empty trace) has
    no place on a log axis: matplotlib would hide its points and warn. Such an axis is linear, and says so.
    """
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ticks = sorted(set(fractions))
    if not ticks:
        return  # nothing drawn on this axes: matplotlib's default axis, no log scale to warn about
    log = ticks[0] > 0
    ax.set_xscale("log" if log else "linear")  # first: setting a scale resets the locators and formatter
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: format_percent(x / 100)))  # (1%, not 0.999998%)
    if log:
        ax.set_xlim(ticks[0] / 1.25, ticks[-1] * 1.25)
        return
    pad = 0.05 * ticks[-1] or 1.0  # only budgets of 0: a span of -1% to 1% around them
    ax.set_xlim(ticks[0] - pad, ticks[-1] + pad)
    ax.text(0.01, 0.98, "linear budget axis: a budget of 0", transform=ax.transAxes, ha="left", va="top",
            fontsize=8, color="0.4")  # fmt: skip


def _bytes_axis(ax: Axes, largest: float, unit: str, what: str) -> None:
    """A linear y axis from zero up to ``largest`` (already in ``unit``), labelled ``what (unit)``."""
    ax.set_ylim(0, largest * 1.08 if largest > 0 else 1)
    ax.set_ylabel(f"{what} ({unit})")


def _short_bytes(nbytes: float) -> str:
    """``"184 MiB"``, ``"2.98 GiB"``: three significant digits."""
    factor, unit = _unit(nbytes)
    return f"{nbytes / factor:.3g} {unit}"


def _grid(count: int, columns: int) -> tuple[int, int]:
    columns = max(1, min(columns, count))
    return math.ceil(count / columns), columns
