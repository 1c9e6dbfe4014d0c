"""Re-record the shipped traces: ``python experiments/record_traces.py [names...] [--scale S]``.

Each workload runs once on dask's synchronous scheduler (a deterministic
order) with an unlimited Chest, task timings as costs, and PYTHONHASHSEED=0
(dask's order depends on string hashing), writing
``experiments/traces/<name>.trace.gz``. Budgets are applied later, in replay.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> int:
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    from spillkit import Chest
    from spillkit.dask import costs, record
    from spillkit.trace import read_trace
    from spillkit.workloads import build, workload_names

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", default=workload_names())
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--out", default=os.path.join(HERE, "traces"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name in args.names:
        path = os.path.join(args.out, f"{name}.trace.gz")
        collection = build(name, scale=args.scale, seed=0)
        with Chest(available_memory=10**15) as chest:
            start = time.perf_counter()
            with record(path, workload=name, scale=args.scale, seed=0, scheduler="sync"), costs(chest):
                collection.compute(scheduler="sync", cache=chest)
            seconds = time.perf_counter() - start
        trace = read_trace(path)
        print(
            f"{name:15s} {seconds:6.1f} s  {len(trace.ops):7d} ops  peak {trace.peak_bytes() / 2**20:8.1f} MiB  "
            f"{os.path.getsize(path) / 2**10:7.1f} KiB  -> {os.path.relpath(path)}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
