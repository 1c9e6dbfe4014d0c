"""The ``spillkit`` command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["main"]


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
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        print(f"spillkit demo: {args.arrays} arrays of {args.array_size}, budget {args.budget}, {args.reads} reads")
        run_demo(args.arrays, args.array_size, args.budget, args.reads, policies=args.policy)
    return 0
