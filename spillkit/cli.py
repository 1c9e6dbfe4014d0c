"""The ``spillkit`` command line."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from .cli_compare import add_compare_parser, record_workload, run_compare
from .cli_options import (
    EXIT_BAD_INPUT,
    EXIT_MISSING_EXTRA,
    EXIT_OK,
    EXIT_USAGE,
    BadOption,
    address,
    option,
    output_directory,
    scale,
)

__all__ = ["EXIT_BAD_INPUT", "EXIT_MISSING_EXTRA", "EXIT_OK", "EXIT_USAGE", "main"]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the demo like Ctrl-C: tables printed, spill directories removed


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``spillkit`` command; return the exit status.

    Exit codes: 0 success, 2 bad command line, 3 a missing or malformed input
    file, 4 an optional dependency is not installed.
    """
    parser = argparse.ArgumentParser(prog="spillkit", description="A spill-to-disk cache toolkit.")
    commands = parser.add_subparsers(dest="command", required=True)
    add_compare_parser(commands)
    plot = commands.add_parser("plot", help="draw the figures of a saved comparison (results.csv)")
    plot.add_argument("results", help="a CSV written by spillkit compare")
    plot.add_argument("-o", "--out", default="report", help="directory for the PNG files (default report/)")
    rec = commands.add_parser("record", help="run a built-in dask workload and record its trace")
    rec.add_argument("workload", help="one of spillkit.workloads (anomaly, rechunk, tsqr, matmul, ...)")
    rec.add_argument("-o", "--out", help="trace file (default WORKLOAD.trace.gz)")
    rec.add_argument("--scale", type=scale, default=1.0, help="workload size (default 1.0: 5-30 s here)")
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
        type=address,
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
            return run_compare(args)
        if args.command == "plot":
            from .plot_canvas import import_matplotlib
            from .plots import plot_command

            import_matplotlib()  # before the output directory is made
            for path in plot_command(args.results, output_directory(args.out, "-o")):
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
    except BadOption as error:
        print(f"spillkit {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError) as error:  # TraceError is a ValueError and names file and line
        print(f"spillkit {args.command}: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _record(args: argparse.Namespace) -> int:
    record_workload(args.workload, args.scale, ".", args.budget, args.out or f"{args.workload}.trace.gz")
    return EXIT_OK


def _calibrate(args: argparse.Namespace) -> int:
    from .calibrate import calibrate, save_disk_model
    from .sizes import format_bytes

    if args.save is not None:  # checked before the measuring, which takes seconds and would be lost
        output_directory(os.path.dirname(os.path.abspath(args.save)), "--save")
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
    from .demo import check_arguments
    from .sizes import parse_bytes

    option(check_arguments, args.arrays, args.array_size, args.reads, args.seconds)
    option(parse_bytes, args.budget)
    if args.policy:
        args.policy = option(parse_policies, ",".join(args.policy))  # (lower case, each once)
    print(f"spillkit demo: {args.arrays} arrays of {args.array_size}, budget {args.budget}, {args.reads} reads")
    try:
        return _run_demo(args)
    except MemoryError as error:  # numpy's, for arrays larger than the machine
        raise BadOption(f"cannot make {args.arrays} arrays of {args.array_size}: {error}") from None


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if args.serve_metrics is None:
        run_demo(args.arrays, args.array_size, args.budget, args.reads, policies=args.policy, seconds=args.seconds)
        return EXIT_OK
    from .metrics import instrument, serve

    host, port = args.serve_metrics
    try:
        server = serve(port, host)
    except OSError as error:
        raise BadOption(f"cannot serve metrics at {host}:{port}: {error.strerror or error}") from None
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
