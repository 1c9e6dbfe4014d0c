"""The ``spillkit`` command line."""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

__all__ = ["main"]


def _address(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"``, ``"[::1]:9464"`` or ``"9464"`` (on 127.0.0.1) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, e.g. 127.0.0.1:9464, not {text!r}")
    return host, int(port)


def _scale(text: str) -> float:
    """A workload scale: a positive, finite number (dask would fail deep inside on anything else)."""
    try:
        scale = float(text)
    except ValueError:
        scale = math.nan
    if not 0 < scale < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive number like 0.25, not {text!r}")
    return scale


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the demo like Ctrl-C: tables printed, spill directories removed


EXIT_OK, EXIT_USAGE, EXIT_BAD_INPUT, EXIT_MISSING_EXTRA = 0, 2, 3, 4


class _BadOption(ValueError):
    """An option's value that the command cannot use: exit 2 (a bad command line), not 3 (a bad input file)."""


def _option(check: Any, *args: Any, **kwargs: Any) -> Any:
    """``check(*args, **kwargs)``, its ``ValueError`` raised as :class:`_BadOption`."""
    try:
        return check(*args, **kwargs)
    except ValueError as error:
        raise _BadOption(str(error)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``spillkit`` command; return the exit status.

    Exit codes: 0 success, 2 bad command line, 3 a missing or malformed input
    file, 4 an optional dependency is not installed.
    """
    parser = argparse.ArgumentParser(prog="spillkit", description="A spill-to-disk cache toolkit.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_compare(commands)
    plot = commands.add_parser("plot", help="draw the figures of a saved comparison (results.csv)")
    plot.add_argument("results", help="a CSV written by spillkit compare")
    plot.add_argument("-o", "--out", default="report", help="directory for the PNG files (default report/)")
    rec = commands.add_parser("record", help="run a built-in dask workload and record its trace")
    rec.add_argument("workload", help="one of spillkit.workloads (anomaly, rechunk, tsqr, matmul, ...)")
    rec.add_argument("-o", "--out", help="trace file (default WORKLOAD.trace.gz)")
    rec.add_argument("--scale", type=_scale, default=1.0, help="workload size (default 1.0: 5-30 s here)")
    rec.add_argument("--budget", default="inf", help="the Chest's memory budget while recording (default: no limit)")
    cal = commands.add_parser("calibrate", help="measure this disk's spill bandwidth and latency for the cost model")
    cal.add_argument("--dir", help="directory on the disk to measure (default: the temp dir)")
    cal.add_argument("--save", default=None, help="where to save (default ~/.config/spillkit/calibration.json)")
    demo = commands.add_parser("demo", help="fill a Chest past its budget with numpy arrays and print its stats")
    demo.add_argument("--arrays", type=int, default=200, help="number of arrays (default 200)")
    demo.add_argument("--array-size", default="1 MiB", help='bytes per array (default "1 MiB")')
    demo.add_argument("--budget", default="50 MiB", help='memory budget (default "50 MiB")')
    demo.add_argument("--reads", type=int, default=400, help="random reads after filling (default 400)")
    demo.add_argument("--policy", action="append", help="policy to run (repeatable; default: all)")
    demo.add_argument(
        "--serve-metrics",
        metavar="HOST:PORT",
        type=_address,
        help="export Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9464; port 0 picks one) "
        "and repeat the workload, every policy at once, until Ctrl-C",
    )
    demo.add_argument("--seconds", type=float, help="repeat the workload for this many seconds, then stop")
    sweep = commands.add_parser(
        "sweep", help="remove temporary Chest directories left by killed processes (only those whose owner is gone)"
    )
    sweep.add_argument("--dir", help="the temp parent to sweep (default: the system temp dir)")
    sweep.add_argument("--dry-run", action="store_true", help="list the stale directories, remove nothing")
    args = parser.parse_args(argv)
    try:
        if args.command == "compare":
            return _compare(args)
        if args.command == "plot":
            from .plots import plot_command

            for path in plot_command(args.results, args.out):
                print(path)
            return EXIT_OK
        if args.command == "record":
            return _record(args)
        if args.command == "calibrate":
            return _calibrate(args)
        if args.command == "sweep":
            return _sweep(args)
        return _demo(args, demo)
    except ImportError as error:
        print(f"spillkit {args.command}: {error}", file=sys.stderr)
        return EXIT_MISSING_EXTRA
    except _BadOption as error:
        print(f"spillkit {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError) as error:  # TraceError is a ValueError and names file and line
        print(f"spillkit {args.command}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _add_compare(commands: Any) -> None:
    compare = commands.add_parser(
        "compare", help="replay traces with every policy at several budgets, beside lower bounds"
    )
    compare.add_argument("traces", nargs="*", help="trace files (.trace or .trace.gz)")
    compare.add_argument("--workload", help="record this built-in workload live with dask, then compare")
    compare.add_argument("--scale", type=_scale, default=0.25, help="size of --workload (default 0.25)")
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


def _compare(args: argparse.Namespace) -> int:
    from .calibrate import load_disk_model
    from .compare import compare, parse_budgets, parse_policies, to_markdown, write_csv
    from .replay import MODES
    from .trace import read_trace

    traces: list[str] = list(args.traces)
    if not traces and not args.workload:
        raise _BadOption("give trace files, or --workload NAME to record one")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise _BadOption(f"{f'unknown modes {bad}' if bad else 'no modes given'}; choose from {list(MODES)}")
    budgets, policies = _option(parse_budgets, args.budgets), _option(parse_policies, args.policies)
    if args.workload:  # after every option is known good: a workload can take a while to record
        traces.append(_record_workload(args.workload, args.scale, os.path.join(args.out, "traces"), "inf"))
    # Read once, for the plots too: a trace given as a pipe (/dev/stdin) cannot be read twice.
    loaded = [read_trace(trace) for trace in traces]
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


def _record_workload(name: str, scale: float, out_dir: str, budget: str, path: str | None = None) -> str:
    from .chest import Chest
    from .dask import costs, record
    from .sizes import parse_bytes
    from .workloads import build

    if budget != "inf":
        _option(parse_bytes, budget)
    collection = _option(build, name, scale=scale)
    os.makedirs(out_dir, exist_ok=True)
    target = path or os.path.join(out_dir, f"{name}.trace.gz")
    chest = Chest(available_memory=float(budget) if budget == "inf" else budget)
    with chest, record(target, workload=name, scale=scale), costs(chest):
        collection.compute(scheduler="threads", cache=chest)
    print(f"recorded {name} (scale {scale}) to {target}", file=sys.stderr)
    return target


def _record(args: argparse.Namespace) -> int:
    _record_workload(args.workload, args.scale, ".", args.budget, args.out or f"{args.workload}.trace.gz")
    return EXIT_OK


def _calibrate(args: argparse.Namespace) -> int:
    from .calibrate import calibrate, save_disk_model
    from .sizes import format_bytes

    model = calibrate(args.dir)
    path = save_disk_model(model, args.save)
    print(f"write {format_bytes(model.write_bandwidth)}/s, read {format_bytes(model.read_bandwidth)}/s, "
          f"{model.latency * 1e3:.3f} ms per file; saved to {path}")  # fmt: skip
    return EXIT_OK


def _sweep(args: argparse.Namespace) -> int:
    from .tempdirs import stale, sweep_stale

    paths = stale(args.dir) if args.dry_run else sweep_stale(args.dir)
    for path in paths:
        print(path)
    print(f"{'found' if args.dry_run else 'removed'} {len(paths)} stale spillkit directories", file=sys.stderr)
    return EXIT_OK


def _demo(args: argparse.Namespace, demo: argparse.ArgumentParser) -> int:
    from .compare import parse_policies
    from .demo import check_arguments, run_demo
    from .sizes import parse_bytes

    _option(check_arguments, args.arrays, args.array_size, args.reads, args.seconds)
    _option(parse_bytes, args.budget)
    if args.policy:
        _option(parse_policies, ",".join(args.policy))
    print(f"spillkit demo: {args.arrays} arrays of {args.array_size}, budget {args.budget}, {args.reads} reads")
    if args.serve_metrics is None:
        run_demo(args.arrays, args.array_size, args.budget, args.reads, policies=args.policy, seconds=args.seconds)
        return EXIT_OK
    from .metrics import instrument, serve

    host, port = args.serve_metrics
    server = serve(port, host)
    in_main = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    shown = f"[{host}]" if ":" in host else host
    print(f"serving Prometheus metrics at http://{shown}:{server.server_port}/metrics; Ctrl-C to stop", flush=True)
    try:
        run_demo(
            args.arrays,
            args.array_size,
            args.budget,
            args.reads,
            policies=args.policy,
            forever=True,
            seconds=args.seconds,
            on_chest=lambda chest, name: instrument(chest, name=name),
        )
    finally:
        server.shutdown()
        server.server_close()
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    return EXIT_OK
