"""dask.distributed benchmark: a worker's default storage (SpillBuffer) against spillkit's Chest, each policy.

Run from the repository root::

    python benchmarks/bench_distributed.py            # full run, rewrites its section of benchmarks/README.md
    python benchmarks/bench_distributed.py --quick    # smoke run: smaller array, 1 repetition, README untouched

The workload is the one of ``tests/test_distributed.py`` with random data: a
``LocalCluster`` of 2 worker processes (1 thread, 500 MiB memory limit each, on
127.0.0.1) persists a 16,000 x 16,000 float64 array (2.05 GB in 250 chunks of
8 MB, about twice the workers' memory), then computes two reductions over it
one after the other (``x.sum()``, then a row-weighted sum), as an interactive
session over a persisted data set does. Every result is checked against the
same reductions computed locally; a mismatch aborts the run.

Contenders: ``dask default`` (``data=None``: dask's SpillBuffer, zict's LRU over
pickle files, lz4-compressed when lz4 is installed) and ``Chest <policy>``
(``data=(worker_storage, {"policy": p})``) for every registered policy. Each
run gets a fresh cluster (workers forked from a forkserver; start-up is not
timed); repetitions run every contender once, in a freshly shuffled order.
Measured per run: wall time of persist + both passes; bytes written to and
read from spill files by both workers (SpillBuffer: its ``cumulative_metrics``
``disk-write``/``disk-read`` bytes, i.e. ``dask_worker_spill_bytes_total``;
Chest: ``stats.spill_bytes``/``load_bytes``); the peak RSS of either worker
process (psutil, sampled every 10 ms from this process); how often a worker
paused (its log) or was restarted by its nanny (its pid).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing spillkit

import dask  # noqa: E402
import dask.array as da  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
from bench_core import git_revision  # noqa: E402 - after the sys.path setup above
from distributed import Client, LocalCluster, wait  # noqa: E402
from readme_section import write_section  # noqa: E402

import spillkit  # noqa: E402
from spillkit import Chest  # noqa: E402
from spillkit.distributed import worker_storage  # noqa: E402

DASK = "dask default (SpillBuffer)"
MEMORY_LIMIT = "500 MiB"
ROWS = 64
MiB = 2**20
USAGE = """### Using it

```python
from distributed import LocalCluster
from spillkit.distributed import worker_storage

if __name__ == "__main__":  # dask starts worker processes by spawning: a script needs the guard
    cluster = LocalCluster(n_workers=2, memory_limit="1 GiB", data=(worker_storage, {"policy": "cost"}))
# or data=worker_storage (LRU); Worker(..., data=...) and Nanny(..., data=...) take the same
```

Each worker builds its own Chest in `<worker local directory>/spillkit` (removed with the worker). The
budget is what dask gives its SpillBuffer: the worker's memory limit times `distributed.worker.memory.target`
(0.6). The limit is read from the worker's `WorkerMemoryManager`, which calls `data=` from its constructor
right after parsing the limit; pass `memory_limit=` or `available_memory=` to override it.

`dask worker` has no option for `data=`; a preload module sets it:

```
DASK_SPILLKIT__WORKER__POLICY=cost dask worker tcp://scheduler:8786 --memory-limit 8GiB \\
    --preload-nanny spillkit.distributed_preload           # the nanny passes data= to each worker it starts
dask worker tcp://scheduler:8786 --no-nanny --preload spillkit.distributed_preload
```

or by configuration alone (a dask YAML file or `DASK_*` variables): `distributed: {worker: {preload:
[spillkit.distributed_preload]}}` plus `spillkit: {worker: {policy: cost}}` (options: `policy`,
`available-memory`, `available-disk`, `memory-limit`, `instrument-metrics`, `name`). `distributed.nanny.preload` in the
configuration is honoured by nannies made in Python but not by `dask worker`, whose empty `--preload-nanny`
option overrides it. All three command-line forms are tested (`tests/test_distributed.py`).

Metrics: each worker exports its Chest into its own process's Prometheus registry, which the worker's
`/metrics` endpoint (on its dashboard port) serves beside dask's `dask_worker_*` metrics, under
`chest="dask-worker-<worker name>"`. A worker without a name (`dask worker` without `--name`) is labelled
by its scratch directory, `worker-xxxxxxxx`, in the `data=` and `--preload-nanny` forms (its storage is
built before it has an address) and by its address with `--preload`. Scrape every worker; the Grafana dashboard's
**Chest** selector (`label_values(spillkit_chest_info, chest)`) then lists one entry per worker, so
picking `dask-worker-3` shows that worker and "All" overlays them; Prometheus' `instance` label (the
worker's address) tells them apart too. A named worker restarted by its nanny reappears under its label."""


def workload(n: int) -> tuple[Any, Any, Any]:
    """(x, x.sum(), row-weighted sum of x): random float64 data, n x n, chunks of 64 rows."""
    x = da.random.default_rng(0).random((n, n), chunks=(ROWS, n))
    rows = da.arange(1, n + 1, chunks=ROWS, dtype=np.float64)
    return x, x.sum(), (x * rows[:, None]).sum()


def io_counters(dask_worker: Any) -> tuple[float, float]:
    """(bytes written to spill files, bytes read from them) since the worker started."""
    data = dask_worker.data
    if isinstance(data, Chest):
        return data.stats.spill_bytes, data.stats.load_bytes
    metrics = data.cumulative_metrics
    return metrics["disk-write", "bytes"], metrics["disk-read", "bytes"]


class PeakRSS(threading.Thread):
    """Samples the resident set of some processes every 10 ms; ``peak`` is the largest seen."""

    def __init__(self, pids: Sequence[int]) -> None:
        super().__init__(daemon=True)
        self.processes = [psutil.Process(pid) for pid in pids]
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.01):
            for process in self.processes:
                with contextlib.suppress(psutil.Error):
                    self.peak = max(self.peak, process.memory_info().rss)


def worker_cpu(processes: Sequence[psutil.Process]) -> float:
    """User + system CPU seconds of the worker processes so far (a restarted one counts 0)."""
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def storage_options(contender: str) -> dict[str, object]:
    """``worker_storage`` keywords of a contender named ``Chest <policy>`` or ``Chest <policy> read``."""
    words = contender.split()
    return {"policy": words[1], **({"map_loads": False} if words[2:] == ["read"] else {})}


def short(contender: str) -> str:
    """A Chest contender's name in the tables: its policy, and whether its loads read files instead of mapping them."""
    words = contender.split()
    return words[1] + (", map_loads=False" if words[2:] == ["read"] else "")


def run_once(contender: str, n: int, expected: tuple[float, float], directory: str) -> dict[str, float]:
    data = None if contender == DASK else (worker_storage, storage_options(contender))
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            memory_limit=MEMORY_LIMIT,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",  # ":0" listens on every interface
            local_directory=directory,
            silence_logs=logging.ERROR,
            data=data,
        ) as cluster,
        Client(cluster, timeout=60) as client,
    ):
        client.wait_for_workers(2, timeout=60)
        client.submit(np.ones, 3).result(timeout=60)  # warm-up: numpy imported, connections made
        pids = client.run(os.getpid)
        sampler = PeakRSS(list(pids.values()))
        cpu_before = worker_cpu(sampler.processes)
        sampler.start()
        start = time.perf_counter()
        x, total, weighted = workload(n)
        x = client.persist(x)
        wait(x, timeout=600)
        results = [client.compute(total).result(timeout=600), client.compute(weighted).result(timeout=600)]
        wall = time.perf_counter() - start
        cpu = worker_cpu(sampler.processes) - cpu_before
        sampler.done.set()
        sampler.join()
        if not np.allclose(results, expected, rtol=1e-9, atol=0):
            raise SystemExit(f"{contender}: wrong result {results}, expected {expected}")
        counters = client.run(io_counters)
        restarts = sum(pid not in pids.values() for pid in client.run(os.getpid).values())
        logs = client.get_worker_logs()
        pauses = sum("Pausing worker" in line for lines in logs.values() for _, line in lines)
        del x
    return {
        "wall": wall,
        "cpu": cpu,
        "written": sum(w for w, _ in counters.values()),
        "read": sum(r for _, r in counters.values()),
        "peak": sampler.peak,
        "pauses": pauses,
        "restarts": restarts,
    }


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def fmt_ratio(ratios: Sequence[float]) -> str:
    return f"{median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def report(
    runs: dict[str, list[dict[str, float]]],
    n: int,
    reps: int,
    started: str,
    load_start: str,
    minutes: float,
    command: str = "",
) -> str:
    base = runs[DASK]
    rows, walls, writes, cpus, spans = [], {}, {}, {}, {}
    for contender, results in runs.items():
        wall_ratio = [r["wall"] / b["wall"] for r, b in zip(results, base, strict=True)]
        write_ratio = [r["written"] / b["written"] for r, b in zip(results, base, strict=True)]
        cpu_ratio = [r["cpu"] / b["cpu"] for r, b in zip(results, base, strict=True)]
        spans[contender] = wall_ratio
        walls[contender], writes[contender], cpus[contender] = (
            median(wall_ratio),
            median(write_ratio),
            median(cpu_ratio),
        )
        name = f"**{contender}**" if contender == DASK else f"Chest `{short(contender)}`"
        rows.append(
            f"| {name} | {median([r['wall'] for r in results]):.1f} | {fmt_ratio(wall_ratio)} "
            f"| {median([r['cpu'] for r in results]):.1f} | {fmt_ratio(cpu_ratio)} "
            f"| {median([r['written'] for r in results]) / MiB:,.0f} MiB | {fmt_ratio(write_ratio)} "
            f"| {median([r['read'] for r in results]) / MiB:,.0f} MiB "
            f"| {median([r['peak'] for r in results]) / MiB:.0f} MiB "
            f"| {sum(r['pauses'] for r in results)} | {sum(r['restarts'] for r in results)} |"
        )
    chests = [c for c in runs if c != DASK]
    slower = [short(c) for c in chests if walls[c] > 1.0]
    best = min(chests, key=lambda c: writes[c])
    fastest = min(chests, key=lambda c: walls[c])
    nbytes = n * n * 8
    lines = [
        "## dask.distributed workers: Chest as `data=` against dask's SpillBuffer (`bench_distributed.py`)",
        "",
        f"`python benchmarks/bench_distributed.py{command or f' --reps {reps}'}` on {started}: Python "
        f"{platform.python_version()}, "
        f"dask {version('dask')}, distributed {version('distributed')}, numpy {np.__version__}, "
        f"spillkit git {git_revision()}, {os.cpu_count()} CPUs, load average {load_start} at the start and "
        f"{load_average()} at the end (a shared machine), {minutes:.1f} min in all.",
        "",
        f'Workload: `LocalCluster(n_workers=2, threads_per_worker=1, memory_limit="{MEMORY_LIMIT}")` on 127.0.0.1 '
        f"persists a {n:,} x {n:,} random float64 array ({nbytes / 1e9:.2f} GB in chunks of {ROWS} rows, "
        f"{nbytes / (2 * 500 * MiB):.2f}x the workers' memory limits), then computes `x.sum()` and then a "
        "row-weighted sum, each checked against a local computation. Fresh cluster per run; "
        f"{reps} repetitions, contenders in a shuffled order each time. Times and bytes are medians; ratios are "
        "medians of per-repetition ratios to dask's default (min-max in brackets). Written/read: bytes through "
        "spill files, both workers (SpillBuffer: `cumulative_metrics` disk-write/disk-read, i.e. "
        "`dask_worker_spill_bytes_total`; Chest: `stats.spill_bytes`/`load_bytes`). Worker CPU: user + system "
        "seconds of both worker processes over the timed region (less sensitive than wall time to other jobs "
        "on the machine). Peak RSS: the larger worker "
        "process, sampled every 10 ms (a worker starts at ~110 MiB; the nanny kills it at 95% of 500 MiB = "
        '475 MiB). Pauses: "Pausing worker" lines in the workers\' logs (80% of the limit), all repetitions; '
        'restarts: workers whose process changed. Chest rows are `data=(worker_storage, {"policy": p})` with '
        "its defaults, which load files of 1 MiB or more by mapping them (`map_loads`); the `map_loads=False` "
        "rows read them into new memory instead.",
        "",
        "| storage | wall s | x dask | worker CPU s | x dask | written | x dask | read | peak RSS | pauses "
        "| restarts |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        *rows,
        "",
        "### Targets (issue 6)",
        "",
        "- No slower than dask's default (median wall-time ratio <= 1.00): "
        + ("**met** by every policy" if not slower else "**not met** by " + ", ".join(slower))
        + f" (fastest: `{short(fastest)}`, {walls[fastest]:.2f}x); worker CPU time: "
        + ", ".join(f"`{short(c)}` {cpus[c]:.2f}x" for c in chests)
        + "."
        + (
            " Every policy's range of per-repetition wall-time ratios contains 1.00: on this machine the "
            "difference from dask's default is within run-to-run noise."
            if all(min(spans[c]) <= 1.0 <= max(spans[c]) for c in chests)
            else ""
        ),
        f"- Fewer bytes spilled with the best policy: `{short(best)}` wrote {writes[best]:.2f}x dask's bytes: "
        f"**{'met' if writes[best] < 1.0 else 'not met'}**.",
        "",
        USAGE,
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--size", type=int, default=16_000, help="array side (default 16,000: 2.05 GB)")
    parser.add_argument("--policies", nargs="*", default=spillkit.policy_names(), help="default: every policy")
    parser.add_argument("--quick", action="store_true", help="smoke run: --size 8000 --reps 1, README untouched")
    parser.add_argument(
        "--read", nargs="*", default=["lru"], metavar="POLICY", help="also these policies with map_loads=False (lru)"
    )
    parser.add_argument("--no-readme", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    n, reps = (8_000, 1) if args.quick else (args.size, args.reps)
    started, load_start, t0 = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), load_average(), time.time()
    _, total, weighted = workload(n)
    expected = dask.compute(total, weighted, scheduler="threads")
    contenders = [DASK, *(f"Chest {p}" for p in args.policies)]
    contenders += [f"Chest {p} read" for p in args.read]
    runs: dict[str, list[dict[str, float]]] = {c: [] for c in contenders}
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        for rep in range(reps):
            order = random.sample(contenders, len(contenders))
            for contender in order:
                with tempfile.TemporaryDirectory(prefix="spillkit-bench-", dir="/tmp") as directory:
                    result = run_once(contender, n, expected, directory)
                runs[contender].append(result)
                print(f"rep {rep + 1}/{reps} {contender:30} wall {result['wall']:6.1f} s  "
                      f"written {result['written'] / MiB:7,.0f} MiB  peak {result['peak'] / MiB:4.0f} MiB  "
                      f"pauses {result['pauses']:.0f}  restarts {result['restarts']:.0f}", flush=True)  # fmt: skip
    command = "".join(f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv))  # as it was run
    block = report(runs, n, reps, started, load_start, (time.time() - t0) / 60, command)
    print(block)
    if not (args.quick or args.no_readme):
        write_section("bench_distributed", block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
