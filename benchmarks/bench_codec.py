"""Encoding cost: spillkit's PickleCodec.encode against plain ``pickle.dumps`` and ``cloudpickle.dumps``.

PickleCodec pickles with protocol 5 and out-of-band buffers, as ``pickle.dumps(value, protocol=5,
buffer_callback=...)`` does, and adds what spillkit needs: a frame table, and broadcast numpy arrays
kept broadcast (``spillkit/broadcasts.py``), which takes a pickler of its own for any value that may
hold one. This measures what that costs per value, against the peers a spill cache would otherwise
call: ``pickle.dumps`` (zict's default ``pickle``-based File) and ``cloudpickle.dumps``. All three
run in one process, interleaved, ``--reps`` times; the table shows medians of per-repetition ratios.

Usage: ``python benchmarks/bench_codec.py [--reps 7] [--no-write]``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pickle
import platform
import statistics
import sys
import timeit
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle
import numpy as np
import pandas as pd
from bench_core import git_revision
from readme_section import write_section

from spillkit import PickleCodec


def values() -> dict[str, Any]:
    return {
        "int": 12345,
        "bytes, 1 KiB": b"x" * 1024,
        "small dict": {"a": 1, "b": "x"},
        "list of 10 ints": list(range(10)),
        "array, 1 KiB": np.ones(128),
        "array, 8 MB": np.ones(10**6),
        "list of 3 arrays": [np.ones(100)] * 3,
        "dict of 10 arrays": {i: np.ones(100) for i in range(10)},
        "DataFrame, 1000 x 3": pd.DataFrame({"a": range(1000), "b": 1.0, "c": "x"}),
        "broadcast, 32 MB": np.broadcast_to(np.float64(1.0), (1000, 4000)),
    }


def contenders() -> dict[str, Callable[[Any], Any]]:
    codec = PickleCodec()

    def keep(buffer: pickle.PickleBuffer) -> bool:
        return buffer.raw().nbytes < 64 * 1024  # out of band from 64 KiB, as PickleCodec's default

    return {
        "PickleCodec.encode": codec.encode,
        "pickle.dumps": lambda v: pickle.dumps(v, protocol=5, buffer_callback=keep),
        "cloudpickle.dumps": lambda v: cloudpickle.dumps(v, protocol=5, buffer_callback=keep),
    }


def per_call(function: Callable[[Any], Any], value: Any) -> float:
    """Microseconds per call: the median of 5 timings of enough calls to take about 20 ms."""
    calls, elapsed = 1, 0.0
    while elapsed < 0.02:
        calls *= 2
        elapsed = timeit.timeit(lambda: function(value), number=calls)
    return statistics.median(timeit.repeat(lambda: function(value), number=calls, repeat=5)) / calls * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--no-write", action="store_true", help="print the table, leave benchmarks/README.md")
    args = parser.parse_args(argv)
    cases, runs = values(), contenders()
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.reps):
        for name, value in cases.items():
            for contender, function in runs.items():  # interleaved: the machine's noise hits all three alike
                times.setdefault((name, contender), []).append(per_call(function, value))
    lines = [
        "## Encoding: PickleCodec against pickle and cloudpickle (`bench_codec.py`)",
        "",
        f"`python benchmarks/bench_codec.py --reps {args.reps}` on "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC: Python {platform.python_version()}, "
        f"numpy {np.__version__}, pandas {pd.__version__}, cloudpickle {cloudpickle.__version__}, "
        f"spillkit git {git_revision()}, "
        f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end.",
        "",
        "Microseconds per value (medians over the repetitions); `x pickle` and `x cloudpickle` are medians of "
        "per-repetition ratios of PickleCodec.encode to each. The broadcast row is where the codec does more: "
        "it writes 8 bytes of elements, not 32 MB.",
        "",
        "| value | PickleCodec.encode µs | pickle.dumps µs | cloudpickle.dumps µs | x pickle | x cloudpickle |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for name in cases:
        ours, plain, cloud = (times[name, c] for c in runs)
        ratio_plain = statistics.median(a / b for a, b in zip(ours, plain, strict=True))
        ratio_cloud = statistics.median(a / b for a, b in zip(ours, cloud, strict=True))
        lines.append(  # (#.3g: three digits always, 0.530 beside 0.526, not 0.53)
            f"| {name} | {statistics.median(ours):.2f} | {statistics.median(plain):.2f} | "
            f"{statistics.median(cloud):.2f} | {ratio_plain:#.3g} | {ratio_cloud:#.3g} |"
        )
    block = "\n".join(lines)
    print(block)
    if not args.no_write:
        write_section("bench_codec", block)
        print("wrote the table into benchmarks/README.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
