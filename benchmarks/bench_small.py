"""Many small values: 1 KiB values through a 64 MiB budget, packed into segments vs one file each.

Run from the repository root::

    python benchmarks/bench_small.py            # full run, rewrites its section of benchmarks/README.md
    python benchmarks/bench_small.py --quick    # 20,000 / 5,000 values, 2 repetitions

Every contender stores N distinct values of 1 KiB (``bytes``) under string
keys, then reads all of them back in the same order (each checked), with a
memory budget of 64 MiB at a million (about 60,000 of them in memory, and
the same share at smaller N): so most values go to disk and come back. Contenders:

- ``spillkit.Chest`` with small values packed into segment files (the default);
- ``spillkit.Chest(pack_threshold=0)``: one file per spilled value;
- ``zict.Buffer(dict, zict.Func(pickle.dumps, pickle.loads, zict.File(dir)), n=64 MiB)``, weighed with the
  same ``sizeof`` as the Chest;
- ``diskcache.Cache``: every value on disk (values under 32 KiB live in its SQLite file).

The packed Chest runs at ``--big`` values (1,000,000); everyone, the packed
Chest included, runs at ``--small`` values (100,000), because the others cost
many minutes per run at a million (a file per value, and diskcache's SQLite
transaction per set, on this machine). Ratios are taken at the same N,
per repetition (paired), with the contenders in a freshly shuffled order each
time; tables show medians. Files are counted, and bytes summed, right after
the store phase. Cleanup (``drop``/``close`` and removing the directory) is
timed on its own and left out of the totals.
"""

from __future__ import annotations

import argparse
import os
import pickle
import random
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diskcache
import zict

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing spillkit

from bench_core import _fmt_pct, filesystem_of, iqr_pct, machine_info, median, paired_ratio, quiet  # noqa: E402
from readme_section import write_section  # noqa: E402

import spillkit  # noqa: E402
from spillkit.sizeof import default_sizeof  # noqa: E402

MiB = 1 << 20
VALUE_BYTES = 1024
BUDGET = 64 * MiB  # --quick: 2 MiB


def key_of(i: int) -> str:
    return f"key{i:07d}"


def value_of(i: int) -> bytes:
    """A distinct 1 KiB bytes object for ``i`` (made when needed: a million would hold 1 GB)."""
    return i.to_bytes(8, "little") * (VALUE_BYTES // 8)


@dataclass
class Run:
    store_ns: int
    load_ns: int
    cpu_ns: int  # CPU time (user + system) of this process during store and load
    cleanup_ns: int
    files: int  # files under the directory right after the store phase
    disk_bytes: int

    @property
    def total_ns(self) -> int:
        return self.store_ns + self.load_ns


def files_and_bytes(directory: str) -> tuple[int, int]:
    count = size = 0
    for root, _, names in os.walk(directory):
        for name in names:
            count += 1
            size += os.path.getsize(os.path.join(root, name))
    return count, size


def measure(mapping: Any, n: int, directory: str, cleanup: Callable[[], None], name: str) -> Run:
    keys = [key_of(i) for i in range(n)]

    def store() -> int:
        start = time.perf_counter_ns()
        for i, key in enumerate(keys):
            mapping[key] = value_of(i)
        return time.perf_counter_ns() - start

    def load() -> int:
        start = time.perf_counter_ns()
        for i, key in enumerate(keys):
            if mapping[key] != value_of(i):
                raise AssertionError(f"{name}: wrong value for {key}")
        return time.perf_counter_ns() - start

    cpu = time.process_time_ns()
    store_ns = quiet(store)
    cpu = time.process_time_ns() - cpu
    files, disk_bytes = files_and_bytes(directory)
    cpu -= time.process_time_ns()
    load_ns = quiet(load)
    cpu += time.process_time_ns()
    start = time.perf_counter_ns()
    cleanup()
    shutil.rmtree(directory, ignore_errors=True)
    return Run(store_ns, load_ns, cpu, time.perf_counter_ns() - start, files, disk_bytes)


def run_chest(pack_threshold: int | None) -> Callable[[int, str, int], Run]:
    def run(n: int, directory: str, budget: int) -> Run:
        chest = spillkit.Chest(path=directory, available_memory=budget, pack_threshold=pack_threshold)
        result = measure(chest, n, directory, chest.drop, "spillkit.Chest")
        if not chest.stats.spills:
            raise AssertionError("spillkit.Chest: nothing spilled")
        return result

    return run


def run_zict(n: int, directory: str, budget: int) -> Run:
    sizeof = default_sizeof()
    slow = zict.Func(pickle.dumps, pickle.loads, zict.File(directory))
    buffer = zict.Buffer({}, slow, budget, weight=lambda k, v: sizeof(v))
    return measure(buffer, n, directory, buffer.close, "zict.Buffer")


def run_diskcache(n: int, directory: str, budget: int) -> Run:
    cache = diskcache.Cache(directory)
    return measure(cache, n, directory, cache.close, "diskcache.Cache")


PACKED = "spillkit.Chest (packed, default)"
ONE_FILE = "spillkit.Chest(pack_threshold=0) (a file per value)"
ZICT = "zict.Buffer(dict, Func(pickle), File)"
DISKCACHE = "diskcache.Cache (everything on disk)"
RUNNERS: dict[str, Callable[[int, str, int], Run]] = {
    PACKED: run_chest(None),
    ONE_FILE: run_chest(0),
    ZICT: run_zict,
    DISKCACHE: run_diskcache,
}


@dataclass
class Series:
    name: str
    n: int
    budget: int
    runs: list[Run] = field(default_factory=list)

    def values(self, attr: str) -> list[float]:
        return [float(getattr(run, attr)) for run in self.runs]


def bench(
    pairs: list[tuple[str, int]], reps: int, base: str, rng: random.Random, big: int, warmup: int
) -> list[Series]:
    """``reps`` repetitions; in each, every (contender, N) pair runs once, in a shuffled order.

    The budget scales with N (``BUDGET`` at ``big``), so every N keeps the same share of values in memory.
    """
    series = [Series(name, n, BUDGET * n // big) for name, n in pairs]
    for rep in range(-1, reps):  # repetition -1 warms up caches and the allocator at a small N and is dropped
        order = series[:]
        rng.shuffle(order)
        for s in order:
            n = warmup if rep < 0 else s.n
            directory = tempfile.mkdtemp(prefix="small-", dir=base)
            run = RUNNERS[s.name](n, directory, s.budget * n // s.n)
            if rep >= 0:
                s.runs.append(run)
            print(f"  rep {rep + 1}/{reps} {s.name} N={n:,}: {run.total_ns / 1e9:.1f} s", file=sys.stderr)
    return series


def table(series: list[Series]) -> list[str]:
    packed_at = {s.n: s for s in series if s.name == PACKED}
    lines = [
        "| contender | N | budget MiB | store µs/value | load µs/value | store+load s | / packed Chest at this N "
        "| IQR | CPU s | CPU / packed | files after store | MiB on disk | cleanup s |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in sorted(series, key=lambda s: (-s.n, s.name != PACKED, median(s.values("total_ns")))):
        total = s.values("total_ns")
        reference = packed_at.get(s.n)
        cpu = s.values("cpu_ns")
        ratio = "-" if reference is None else f"{paired_ratio(total, reference.values('total_ns')):.2f}x"
        cpu_ratio = "-" if reference is None else f"{paired_ratio(cpu, reference.values('cpu_ns')):.2f}x"
        cells = [
            s.name,
            f"{s.n:,}",
            f"{s.budget / MiB:.1f}",
            f"{median(s.values('store_ns')) / s.n / 1e3:.1f}",
            f"{median(s.values('load_ns')) / s.n / 1e3:.1f}",
            f"{median(total) / 1e9:.1f}",
            ratio,
            _fmt_pct(iqr_pct(total)),
            f"{median(cpu) / 1e9:.1f}",
            cpu_ratio,
            f"{median(s.values('files')):,.0f}",
            f"{median(s.values('disk_bytes')) / MiB:,.0f}",
            f"{median(s.values('cleanup_ns')) / 1e9:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def targets(series: list[Series], big: int, small: int) -> list[str]:
    by = {(s.name, s.n): s for s in series}
    speedup = paired_ratio(by[ONE_FILE, small].values("total_ns"), by[PACKED, small].values("total_ns"))
    cpu_speedup = paired_ratio(by[ONE_FILE, small].values("cpu_ns"), by[PACKED, small].values("cpu_ns"))
    files = median(by[PACKED, big].values("files"))
    per_value = median(by[PACKED, big].values("total_ns")) / big
    per_value_small = median(by[PACKED, small].values("total_ns")) / small
    # both N ran in every repetition: the growth with N is a paired ratio too
    growth = [
        (b / big) / (s / small)
        for b, s in zip(by[PACKED, big].values("total_ns"), by[PACKED, small].values("total_ns"), strict=True)
    ]

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    return [
        f"- packed Chest vs a file per value, store+load wall time at N={small:,} (paired): {speedup:.1f}x faster "
        f"(target ≥ 5x): {verdict(speedup >= 5)}; in CPU time of the process: {cpu_speedup:.1f}x",
        f"- files after storing N={big:,} values packed: {files:,.0f} (target < 1,000): {verdict(files < 1000)}",
        f"- packed Chest per value: {per_value / 1e3:.1f} µs at N={big:,}, {per_value_small / 1e3:.1f} µs at "
        f"N={small:,}; per-value time at N={big:,} / at N={small:,} = {median(growth):.2f}x (paired median, "
        f"{min(growth):.2f}-{max(growth):.2f}; 1x is no growth with N)",
    ]


def _contention(series: list[Series]) -> str:
    """What this run's wall and CPU times say about waiting (measured, not assumed)."""
    wall = sum(sum(s.values("total_ns")) for s in series)
    cpu = sum(sum(s.values("cpu_ns")) for s in series)
    if not cpu:
        return ""
    return (
        f"Wall time was {wall / cpu:.2f}x the process's CPU time over all runs: for {1 - cpu / wall:.0%} of its "
        "wall time the process was not running (waiting for a CPU, for the disk, or for the kernel's own "
        "threads); the CPU columns leave that waiting out."
    )


def render(args: argparse.Namespace, base: str, info: list[str], series: list[Series]) -> str:
    command = shlex.join(["python", "benchmarks/bench_small.py", *args.argv])
    return "\n".join(
        [
            "## Many small values: packed segments vs a file per value (`bench_small.py`)",
            "",
            f"Produced by `{command}` ({'quick' if args.quick else 'full'} run). {args.reps} repetitions after one "
            f"dropped warm-up repetition (N={args.warmup:,}); in each, every contender runs once per N, in a freshly "
            "shuffled order. Times are `time.perf_counter_ns` wall time with the cyclic GC off; the table shows "
            "medians, and ratios are medians of per-repetition (paired) ratios at the same N.",
            "",
            *info,
            "",
            "**Targets**:",
            "",
            *targets(series, args.big, args.small),
            "",
            f"**Workload**: N distinct `bytes` values of {VALUE_BYTES} B under string keys, memory budget "
            f"{BUDGET // MiB} MiB at N={args.big:,} (~{BUDGET // (VALUE_BYTES + 33):,} values) and the same share "
            "of N at smaller N; store all, then read all back in the same order, each checked. The other "
            "contenders run at the smaller N only: at a million they take many minutes per run. zict's `Buffer` "
            "deletes a file when it loads the value and writes it again when it evicts it; the Chest keeps a "
            "loaded value's record, so evicting it again writes nothing. diskcache keeps values under 32 KiB "
            "inside its SQLite database (hence its few files) and nothing in memory. Files and MiB are counted "
            "right after the store phase; cleanup (`drop()` / `close()` and removing the directory) is timed "
            "apart.",
            "",
            *table(series),
            "",
            f"Load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}. {_contention(series)} "
            "The CPU time of the "
            "process (`time.process_time_ns`, user + system) is shown beside the wall time; it leaves out work "
            "the kernel does in its own threads (journal commits, writeback), which a file per value causes more "
            "of. "
            f"All files live on {filesystem_of(base)}, nothing is fsynced (no flush), so the page cache absorbs "
            "the I/O: the comparison is of system calls, directory operations and bookkeeping, which is what many "
            "small files cost. On a shared or network filesystem, where each file creation is a metadata round "
            "trip, a file per value costs far more (dask/dask#5165).",
        ]
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20,000 / 5,000 values, 2 MiB budget, 2 repetitions")
    parser.add_argument("--big", type=int, default=None, help="N for the packed Chest (default 1,000,000)")
    parser.add_argument("--small", type=int, default=None, help="N for every contender (default 100,000)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3)")
    parser.add_argument("--dir", default=None, help="parent directory for the files (default: the temp dir)")
    parser.add_argument("--no-readme", action="store_true", help="print the table only; leave README.md alone")
    parser.add_argument("--seed", type=int, default=12345, help="seed for the contender order")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.big = args.big or (20_000 if args.quick else 1_000_000)
    args.small = args.small or (5_000 if args.quick else 100_000)
    args.reps = args.reps or (2 if args.quick else 3)
    args.warmup = min(args.small, 20_000)
    if args.quick:
        global BUDGET
        BUDGET = 2 * MiB
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    pairs = [(PACKED, args.big)] if args.big != args.small else []
    pairs += [(name, args.small) for name in RUNNERS]
    with tempfile.TemporaryDirectory(prefix="spillkit-bench-small-", dir=args.dir) as base:
        info = machine_info(base)
        series = bench(pairs, args.reps, base, random.Random(args.seed), args.big, args.warmup)
        block = render(args, base, info, series)
        print(block)
        if not args.no_readme:
            write_section("bench_small", block)
            print("\nwrote the table into benchmarks/README.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
