"""Replay throughput: requests per second per policy on the largest shipped trace, beside libCacheSim.

``python benchmarks/bench_replay.py [--reps 5]`` replays the shipped trace with
the most requests through ``spillkit.replay.replay`` (the real SpillEngine with
size-only tiers) for every registered policy at 25% of the trace's peak bytes,
and drives libCacheSim's LRU from a Python loop over the same requests
(``cache.get(request)`` per request: the cost a Python user of libCacheSim pays).
Policies and libCacheSim alternate within each repetition; medians are
reported. Writes its table into benchmarks/README.md between markers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from readme_section import write_section

from spillkit import policy_names
from spillkit.replay import replay
from spillkit.trace import Trace, read_trace

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"lru": 500_000, "fifo": 500_000, "sieve": 500_000}
DEFAULT_TARGET = 200_000


def libcachesim_rate(trace: Trace, budget: int) -> float | None:
    """Requests per second of libCacheSim's LRU driven request by request from Python."""
    try:
        import libcachesim as lcs
    except ImportError:
        return None
    ids: dict[object, int] = {}
    sizes: dict[object, int] = {}
    requests = []
    for op in trace.requests():
        if op[0] == "put":
            sizes[op[1]] = op[2]
        if op[0] in ("put", "get") and op[1] in sizes:
            requests.append((ids.setdefault(op[1], len(ids) + 1), sizes[op[1]]))
    cache = lcs.LRU(budget)
    request = lcs.Request()
    get = cache.get
    start = time.perf_counter()
    for obj, size in requests:
        request.obj_id = obj
        request.obj_size = size
        get(request)
    return len(requests) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--mode", default="settled")
    parser.add_argument("--no-readme", action="store_true")
    args = parser.parse_args()
    paths = sorted((REPO / "experiments" / "traces").glob("*.trace.gz"))
    traces = {p: read_trace(p) for p in paths}
    path, trace = max(traces.items(), key=lambda item: len(list(item[1].requests())))
    budget = trace.peak_bytes() // 4
    rates: dict[str, list[float]] = {name: [] for name in policy_names()}
    rates["libCacheSim LRU (Python loop)"] = []
    for _ in range(args.reps):
        for name in policy_names():
            result = replay(trace, name, budget, mode=args.mode)
            rates[name].append(result.requests / result.replay_seconds)
        rate = libcachesim_rate(trace, budget)
        if rate is not None:
            rates["libCacheSim LRU (Python loop)"].append(rate)
    lru = statistics.median(rates["lru"])
    lines = [
        f"`python benchmarks/bench_replay.py --reps {args.reps}` on {dt.date.today()}: Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}. Trace "
        f"`{path.name}` ({len(list(trace.requests()))} requests), budget 25% of its peak, mode `{args.mode}`; "
        f"medians of {args.reps} repetitions.",
        "",
        "| replay | requests/s | / spillkit LRU | target | |",
        "| --- | --: | --: | --: | --- |",
    ]
    for name, values in rates.items():
        if not values:
            lines.append(f"| {name} | not installed | | | |")
            continue
        rate = statistics.median(values)
        target = None if name.startswith("libCacheSim") else TARGETS.get(name, DEFAULT_TARGET)
        verdict = "" if target is None else ("met" if rate >= target else "not met")
        lines.append(f"| {name} | {rate:,.0f} | {rate / lru:.2f}x | {'' if target is None else f'{target:,}'} "
                     f"| {verdict} |")  # fmt: skip
    table = "\n".join(lines)
    print(table)
    if not args.no_readme:
        write_section("bench_replay", f"## Replay throughput (`bench_replay.py`)\n\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
