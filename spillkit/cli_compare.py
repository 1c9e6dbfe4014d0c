"""``spillkit compare`` and ``spillkit record``: replay traces against every policy, record a workload's trace.

Both check every option, the output location and (for compare) every trace
given before the slow part: recording a workload or replaying takes minutes.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .cli_options import EXIT_OK, BadOption, option, output_directory, scale

__all__ = ["add_compare_parser", "record_workload", "run_compare"]


def add_compare_parser(commands: Any) -> None:
    """The ``compare`` subcommand's parser, added to ``commands``."""
    compare = commands.add_parser(
        "compare", help="replay traces with every policy at several budgets, beside lower bounds"
    )
    compare.add_argument("traces", nargs="*", help="trace files (.trace or .trace.gz)")
    compare.add_argument("--workload", help="record this built-in workload live with dask, then compare")
    compare.add_argument("--scale", type=scale, default=0.25, help="size of --workload (default 0.25)")
    compare.add_argument("--budgets", default="5%,10%,25%,50%", help="%% of peak or sizes (default 5%%,10%%,25%%,50%%)")
    compare.add_argument("--policies", default="all", help="comma-separated policy names, or all (default)")
    compare.add_argument(
        "--modes",
        default="settled",
        help="settled (dask integration), strict (Chest alone), dead-skip; comma list (default settled)",
    )
    compare.add_argument("--no-bounds", action="store_true", help="skip the lower bounds (no SciPy needed)")
    compare.add_argument(
        "-o", "--out", default="report", help="directory for results.csv, results.md and figures (default report/)"
    )
    compare.add_argument("--no-plots", action="store_true", help="do not draw figures")


def run_compare(args: argparse.Namespace) -> int:
    """Run ``spillkit compare``; return the exit status (errors raise, for :func:`spillkit.cli.main`)."""
    from .calibrate import load_disk_model
    from .compare import compare, parse_budgets, parse_policies, to_markdown, write_csv
    from .replay import MODES
    from .trace import read_trace

    traces: list[str] = list(args.traces)
    if not traces and not args.workload:
        raise BadOption("give trace files, or --workload NAME to record one")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise BadOption(f"{f'unknown modes {bad}' if bad else 'no modes given'}; choose from {list(MODES)}")
    budgets, policies = option(parse_budgets, args.budgets), option(parse_policies, args.policies)
    output_directory(args.out, "-o")
    if not args.no_plots:  # before the work: the figures come last
        from .plot_canvas import import_matplotlib

        import_matplotlib()
    # Read once, for the plots too (a trace given as a pipe, /dev/stdin, cannot be read twice), and
    # before a workload is recorded: that can take a while, and a bad trace file would waste it.
    loaded = [read_trace(trace) for trace in traces]
    if args.workload:
        traces.append(record_workload(args.workload, args.scale, os.path.join(args.out, "traces"), "inf"))
        loaded.append(read_trace(traces[-1]))
    rows = compare(loaded, budgets, policies, modes, disk=load_disk_model(), bounds=not args.no_bounds)
    os.makedirs(args.out, exist_ok=True)
    table = to_markdown(rows)
    print(table)
    write_csv(rows, os.path.join(args.out, "results.csv"))
    with open(os.path.join(args.out, "results.md"), "w", encoding="utf-8") as file:
        file.write(table + "\n")
    written = [os.path.join(args.out, name) for name in ("results.csv", "results.md")]
    if not args.no_plots:
        from .plots import plot_all

        written += plot_all(rows, args.out, traces=loaded)
    print("wrote " + ", ".join(written))
    return EXIT_OK


def record_workload(name: str, scale: float, out_dir: str, budget: str, path: str | None = None) -> str:
    """Record the built-in workload ``name`` at ``scale`` into ``path`` (default ``out_dir/NAME.trace.gz``)."""
    from .chest import Chest
    from .dask import costs, record
    from .sizes import parse_bytes
    from .workloads import build

    if budget != "inf":
        option(parse_bytes, budget)
    output_directory(out_dir if path is None else os.path.dirname(path) or ".", "-o")
    if path is not None and os.path.isdir(path):
        raise BadOption(f"-o {path!r} is a directory; give the trace file's name, e.g. {name}.trace.gz")
    try:
        collection = build(name, scale=scale)
    except (ValueError, TypeError, OverflowError, MemoryError) as error:  # (dask's, for a scale far too large)
        detail = str(error) or type(error).__name__
        raise BadOption(f"cannot build the workload {name!r} at --scale {scale:g}: {detail}") from None
    target = path or os.path.join(out_dir, f"{name}.trace.gz")
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    chest = Chest(available_memory=float(budget) if budget == "inf" else budget)
    try:
        with chest, record(target, workload=name, scale=scale), costs(chest):
            collection.compute(scheduler="threads", cache=chest)
    except MemoryError:
        raise BadOption(f"the workload {name!r} at --scale {scale:g} does not fit in memory; try less") from None
    print(f"recorded {name} (scale {scale}) to {target}", file=sys.stderr)
    return target
