"""Figures: each plot writes a real PNG with the axes and lines it promises; results CSVs round-trip."""

from __future__ import annotations

import csv
import math
import struct
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")

from spillkit import policy_names
from spillkit.cli import main as cli_main
from spillkit.compare import COLUMNS, compare, write_csv
from spillkit.plots import (
    BELADY,
    FOO,
    PFOO,
    plot_all,
    plot_command,
    plot_io_vs_budget,
    plot_loads_vs_budget,
    plot_reduction_vs_lru,
    plot_timeline,
    read_rows,
)

TRACES = Path(__file__).parent.parent / "experiments" / "traces"
SMALL = [TRACES / f"{name}.trace.gz" for name in ("tsqr", "matmul", "rechunk")]
POLICIES = ["lru", "nextuse", "size"]
PNG = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path | str) -> tuple[int, int]:
    """Width and height of a PNG, after checking its signature."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG, f"{path} is not a PNG"
    assert len(data) > 10_000, f"{path} is suspiciously small ({len(data)} bytes)"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def with_references(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add bound and Belady-Size rows shaped like compare()'s (made up: these tests check drawing, not bounds)."""
    out = list(rows)
    for key in dict.fromkeys((r["trace"], r["budget"]) for r in rows):
        group = [r for r in rows if (r["trace"], r["budget"]) == key]
        least = min(r["io_bytes"] for r in group)
        base = {"trace": key[0], "budget": key[1], "budget_fraction": group[0]["budget_fraction"]}
        out.append({**base, "mode": "bound", "policy": FOO, "io_bytes": least * 0.8, "io_seconds": 0.5,
                    "ratio_to_bound": 1.0, "solve_seconds": 0.01})  # fmt: skip
        out.append({**base, "mode": "bound", "policy": PFOO, "io_bytes": least * 0.5, "io_seconds": 0.25,
                    "ratio_to_bound": 0.625, "solve_seconds": 0.001})  # fmt: skip
        written = least * 9 // 20
        out.append({**base, "mode": "dead-skip", "policy": BELADY, "io_bytes": 2 * written, "bytes_written": written,
                    "bytes_read": written, "hits": 1, "loads": 2, "io_seconds": 0.4, "recompute_seconds": 0.0,
                    "ratio_to_bound": 0.9})  # fmt: skip
    return out


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    found = compare([str(p) for p in SMALL], ["10%", "25%", "50%"], POLICIES, modes=("settled", "strict"),
                    bounds=False, progress=None)  # fmt: skip
    return with_references(found)


def lines(ax: Any) -> int:
    return len(ax.get_lines())


def test_loads_vs_budget_draws_a_panel_per_trace_with_the_bound(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    path = tmp_path / "loads.png"
    figure = plot_loads_vs_budget(rows, str(path), columns=2)
    width, _ = png_size(path)
    assert 800 <= width <= 1200  # legible at README width
    panels, legend = figure.axes[:3], figure.axes[3:]
    assert len(legend) == 1 and not legend[0].axison  # the grid's spare cell holds the legend
    assert legend[0].get_legend() is not None
    for ax, trace in zip(panels, ("tsqr", "matmul", "rechunk"), strict=True):
        assert ax.get_title().startswith(trace)
        assert ax.get_xscale() == "log"
        assert lines(ax) == len(POLICIES) + 3  # policies, FOO, PFOO-L, Belady-Size
        assert "written + read" in ax.get_ylabel() and ax.get_ylabel().endswith("iB)")
        assert ax.get_ylim()[0] == 0
    labels = [t.get_text() for t in legend[0].get_legend().get_texts()]
    assert labels[: len(POLICIES)] == [p for p in policy_names() if p in POLICIES]  # registry order
    assert "FOO lower bound" in labels


def test_loads_vs_budget_without_a_spare_cell_puts_the_legend_under_the_figure(
    rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    figure = plot_loads_vs_budget(rows, str(tmp_path / "loads.png"), mode="strict", columns=3)
    assert len(figure.axes) == 3 and len(figure.legends) == 1
    assert "strict" in figure.get_suptitle()


def test_io_vs_budget_has_written_and_read_panels(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    path = tmp_path / "io.png"
    figure = plot_io_vs_budget(rows, str(path))
    png_size(path)
    assert len(figure.axes) == 2 * len(SMALL)
    for index, ax in enumerate(figure.axes):
        assert ("written" if index % 2 == 0 else "read") in ax.get_title()
        assert lines(ax) == len(POLICIES) + 1  # policies and Belady-Size; no bound on a part of the I/O
    assert "settled" in figure.get_suptitle()


def test_reduction_vs_lru_has_a_bar_series_per_policy_and_the_bound(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    path = tmp_path / "reduction.png"
    figure = plot_reduction_vs_lru(rows, str(path))
    png_size(path)
    (ax,) = figure.axes
    assert len(ax.containers) == len(POLICIES) - 1 + 2  # not LRU itself; Belady-Size and the bound
    assert [t.get_text() for t in ax.get_xticklabels()] == ["tsqr", "matmul", "rechunk"]
    assert "LRU" in ax.get_ylabel() and "%" in ax.get_ylabel()
    bound = ax.containers[-1]
    assert all(0 < bar.get_height() <= 100 for bar in bound)  # the bound saves something, never more than all


def test_reduction_vs_lru_cuts_and_labels_extreme_losses(tmp_path: Path) -> None:
    made = [
        {"trace": "t", "budget": 10, "budget_fraction": 0.25, "mode": "settled", "policy": policy,
         "io_bytes": io, "bytes_written": io // 2, "bytes_read": io // 2}
        for policy, io in (("lru", 1000), ("size", 9000), ("nextuse", 800))
    ]  # fmt: skip
    figure = plot_reduction_vs_lru(made, str(tmp_path / "r.png"))
    (ax,) = figure.axes
    assert ax.get_ylim()[0] > -100
    assert any("-800%" in text.get_text() for text in ax.texts)


def test_cut_bars_side_by_side_get_labels_that_do_not_overlap(tmp_path: Path) -> None:
    # Before (helper-130): each label sat at its own bar's foot, and the labels of neighbouring cut
    # bars printed over each other ("-175%(cut)175% (cut)" in the README's figure).
    made = [
        {"trace": "t", "budget": 10, "budget_fraction": 0.25, "mode": "settled", "policy": policy,
         "io_bytes": io, "bytes_written": io // 2, "bytes_read": io // 2}
        for policy, io in (("lru", 1000), ("size", 2750), ("cost", 2750), ("lfu", 3000), ("nextuse", 800))
    ]  # fmt: skip
    figure = plot_reduction_vs_lru(made, str(tmp_path / "r.png"))
    (ax,) = figure.axes
    labels = [text for text in ax.texts if "(cut)" in text.get_text()]
    assert sorted(text.get_text() for text in labels) == ["cost -175% (cut)", "lfu -200% (cut)", "size -175% (cut)"]
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    boxes = [text.get_window_extent(renderer) for text in labels]
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert sorted(text.xyann[1] for text in labels) == [3, 14, 25]  # one line apart, from just above the cut


def test_timeline_of_two_policies(tmp_path: Path) -> None:
    path = tmp_path / "timeline.png"
    figure = plot_timeline(str(SMALL[1]), ["lru", "nextuse"], "25%", str(path))
    png_size(path)
    assert len(figure.axes) == 4  # bytes and markers, per policy
    for top, strip in (figure.axes[0:2], figure.axes[2:4]):
        assert lines(top) == 3  # in memory, on disk, budget
        assert 2 <= lines(strip) <= 3  # spill and load markers (and evictions when there are any)
        marked = {line.get_label() for line in strip.get_lines()}
        assert {"spill", "load"} <= marked
        assert all(len(line.get_xdata()) > 0 for line in strip.get_lines())
    assert figure.axes[0].get_title().startswith("lru") and figure.axes[2].get_title().startswith("nextuse")
    assert "request index" in figure.axes[-1].get_xlabel()


def test_timeline_takes_a_trace_object_and_a_byte_budget(tmp_path: Path) -> None:
    from spillkit.trace import read_trace

    figure = plot_timeline(read_trace(SMALL[0]), "lru", "64 MiB", str(tmp_path / "t.png"), mode="strict")
    assert len(figure.axes) == 2
    assert "strict" in figure.get_suptitle() and "64.00 MiB" in figure.get_suptitle()


def test_plot_all_writes_every_figure(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    written = plot_all(rows, str(tmp_path / "figures"), traces=[str(SMALL[0])])
    names = sorted(Path(p).name for p in written)
    assert names == sorted(
        [f"{stem}-{mode}.png" for stem in ("loads_vs_budget", "io_vs_budget", "reduction_vs_lru")
         for mode in ("settled", "strict")] + ["timeline-tsqr.png"]
    )  # fmt: skip
    for path in written:
        png_size(path)


def test_traces_named_alike_get_a_timeline_each_at_their_own_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: both timelines went to timeline-w.png, the second drawn at the first trace's budget.
    import shutil

    import spillkit.plots
    from spillkit.sizes import format_bytes

    paths = []
    for folder, source in (("a", SMALL[1]), ("b", SMALL[0])):
        (tmp_path / folder).mkdir()
        paths.append(str(tmp_path / folder / "w.trace.gz"))
        shutil.copyfile(source, paths[-1])
    rows = compare(paths, ["25%"], ["lru"], modes=["settled"], bounds=False)
    titles: dict[str, str] = {}
    real = spillkit.plots.plot_timeline

    def spy(trace: Any, policies: Any, budget: Any, path: str, **kwargs: Any) -> Any:
        figure = real(trace, policies, budget, path, **kwargs)
        titles[Path(path).name] = figure.get_suptitle()
        return figure

    monkeypatch.setattr(spillkit.plots, "plot_timeline", spy)
    written = plot_all(rows, str(tmp_path / "out"), traces=paths)
    assert [Path(p).name for p in written if "timeline" in p] == ["timeline-w.png", "timeline-w-2.png"]
    budgets = {row["trace"]: int(row["budget"]) for row in rows}
    assert budgets["w"] != budgets["w-2"]
    for name, trace in (("timeline-w.png", "w"), ("timeline-w-2.png", "w-2")):
        png_size(tmp_path / "out" / name)
        assert "25% of peak" in titles[name] and format_bytes(budgets[trace]) in titles[name], titles[name]


def test_read_rows_round_trips_write_csv(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    write_csv(rows, str(path))
    back = read_rows(str(path))
    assert len(back) == len(rows)
    for before, after in zip(rows, back, strict=True):
        assert set(after) == {k for k, v in before.items() if v != ""}
        for key, value in before.items():
            assert type(after[key]) is type(value), key
            assert after[key] == value or (isinstance(value, float) and math.isnan(value) and math.isnan(after[key]))


def test_plot_command_draws_from_a_csv(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    write_csv(rows, str(path))
    written = plot_command(str(path), str(tmp_path / "report"))
    assert len(written) == 6 and all(Path(p).exists() for p in written)


def test_a_csv_missing_a_column_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.csv"
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow([c for c in COLUMNS if c not in ("io_bytes", "policy")])
        writer.writerow(["t", 10, 0.5, "settled", 1, 1, 5, 5, 0.1, 0.0, 1.0])
    with pytest.raises(ValueError, match=r"bad\.csv: not a spillkit results CSV: missing columns policy, io_bytes"):
        read_rows(str(path))
    assert cli_main(["plot", str(path), "-o", str(tmp_path / "out")]) == 3
    assert "missing columns policy, io_bytes" in capsys.readouterr().err


def test_a_malformed_number_names_the_line(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    write_csv(rows[:3], str(path))
    text = path.read_text().splitlines()
    cells = text[2].split(",")
    cells[COLUMNS.index("io_bytes")] = "lots"
    text[2] = ",".join(cells)
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match=r"results\.csv:3: column 'io_bytes': 'lots' is not a number"):
        read_rows(str(path))


def test_the_cli_plot_command(rows: list[dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "results.csv"
    write_csv(rows, str(path))
    assert cli_main(["plot", str(path), "-o", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 6 and all(p.endswith(".png") and Path(p).exists() for p in printed)


def test_no_rows_or_only_bounds_is_an_error(rows: list[dict[str, Any]], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no results"):
        plot_loads_vs_budget([], str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="only bounds"):
        plot_io_vs_budget([r for r in rows if r["policy"] in (FOO, PFOO, BELADY)], str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="no results in mode 'dead-skip'"):
        plot_io_vs_budget(rows, str(tmp_path / "x.png"), mode="dead-skip")


def test_without_matplotlib_the_error_names_the_extra(
    rows: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pip install "spillkit\[plot\]"'):
        plot_loads_vs_budget(rows, str(tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()


def test_with_real_bounds_no_policy_is_drawn_below_the_bound(tmp_path: Path) -> None:
    pytest.importorskip("scipy")  # (the bounds' LP solver, in the extra CI installs)
    found = compare([str(SMALL[0])], ["10%", "50%"], POLICIES, bounds=True, progress=None)
    figure = plot_loads_vs_budget(found, str(tmp_path / "loads.png"))
    (ax,) = figure.axes
    by_label = {line.get_label(): line for line in ax.get_lines()}
    floor = by_label["FOO lower bound"].get_ydata()
    for policy in POLICIES:
        assert all(y >= f * (1 - 1e-9) for y, f in zip(by_label[policy].get_ydata(), floor, strict=True))


def test_a_budget_axis_ticks_each_budget_as_asked(tmp_path: Path) -> None:
    # A share of peak comes back rounded to whole bytes (1% of this peak is 0.999998% of it): the tick
    # said 0.999998%; it says 1% now, as a 0.3% budget says 0.3%.
    trace = tmp_path / "t.trace"
    lines_ = [{"format": "spillkit-trace", "version": 1}, ["k", 0, "a"], ["k", 1, "b"], ["k", 2, "c"]]
    lines_ += [["put", i, 333_333, None, 0.1 * i, i + 1] for i in range(3)] + [["get", 0, 0.5, "load"]]
    trace.write_text("\n".join(__import__("json").dumps(line) for line in lines_) + "\n")
    found = compare([str(trace)], ["0.3%", "1%", "25%"], ["lru"], modes=("settled",), bounds=False, progress=None)
    assert found[1]["budget_fraction"] != 0.01  # (what makes the tick worth testing)
    figure = plot_loads_vs_budget(found, str(tmp_path / "loads.png"))
    figure.canvas.draw()
    labels = [t.get_text() for t in figure.axes[0].get_xticklabels()]
    assert labels == ["0.3%", "1%", "25%"]
