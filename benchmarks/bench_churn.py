"""Churn: values spilled, read back and deleted all along, as a long batch job's intermediates are.

Run from the repository root::

    python benchmarks/bench_churn.py            # 7 repetitions, rewrites its section of benchmarks/README.md
    python benchmarks/bench_churn.py --quick    # 1 repetition, README untouched

Each step puts a new 8 MiB float64 array into a cache with room for two of them in
memory (20 MiB) and pops the array put four steps earlier, which by then is on disk:
every value is written once, read back once, and deleted. This is where spare files
(``spillkit/spares.py``) act: a deleted value's file is written over by the next spill
instead of being unlinked, so the kernel neither frees its page-cache pages nor
allocates new ones. The raw yardsticks do the same bytes' I/O with nothing of their own:
a new file per value (written, read into a fresh buffer, unlinked), or a few files
written over in turn. Contenders run back to back in shuffled order in each
repetition; ratios are medians of per-repetition ratios to raw I/O with new files.
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import diskcache
import numpy as np
import zict

import spillkit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import filesystem_of, git_revision
from rawio import read_into, write_whole
from readme_section import write_section

MiB = 1 << 20
VALUE = 8 * MiB
BUDGET = 20 * MiB
LAG = 4  # a value is popped this many puts after its own
SLOTS = LAG + 1  # files the raw in-place yardstick writes over in turn

Step = tuple[Callable[[int, np.ndarray], None], Callable[[int], np.ndarray], Callable[[], None]]


def raw_new(directory: str) -> Step:
    def put(i: int, value: np.ndarray) -> None:
        write_whole(os.path.join(directory, str(i)), value.data.cast("B"))

    def pop(i: int) -> np.ndarray:
        path = os.path.join(directory, str(i))
        out = np.empty(VALUE // 8)
        read_into(path, out.data.cast("B"))
        os.unlink(path)
        return out

    return put, pop, lambda: None


def raw_in_place(directory: str) -> Step:
    paths = [os.path.join(directory, f"slot-{n}") for n in range(SLOTS)]

    def put(i: int, value: np.ndarray) -> None:
        fd = os.open(paths[i % SLOTS], os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            view = value.data.cast("B")
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def pop(i: int) -> np.ndarray:
        out = np.empty(VALUE // 8)
        read_into(paths[i % SLOTS], out.data.cast("B"))
        return out

    return put, pop, lambda: None


def chest(spares: bool, map_loads: bool = False) -> Callable[[str], Step]:
    def make(directory: str) -> Step:
        c = spillkit.Chest(path=os.path.join(directory, "c"), available_memory=BUDGET, map_loads=map_loads)
        if not spares:
            # Every deleted value's file unlinked, as before spares; new files still come from the blanks
            # made ahead (spillkit/blanks.py), which came later: not the whole code before spares.
            c._store.inner._spares.min_size = 1 << 62

        def put(i: int, value: np.ndarray) -> None:
            c[i] = value

        return put, c.pop, c.drop

    return make


def zict_buffer(directory: str) -> Step:
    buffer: zict.Buffer[str, Any] = zict.Buffer(
        {}, zict.Func(pickle.dumps, pickle.loads, zict.File(directory)), BUDGET, weight=lambda k, v: v.nbytes
    )

    def put(i: int, value: np.ndarray) -> None:
        buffer[str(i)] = value

    return put, lambda i: buffer.pop(str(i)), buffer.close


def diskcache_cache(directory: str) -> Step:
    cache = diskcache.Cache(directory)

    def put(i: int, value: np.ndarray) -> None:
        cache[i] = value

    return put, cache.pop, cache.close


CONTENDERS: dict[str, Callable[[str], Step]] = {
    "raw file I/O, a new file per value (the yardstick)": raw_new,
    "raw file I/O, written over 5 files in turn": raw_in_place,
    "**Chest** (default: spare files)": chest(spares=True),
    "Chest without spare files (blank files still made ahead)": chest(spares=False),
    "Chest, `map_loads=True` (loaded values map their files: not reused)": chest(spares=True, map_loads=True),
    "zict.Buffer (LRU, pickle, zict.File)": zict_buffer,
    "diskcache.Cache (every value on disk)": diskcache_cache,
}


def run(make: Callable[[str], Step], arrays: list[np.ndarray], steps: int, base: str) -> float:
    directory = tempfile.mkdtemp(prefix="churn-", dir=base)
    put, pop, close = make(directory)
    try:
        start = time.perf_counter()
        for i in range(steps):
            put(i, arrays[i % len(arrays)].copy())  # a copy only the cache holds: nothing else keeps it alive
            if i >= LAG:
                got = pop(i - LAG)
                if got[0] != arrays[(i - LAG) % len(arrays)][0]:
                    raise AssertionError(f"value {i - LAG} came back wrong")
        return time.perf_counter() - start
    finally:
        close()
        shutil.rmtree(directory, ignore_errors=True)


def measure(steps: int, reps: int, base: str, seed: int) -> dict[str, list[float]]:
    arrays = [np.random.default_rng(n).random(VALUE // 8) for n in range(8)]
    rng = random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for rep in range(-1, reps):  # repetition -1 warms the page cache and allocator up and is dropped
        names = list(CONTENDERS)
        rng.shuffle(names)
        for name in names:
            seconds = run(CONTENDERS[name], arrays, steps, base)
            if rep >= 0:
                times[name].append(seconds)
        print(f"rep {rep + 1}/{reps} done", file=sys.stderr)
    return times


def report(times: dict[str, list[float]], steps: int, reps: int, base: str, command: str = "") -> str:
    yardstick = times[next(iter(CONTENDERS))]
    gib = steps * VALUE / (1 << 30)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        "## Churn: spill, read back, delete (`bench_churn.py`)",
        "",
        f"`python benchmarks/bench_churn.py{command or f' --reps {reps}'}` on {time.strftime('%Y-%m-%d')}: Python "
        f"{platform.python_version()}, spillkit git {git_revision()}, {os.cpu_count()} CPUs, load average {load} "
        f"at the end (a shared machine); files on {filesystem_of(base)}.",
        "",
        f"{steps} steps: put an 8 MiB array (a fresh copy), pop the one put {LAG} steps before; memory for two "
        f"(20 MiB budget), so each value is written once and read once: {gib:.2f} GiB each way. `x raw` is the "
        "median of per-repetition ratios to raw I/O with a new file per value (min-max in brackets).",
        "",
        "| contender | median s | best s | x raw |",
        "|---|--:|--:|--:|",
    ]
    for name, series in times.items():
        ratios = [a / b for a, b in zip(series, yardstick, strict=True)]
        lines.append(
            f"| {name} | {statistics.median(series):.3f} | {min(series):.3f} | "
            f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |"
        )
    spares = [a / b for a, b in zip(times[list(CONTENDERS)[2]], times[list(CONTENDERS)[3]], strict=True)]
    lines += [
        "",
        f"Chest with spare files / without = **{statistics.median(spares):.2f}x** (paired median, "
        f"{min(spares):.2f}-{max(spares):.2f}).",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150, help="puts per run (default 150: 1.17 GiB each way)")
    parser.add_argument("--reps", type=int, default=7, help="repetitions (default 7)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffled order")
    parser.add_argument("--quick", action="store_true", help="1 repetition of 40 steps; README untouched")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.reps = 40, 1
    base = tempfile.mkdtemp(prefix="spillkit-bench-churn-")
    try:
        command = "".join(f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv))  # as it was run
        text = report(measure(args.steps, args.reps, base, args.seed), args.steps, args.reps, base, command)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(text)
    if not args.quick:
        write_section("bench_churn", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
