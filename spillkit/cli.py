"""The ``spillkit`` command line."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Sequence
from types import FrameType

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


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the demo like Ctrl-C: tables printed, spill directories removed


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``spillkit`` command; return the exit status."""
    parser = argparse.ArgumentParser(prog="spillkit", description="A spill-to-disk cache toolkit.")
    commands = parser.add_subparsers(dest="command", required=True)
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
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        print(f"spillkit demo: {args.arrays} arrays of {args.array_size}, budget {args.budget}, {args.reads} reads")
        if args.serve_metrics is None:
            run_demo(args.arrays, args.array_size, args.budget, args.reads, policies=args.policy, seconds=args.seconds)
            return 0
        try:
            from .metrics import instrument, serve
        except ImportError as error:
            demo.error(str(error))
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
    return 0
