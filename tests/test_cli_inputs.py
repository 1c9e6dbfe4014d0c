"""Inputs at the edges of the command line: calibration files, demo arguments, odd costs, names, empty budgets.

Each test runs the real command (``spillkit.cli.main``, or a subprocess where the old failure was a hang) on
real files and checks what a user sees: the exit code, one clear line naming the file, or no warning at all.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import math
import os
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spillkit import policy_names
from spillkit.calibrate import load_disk_model
from spillkit.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_USAGE, main
from spillkit.compare import _names, compare, parse_budgets, parse_policies, to_markdown
from spillkit.replay import DiskModel
from spillkit.sizes import UNLIMITED, format_percent, parse_bytes

HEADER = {"format": "spillkit-trace", "version": 1}


def write_trace(path: Path, *rows: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(line) for line in [HEADER, *rows]) + "\n")
    return path


def small_trace(path: Path, cost_a: float | None = None, cost_b: float | None = None, nbytes: int = 100) -> Path:
    """Three values of ``nbytes``, then both costed ones read back: at a third of peak, loads."""
    return write_trace(
        path,
        ["k", 0, "a"], ["k", 1, "b"], ["k", 2, "c"],
        ["put", 0, nbytes, cost_a, 0.0, 1],
        ["put", 1, nbytes, cost_b, 0.1, 2],
        ["put", 2, nbytes, None, 0.2, 3],
        ["get", 0, 0.3, "load"],
        ["get", 1, 0.4, "load"],
    )  # fmt: skip


def one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith(f"spillkit {command}: "), err
    return err


# ---- 1. the calibration file -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"write_bandwidth": 0, "read_bandwidth": 1e9, "latency": 0.001}', "write_bandwidth must be a finite"),
        ('{"bandwidth": 5}', "unknown field ['bandwidth']"),
        ("[1, 2, 3]", "expected a JSON object"),
        ("not json", "not valid JSON"),
        ('{"write_bandwidth": "fast", "read_bandwidth": 1, "latency": 0}', "found 'fast'"),
        ('{"read_bandwidth": Infinity}', "read_bandwidth must be a finite"),
        ('{"latency": -1e-3}', "latency must be a finite number of at least 0"),
        ('{"latency": true}', "latency must be a finite"),
        ('{"latency": 1' + "0" * 400 + "}", "latency must be a finite"),
        ("[" * 100_000, "nested too deeply"),
    ],
)
def test_a_malformed_calibration_file_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], content: str, problem: str
) -> None:
    calibration = tmp_path / "calibration.json"
    calibration.write_text(content)
    monkeypatch.setenv("SPILLKIT_CALIBRATION", str(calibration))
    trace = small_trace(tmp_path / "w.trace")
    code = main(["compare", str(trace), "--policies", "lru", "--no-bounds", "--no-plots", "-o", str(tmp_path / "r")])
    assert code == EXIT_BAD_INPUT
    err = one_line_error(capsys, "compare")
    assert f"spillkit compare: {calibration}: bad spillkit calibration file: " in err and problem in err, err


def test_a_calibration_file_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    calibration = tmp_path / "calibration.json"
    calibration.write_bytes(b'{"latency": "\xff"}')
    with pytest.raises(ValueError, match=f"^{calibration}: bad spillkit calibration file: .*utf-8"):
        load_disk_model(str(calibration))


def test_a_partial_calibration_keeps_the_defaults_and_a_missing_one_is_the_defaults(tmp_path: Path) -> None:
    calibration = tmp_path / "calibration.json"
    calibration.write_text('{"write_bandwidth": 5e8, "latency": 0}')  # no per-file cost divides nothing
    assert load_disk_model(str(calibration)) == DiskModel(write_bandwidth=5e8, latency=0.0)
    assert load_disk_model(str(tmp_path / "none.json")) == DiskModel()


# ---- 2. demo arguments -------------------------------------------------------------------------


def demo(*args: str) -> list[str]:
    return ["demo", "--array-size", "64 KiB", "--budget", "128 KiB", "--reads", "10", "--policy", "lru", *args]


@pytest.mark.parametrize("arrays", ["1", "4"])
def test_the_demo_runs_with_fewer_than_five_arrays(arrays: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(demo("--arrays", arrays)) == EXIT_OK
    assert "\nlru " in capsys.readouterr().out


def test_the_demo_runs_with_arrays_of_one_float(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--arrays", "12", "--array-size", "8", "--budget", "32", "--reads", "20",
                 "--policy", "lru"]) == EXIT_OK  # fmt: skip
    assert "\nlru " in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--arrays", "0"], "at least 1 array"),
        (["--arrays", "-3"], "at least 1 array"),
        (["--array-size", "4"], "at least 8 bytes"),
        (["--array-size", "0"], "at least 8 bytes"),
        (["--reads", "-1"], "reads must be at least 0"),
        (["--seconds", "-1"], "seconds must be a finite number of at least 0"),
        (["--budget", "lots"], "lots"),
        (["--policy", "nosuch"], "unknown policies ['nosuch']"),
    ],
)
def test_demo_arguments_that_cannot_run_are_refused(
    args: list[str], problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(demo("--arrays", "10", *args)) == EXIT_USAGE
    err = one_line_error(capsys, "demo")
    assert problem in err, err


@pytest.mark.parametrize("seconds", ["nan", "inf"])
def test_demo_seconds_that_never_pass_are_refused(seconds: str) -> None:
    # a subprocess with a timeout: before the fix, NaN busy-looped forever and inf ran until Ctrl-C
    done = subprocess.run([sys.executable, "-m", "spillkit", *demo("--arrays", "10", "--seconds", seconds)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == EXIT_USAGE, done.stderr
    assert done.stderr == f"spillkit demo: seconds must be a finite number of at least 0, not {seconds}\n"


# ---- 3. what compare writes, plot reads: infinite and negative costs --------------------------------


@pytest.mark.parametrize(
    ("cost_a", "cost_b", "expected"),
    [(math.inf, 1.0, math.inf), (-5.0, 1.0, -4.0), (math.inf, -math.inf, math.nan)],
)
def test_plot_reads_the_results_of_a_trace_with_odd_costs(
    tmp_path: Path, cost_a: float, cost_b: float, expected: float, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = small_trace(tmp_path / "w.trace", cost_a, cost_b)
    out = tmp_path / "report"
    assert main(["compare", str(trace), "--budgets", "34%", "--policies", "lru", "--no-plots", "-o", str(out)]) == 0
    rows = [r for r in csv.DictReader((out / "results.csv").open()) if r["policy"] == "lru"]
    recompute = float(rows[0]["recompute_seconds"])
    assert recompute == expected or (math.isnan(expected) and math.isnan(recompute))
    capsys.readouterr()
    assert main(["plot", str(out / "results.csv"), "-o", str(out / "figures")]) == EXIT_OK, capsys.readouterr().err
    assert list((out / "figures").glob("*.png"))


def test_plot_still_refuses_a_negative_byte_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    assert main(["compare", str(small_trace(tmp_path / "w.trace")), "--budgets", "34%", "--policies", "lru",
                 "--no-bounds", "--no-plots", "-o", str(out)]) == EXIT_OK  # fmt: skip
    text = (out / "results.csv").read_text().splitlines()
    cells = text[1].split(",")
    cells[text[0].split(",").index("io_bytes")] = "-1"
    (out / "results.csv").write_text("\n".join([text[0], ",".join(cells)]) + "\n")
    capsys.readouterr()
    assert main(["plot", str(out / "results.csv"), "-o", str(out / "figures")]) == EXIT_BAD_INPUT
    assert "'io_bytes': '-1' is not a finite number of at least 0" in one_line_error(capsys, "plot")


# ---- 4. the table without bounds ---------------------------------------------------------------


def test_no_bounds_leaves_the_bound_column_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = small_trace(tmp_path / "w.trace")
    out = tmp_path / "report"
    assert main(["compare", str(trace), "--budgets", "34%", "--policies", "lru,size", "--no-bounds",
                 "--no-plots", "-o", str(out)]) == EXIT_OK  # fmt: skip
    table = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| lru") or
             line.startswith("| size")]  # fmt: skip
    assert len(table) == 2 and all(line.endswith(" |  |") for line in table), table
    assert "nan" not in capsys.readouterr().out


def test_a_bound_of_zero_under_io_shows_inf() -> None:
    rows = [{"trace": "w", "budget": 1, "budget_fraction": 0.5, "mode": "settled", "policy": "lru", "io_bytes": 9,
             "io_seconds": 0.0, "ratio_to_bound": math.inf}]  # fmt: skip
    assert to_markdown(rows).splitlines()[-1].endswith(" | inf |")


# ---- 5. distinct trace names -------------------------------------------------------------------


def test_trace_names_are_distinct_even_when_a_suffix_is_a_file_name() -> None:
    assert _names(["d1/w.trace", "d2/w.trace", "d3/w-2.trace"]) == ["w", "w-3", "w-2"]
    assert _names(["a/w", "b/w", "c/w-2", "d/w-2", "e/w"]) == ["w", "w-3", "w-2", "w-2-2", "w-4"]


def test_compare_gives_every_trace_its_own_rows(tmp_path: Path) -> None:
    paths = [small_trace(tmp_path / d / f"{stem}.trace", nbytes=n)
             for d, stem, n in (("d1", "w", 100), ("d2", "w", 200), ("d3", "w-2", 300))]  # fmt: skip
    rows = compare([str(p) for p in paths], ["1 KiB"], ["lru"], bounds=False, progress=None)
    assert [(r["trace"], r["budget_fraction"]) for r in rows] == [("w", 1024 / 300), ("w-3", 1024 / 600),
                                                                 ("w-2", 1024 / 900)]  # fmt: skip


# ---- 6. budgets of 0 and empty traces draw without warnings -------------------------------------


@pytest.fixture
def no_warnings() -> Iterator[None]:
    pytest.importorskip("matplotlib")
    pytest.importorskip("scipy")
    # imported first, so that the check below sees what spillkit draws, not what an import may say
    for module in ("matplotlib.backends.backend_agg", "matplotlib.ticker", "PIL.Image", "scipy.optimize",
                   "scipy.sparse"):  # fmt: skip
        importlib.import_module(module)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.mark.parametrize("budgets", ["0", "1e-9%", "0,50%"])
def test_budgets_of_zero_draw_without_warnings(tmp_path: Path, budgets: str, no_warnings: None) -> None:
    out = tmp_path / "report"
    trace = small_trace(tmp_path / "w.trace")
    assert main(["compare", str(trace), "--budgets", budgets, "--policies", "lru,size", "-o", str(out)]) == EXIT_OK
    assert {p.name for p in out.glob("*.png")} >= {"loads_vs_budget-settled.png", "timeline-w.png"}


def test_an_empty_trace_draws_without_warnings(tmp_path: Path, no_warnings: None) -> None:
    out = tmp_path / "report"
    trace = write_trace(tmp_path / "empty.trace")
    assert main(["compare", str(trace), "--policies", "lru", "-o", str(out)]) == EXIT_OK
    assert (out / "timeline-empty.png").exists()


def test_the_budget_axis_is_log_unless_a_budget_is_zero(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from spillkit.plots import plot_loads_vs_budget

    trace = small_trace(tmp_path / "w.trace")
    for budgets, scale in ((["25%", "50%"], "log"), (["0", "50%"], "linear")):
        rows = compare([str(trace)], budgets, ["lru"], bounds=False, progress=None)
        figure = plot_loads_vs_budget(rows, str(tmp_path / "loads.png"))
        assert figure.axes[0].get_xscale() == scale


# ---- 6. inputs that are no regular file ------------------------------------------------------------


def run_command(
    command: str, given: str, out: Path, data: bytes | None = None, plots: bool = False
) -> subprocess.CompletedProcess[bytes]:
    """The command in a subprocess, with a timeout: the old failure was a hang, which no in-process call survives."""
    extra = [*([] if plots else ["--no-plots"]), "--no-bounds"] if command == "compare" else []
    return subprocess.run(
        [sys.executable, "-m", "spillkit", command, given, *extra, "-o", str(out)],
        capture_output=True,
        input=data,
        timeout=60,
    )


@pytest.mark.parametrize("command", ["compare", "plot"])
@pytest.mark.parametrize("kind", ["fifo without a writer", "device", "directory"])
def test_an_input_that_is_no_regular_file_is_refused_at_once(tmp_path: Path, command: str, kind: str) -> None:
    """A FIFO with no writer made compare wait forever, and /dev/zero made it read one endless line (helper-97)."""
    if kind == "fifo without a writer":
        given = tmp_path / "input"
        os.mkfifo(given)
    elif kind == "device":
        given = Path("/dev/zero")
    else:
        given = tmp_path / "input"
        given.mkdir()
    done = run_command(command, str(given), tmp_path / "out")
    err = done.stderr.decode()
    assert done.returncode == EXIT_BAD_INPUT, err
    assert "Traceback" not in err and err.count("\n") == 1 and str(given) in err, err
    if kind != "fifo without a writer":  # (which reads as empty: not a trace, not a CSV)
        assert "not a regular file or a pipe" in err, err


@pytest.mark.parametrize("plots", [False, True])
def test_a_trace_piped_into_compare_is_read(tmp_path: Path, plots: bool) -> None:
    """``cat t.gz | spillkit compare /dev/stdin``: a pipe with a writer is an input (helper-98).

    With plots, the timeline read the pipe a second time and found it drained: exit 3 (helper-106).
    """
    if plots:
        pytest.importorskip("matplotlib")
    trace = small_trace(tmp_path / "t.trace")
    done = run_command("compare", "/dev/stdin", tmp_path / "out", data=trace.read_bytes(), plots=plots)
    assert done.returncode == EXIT_OK, done.stderr.decode()
    assert (tmp_path / "out" / "results.csv").exists()
    assert (tmp_path / "out" / "timeline-stdin.png").exists() == plots


def test_a_trace_named_like_tex_is_drawn_under_its_name(tmp_path: Path) -> None:
    """Names went into titles as matplotlib math: ``run$\\foo$`` failed the figures, exit 3 (helper-106)."""
    pytest.importorskip("matplotlib")
    trace = small_trace(tmp_path / "run$\\foo$.trace")
    done = run_command("compare", str(trace), tmp_path / "out", plots=True)
    assert done.returncode == EXIT_OK, done.stderr.decode()
    assert (tmp_path / "out" / "timeline-run$\\foo$.png").exists()


# ---- 7. what is checked before the slow part (helper-115) ----------------------------------------


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (
            ["record", "tsqr", "--scale", "1e15", "-o", "D/t.trace.gz"],
            "cannot build the workload 'tsqr' at --scale 1e+15",
        ),
        (["record", "matmul", "--scale", "1e30", "-o", "D/t.trace.gz"], "cannot build the workload 'matmul'"),
        (["compare", "--workload", "tsqr", "--scale", "1e300", "-o", "D/out"], "cannot build the workload 'tsqr'"),
        (["demo", "--array-size", "1e30", "--arrays", "1", "--reads", "1"], "cannot make 1 arrays of 1e30"),
    ],
)
def test_sizes_far_too_large_are_a_usage_error_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    # Before: a TypeError from inside dask, or a MemoryError, as a traceback with exit 1.
    assert main([a.replace("D/", f"{tmp_path}/") for a in argv]) == EXIT_USAGE
    assert fragment in one_line_error(capsys, argv[0])
    assert os.listdir(tmp_path) == []  # no trace file, no report directory


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("compare", ["compare", "T", "--no-bounds", "-o", "F"]),
        ("compare", ["compare", "T", "--no-bounds", "-o", "F/report"]),
        ("plot", ["plot", "C", "-o", "F"]),
        ("calibrate", ["calibrate", "--save", "F/calibration.json"]),
        ("record", ["record", "tsqr", "--scale", "0.01", "-o", "F/t.trace.gz"]),
    ],
)
def test_an_output_path_that_cannot_be_a_directory_is_refused_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str, argv: list[str]
) -> None:
    # Before: compare replayed every trace, calibrate measured the disk, then "[Errno 17] File exists", exit 3.
    trace = small_trace(tmp_path / "t.trace")
    results = tmp_path / "results.csv"
    assert main(["compare", str(trace), "--no-bounds", "--no-plots", "-o", str(tmp_path)]) == EXIT_OK
    capsys.readouterr()
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")

    def no_work(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("work started before the output path was checked")

    for module, name in (("spillkit.compare", "compare"), ("spillkit.plots", "plot_command"),
                         ("spillkit.calibrate", "calibrate"), ("spillkit.workloads", "build")):  # fmt: skip
        monkeypatch.setattr(importlib.import_module(module), name, no_work)
    names = {"T": str(trace), "C": str(results), "F": str(blocker)}
    argv = [names.get(a, a.replace("F/", f"{blocker}/")) for a in argv]
    assert main(argv) == EXIT_USAGE
    assert f"'{blocker}' is no directory" in one_line_error(capsys, command)
    assert blocker.read_text() == "in the way"


def test_traces_given_beside_a_workload_are_read_before_it_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def no_recording(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the workload was recorded before the traces given were read")

    monkeypatch.setattr(importlib.import_module("spillkit.workloads"), "build", no_recording)
    argv = ["compare", str(tmp_path / "missing.trace"), "--workload", "rechunk", "-o", str(tmp_path / "out")]
    assert main(argv) == EXIT_BAD_INPUT
    assert "missing.trace" in one_line_error(capsys, "compare")
    assert not (tmp_path / "out").exists()


def test_budgets_given_twice_or_equal_in_bytes_are_replayed_once(tmp_path: Path) -> None:
    trace = small_trace(tmp_path / "t.trace", nbytes=10)  # peak 30 bytes: 5% and 6% are both 1 byte
    rows = compare([str(trace)], parse_budgets("10%,10%, 10%,5%,6%"), ["lru"], bounds=False, progress=None)
    assert [row["budget"] for row in rows] == [3, 1]
    table = to_markdown(rows)
    assert table.count("### t, budget") == 2 and table.count("| lru |") == 2


def test_policy_names_are_matched_in_any_case_and_all_too(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_policies("All") == parse_policies("all") == policy_names()
    assert parse_policies("LRU, lru,Fifo") == ["lru", "fifo"]
    assert main(["demo", "--policy", "LRU", "--arrays", "5", "--array-size", "1000", "--budget", "3000"]) == EXIT_OK
    rows = [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:] if line.strip()]
    assert rows == ["lru"]  # before: the name as typed, LRU


def test_a_trace_whose_name_starts_with_a_dot_is_named_and_plotted(tmp_path: Path) -> None:
    # Before: named '' (the file name up to its first dot): '### , budget', and a results.csv
    # that `spillkit plot` refused ("empty trace").
    trace = small_trace(tmp_path / ".hidden.trace")
    out = tmp_path / "out"
    assert main(["compare", str(trace), "--no-bounds", "--no-plots", "-o", str(out)]) == EXIT_OK
    assert "### hidden, budget" in (out / "results.md").read_text()
    pytest.importorskip("matplotlib")
    assert main(["plot", str(out / "results.csv"), "-o", str(out)]) == EXIT_OK


def test_a_metrics_address_that_cannot_be_bound_is_named_in_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("prometheus_client")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["demo", "--serve-metrics", f"127.0.0.1:{port}", "--arrays", "2", "--array-size", "100"]
        assert main([*argv, "--seconds", "1"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"spillkit demo: cannot serve metrics at 127.0.0.1:{port}: " in err and "Traceback" not in err


def test_an_output_path_that_is_a_dangling_link_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = small_trace(tmp_path / "t.trace")
    (tmp_path / "out").symlink_to(tmp_path / "nowhere")
    assert main(["compare", str(trace), "--no-bounds", "--no-plots", "-o", str(tmp_path / "out")]) == EXIT_USAGE
    assert "is no directory" in one_line_error(capsys, "compare")


def test_a_workload_that_runs_out_of_memory_while_recorded_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import spillkit.workloads

    class Huge:
        def compute(self, **kwargs: Any) -> None:
            raise MemoryError

    monkeypatch.setattr(spillkit.workloads, "build", lambda name, scale: Huge())
    assert main(["record", "tsqr", "--scale", "3", "-o", str(tmp_path / "t.trace.gz")]) == EXIT_USAGE
    assert "does not fit in memory" in one_line_error(capsys, "record")


def test_budgets_are_parsed_once_each_and_the_progress_bar_ends_full(tmp_path: Path) -> None:
    assert parse_budgets("10%,10%, 10%,1 KiB,1 KiB") == ["10%", "1 KiB"]
    trace = small_trace(tmp_path / "t.trace", nbytes=10)  # 5% and 6% are one byte each: the second is skipped

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    bar = Terminal()
    compare([str(trace)], ["5%", "6%"], ["lru"], bounds=False, progress=bar)
    assert bar.getvalue().rstrip().split("\r")[-1].split("]")[1].split()[0] == "2/2"
    # By default the bar goes to sys.stderr as it is at the call (it was the stream of the import:
    # in a test run, one that pytest had closed since, and compare failed "I/O operation on closed file").
    redirected = Terminal()
    with contextlib.redirect_stderr(redirected):
        compare([str(trace)], ["5%"], ["lru"], bounds=False)
    assert "1/1" in redirected.getvalue()


def test_a_budget_under_one_percent_is_headed_by_its_own_share_of_peak(tmp_path: Path) -> None:
    # Before: a 0.3% budget was headed "(0% of peak)", and a share rounded to whole bytes read 0.999998%.
    trace = small_trace(tmp_path / "t.trace", nbytes=100_000)  # peak 300,000 bytes
    rows = compare([str(trace)], parse_budgets("0.3%,1%,12.5%"), ["lru"], bounds=False, progress=None)
    headings = [line for line in to_markdown(rows).splitlines() if line.startswith("### ")]
    assert [heading.split("(")[1] for heading in headings] == ["0.3% of peak)", "1% of peak)", "12.5% of peak)"]


@pytest.mark.parametrize(
    ("fraction", "text"),
    [(0.25, "25%"), (0.003, "0.3%"), (0.00999998, "1%"), (0.125, "12.5%"), (1.0, "100%"), (0.0, "0%"), (2.5, "250%")],
)
def test_format_percent(fraction: float, text: str) -> None:
    assert format_percent(fraction) == text


def test_a_byte_count_beyond_int64_means_no_limit() -> None:
    assert parse_bytes("1e30") == parse_bytes(float("inf")) == UNLIMITED == 2**63 - 1
    assert parse_bytes(2**63 - 1) == UNLIMITED and parse_bytes("1 TiB") == 2**40
