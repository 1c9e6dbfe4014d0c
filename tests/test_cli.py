"""The spillkit command line, run as a user runs it: exit codes, outputs, errors naming the line."""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from spillkit.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_USAGE, main

TRACES = Path(__file__).parent.parent / "experiments" / "traces"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spillkit", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", ["compare", "plot", "record", "calibrate", "demo"])
def test_every_command_has_help(command: str) -> None:
    done = run(command, "--help")
    assert done.returncode == 0
    assert "usage: spillkit " + command in done.stdout


def test_compare_writes_tables_csv_and_figures(tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = run("compare", str(TRACES / "tsqr.trace.gz"), "--budgets", "10%,50%", "--policies", "lru,nextuse",
               "-o", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "### tsqr, budget" in done.stdout and "bound:foo" in done.stdout
    rows = list(csv.DictReader((out / "results.csv").open()))
    policies = {r["policy"] for r in rows}
    assert {"lru", "nextuse", "bound:foo", "bound:pfoo-l", "belady-size"} <= policies
    for row in rows:
        if not row["policy"].startswith("bound"):
            assert float(row["ratio_to_bound"]) >= 1 - 1e-9  # nothing beats the lower bound
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs and all((out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert "wrote" in done.stdout


def test_plot_redraws_from_a_saved_csv(tmp_path: Path) -> None:
    assert main(["compare", str(TRACES / "tsqr.trace.gz"), "--budgets", "25%", "--policies", "lru",
                 "--no-plots", "-o", str(tmp_path)]) == EXIT_OK  # fmt: skip
    assert main(["plot", str(tmp_path / "results.csv"), "-o", str(tmp_path / "figs")]) == EXIT_OK
    assert list((tmp_path / "figs").glob("*.png"))


def test_malformed_trace_names_the_line(tmp_path: Path) -> None:
    with gzip.open(TRACES / "matmul.trace.gz", "rt") as file:
        lines = file.read().splitlines()
    lines[40] = '["put", 3, 12'
    bad = tmp_path / "bad.trace"
    bad.write_text("\n".join(lines))
    done = run("compare", str(bad), "--no-bounds", "--no-plots", "-o", str(tmp_path))
    assert done.returncode == EXIT_BAD_INPUT
    assert f"{bad}:41:" in done.stderr


def test_missing_trace_and_not_a_trace(tmp_path: Path) -> None:
    done = run("compare", str(tmp_path / "nope.trace"), "--no-plots")
    assert done.returncode == EXIT_BAD_INPUT and "no such trace file" in done.stderr
    other = tmp_path / "other.trace"
    other.write_text(json.dumps({"format": "something-else"}) + "\n")
    done = run("compare", str(other), "--no-plots")
    assert done.returncode == EXIT_BAD_INPUT and "not a spillkit trace" in done.stderr


def test_bad_arguments_are_clear(tmp_path: Path) -> None:
    # Exit 2, a bad command line, as the README says; 3 is for a missing or malformed input file.
    trace = str(TRACES / "tsqr.trace.gz")
    done = run("compare", trace, "--policies", "lru,nosuch", "--no-plots", "-o", str(tmp_path))
    assert done.returncode == EXIT_USAGE and "nosuch" in done.stderr
    done = run("compare", trace, "--modes", "lazy", "--no-plots", "-o", str(tmp_path))
    assert done.returncode == EXIT_USAGE and "lazy" in done.stderr
    for budgets in ("0%", "-5", "lots"):
        done = run("compare", trace, "--budgets", budgets, "--no-plots", "-o", str(tmp_path))
        assert done.returncode == EXIT_USAGE and budgets in done.stderr, done.stderr
    done = run("compare", "--no-plots")
    assert done.returncode == EXIT_USAGE and "--workload" in done.stderr
    done = run("record", "nosuch", "-o", str(tmp_path / "n.trace.gz"))
    assert done.returncode == EXIT_USAGE and "unknown workload 'nosuch'" in done.stderr
    assert run("frobnicate").returncode == EXIT_USAGE


def test_compare_checks_its_options_before_recording_a_workload(tmp_path: Path) -> None:
    # Before: the workload was computed and recorded first, then the typo in --modes was reported.
    for option in (["--modes", "lazy"], ["--policies", "nosuch"], ["--budgets", "0%"]):
        done = run("compare", "--workload", "groupby", "--scale", "0.005", *option, "--no-plots", "-o", str(tmp_path))
        assert done.returncode == EXIT_USAGE, done.stderr
        assert "recorded" not in done.stderr and not (tmp_path / "traces").exists()


def test_record_then_compare_a_live_workload(tmp_path: Path) -> None:
    out = tmp_path / "g.trace.gz"
    assert main(["record", "groupby", "--scale", "0.005", "-o", str(out)]) == EXIT_OK
    from spillkit.trace import read_trace

    trace = read_trace(out)
    assert trace.header["workload"] == "groupby" and trace.dependencies and trace.ops
    assert main(["compare", str(out), "--budgets", "25%", "--policies", "lru", "--no-plots",
                 "-o", str(tmp_path / "r")]) == EXIT_OK  # fmt: skip


def test_calibrate_saves_a_disk_model(tmp_path: Path) -> None:
    target = tmp_path / "calibration.json"
    done = run("calibrate", "--dir", str(tmp_path), "--save", str(target))
    assert done.returncode == 0, done.stderr
    model = json.loads(target.read_text())
    assert model["write_bandwidth"] > 0 and model["read_bandwidth"] > 0 and model["latency"] > 0
    from spillkit.calibrate import load_disk_model

    assert load_disk_model(str(target)).latency == model["latency"]


def test_demo_runs_and_checks_every_value() -> None:
    done = run("demo", "--arrays", "30", "--array-size", "64 KiB", "--budget", "512 KiB", "--reads", "50")
    assert done.returncode == 0, done.stderr
    assert "lru" in done.stdout and "cost" in done.stdout
