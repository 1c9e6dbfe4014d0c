"""Compression benchmarks: spill then load through a Chest with compression off, lz4 and zstd.

Run from the repository root::

    python benchmarks/bench_compression.py            # full run, rewrites its section of benchmarks/README.md
    python benchmarks/bench_compression.py --quick    # short run
    python benchmarks/bench_compression.py --no-readme

Two benchmarks, timed with ``time.perf_counter_ns`` (wall) and ``time.thread_time_ns`` (CPU):

1. Spill then load: store N values under a budget of a quarter of them, then
   read them all back in the same order, for several kinds of data
   (compressible integers, mostly-zero floats, smooth floats, random floats,
   a pandas DataFrame) and each ``compression=`` setting. Two disk modes:
   *warm*, what a Chest does (nothing fsynced: writes land in the page cache
   and reads come from it), and *cold*, where the store ends with
   ``flush()`` (every file fsynced) and the files are then dropped from the
   page cache (``posix_fadvise(DONTNEED)``) so every load reads the device.
2. The skip path: encoding and decoding random float64 arrays (which no
   setting compresses) with and without a compressing codec, no disk
   involved: what trying costs when it does not pay.

Every repetition runs every (mode, data, setting) once, best of a few back to
back runs, in a freshly shuffled order after one dropped warm-up repetition.
Tables show medians over repetitions; ratios to "off" are medians of the
per-repetition (paired) ratios. Loaded values are checked equal to the originals.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lz4
import numpy as np
import pandas as pd
import zstandard
from bench_core import filesystem_of, git_revision, iqr_pct, median, paired_ratio, quiet
from compression_findings import tradeoff

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing spillkit

from readme_section import write_section  # noqa: E402 - after the sys.path setup above

import spillkit  # noqa: E402
from spillkit.compression import CompressedCodec  # noqa: E402

MiB = 1 << 20
SETTINGS: dict[str, str | None] = {"off": None, "lz4": "lz4", "zstd (level 1)": "zstd", "zstd:3": "zstd:3"}
MODES = ("warm", "cold")
Ratios = tuple[float, float, float]  # store+load time, CPU time, bytes written: each over compression off's


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------
def _ints(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 1000, n // 8, dtype=np.int64)  # counts, ids, categories coded as integers


def _sparse(rng: np.random.Generator, n: int) -> np.ndarray:
    out = np.zeros(n // 8)
    hit = rng.random(out.size) < 0.05  # a mask or a sparse grid: 95% zeros
    out[hit] = rng.random(int(hit.sum()))
    return out


def _smooth(rng: np.random.Generator, n: int) -> np.ndarray:
    start = rng.random()
    return np.linspace(start, start + 1, n // 8)  # a dask-style coordinate chunk: every float distinct


def _random(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.random(n // 8)


def _frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    rows = n // 40
    return pd.DataFrame(
        {
            "id": np.arange(rows, dtype=np.int64) + int(rng.integers(1 << 30)),
            "count": rng.integers(0, 100, rows),
            "price": np.round(rng.random(rows) * 100, 2),
            "when": pd.date_range("2024-01-01", periods=rows, freq="s"),
            "city": pd.Categorical(rng.choice(["Oslo", "Lima", "Pune", "Kyiv"], rows)),
        }
    )


DATASETS: dict[str, tuple[str, Callable[[np.random.Generator, int], Any]]] = {
    "ints": ("int64 array, values 0-999", _ints),
    "sparse": ("float64 array, 95% zeros", _sparse),
    "smooth": ("float64 `np.linspace` chunk", _smooth),
    "random": ("float64 `rng.random` (incompressible)", _random),
    "frame": ("pandas DataFrame: int ids, small ints, 2-decimal prices, timestamps, a categorical", _frame),
}


def make_values(name: str, nvalues: int, value_bytes: int) -> list[Any]:
    builder = DATASETS[name][1]
    return [builder(np.random.default_rng(1000 + i), value_bytes) for i in range(nvalues)]


def same(a: Any, b: Any) -> bool:
    if isinstance(a, pd.DataFrame):
        return isinstance(b, pd.DataFrame) and a.equals(b)
    return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)


# ---------------------------------------------------------------------------------------------------------------------
# Benchmark 1: spill then load through a Chest
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    store_ns: int
    load_ns: int
    cpu_ns: int  # this thread's CPU time over store and load
    written: int  # bytes written to spill files (headers included)
    read: int

    @property
    def total_ns(self) -> int:
        return self.store_ns + self.load_ns


def drop_from_page_cache(directory: str) -> None:
    """Make the next reads of these files go to the device (they were fsynced, so nothing is lost)."""
    for name in os.listdir(directory):
        fd = os.open(os.path.join(directory, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_chest(values: list[Any], budget: int, setting: str | None, directory: str, cold: bool) -> Run:
    keys = [f"value-{i:04d}" for i in range(len(values))]
    chest = spillkit.Chest(path=directory, available_memory=budget, compression=setting)
    loaded: list[Any] = []
    # Copies that only the Chest will hold: a spilled value still alive elsewhere is handed back
    # without a disk read (live-object reuse), which would time no load at all.
    owned: list[Any] = [value.copy() for value in values]

    def store() -> int:
        start = time.perf_counter_ns()
        for i, key in enumerate(keys):
            chest[key] = owned[i]
            owned[i] = None
        if cold:
            chest.flush()  # every value gets a file, fsynced: the device has the bytes
        return time.perf_counter_ns() - start

    def load() -> int:
        start = time.perf_counter_ns()
        loaded.extend(chest[key] for key in keys)
        return time.perf_counter_ns() - start

    cpu = time.thread_time_ns()
    store_ns = quiet(store)
    cpu = time.thread_time_ns() - cpu
    if cold:
        drop_from_page_cache(directory)
    cpu -= time.thread_time_ns()
    load_ns = quiet(load)
    cpu += time.thread_time_ns()
    if not all(same(a, b) for a, b in zip(values, loaded, strict=True)):
        raise AssertionError(f"compression={setting!r}: a value differs after loading")
    stats = chest.stats
    if stats.loads < len(values) // 2 or stats.reused:
        raise AssertionError(
            f"compression={setting!r}: {stats.loads} loads, {stats.reused} live objects handed back; "
            "too few values went through the disk"
        )
    result = Run(store_ns, load_ns, cpu, stats.spill_bytes, stats.load_bytes)
    chest.drop()
    return result


def bench_spill(args: argparse.Namespace, base: str, rng: random.Random) -> dict[tuple[str, str, str], list[Run]]:
    data = {name: make_values(name, args.nvalues, args.value_mib * MiB) for name in DATASETS}
    budget = args.nvalues * args.value_mib * MiB // 4
    results: dict[tuple[str, str, str], list[Run]] = {}
    combos = [(mode, name, setting) for mode in MODES for name in DATASETS for setting in SETTINGS]
    for rep in range(-1, args.reps):  # repetition -1 warms the page cache and allocator up and is dropped
        rng.shuffle(combos)
        for mode, name, setting in combos:
            runs = []
            for _ in range(args.inner):
                directory = tempfile.mkdtemp(prefix=f"compress-{rep}-", dir=base)
                runs.append(run_chest(data[name], budget, SETTINGS[setting], directory, mode == "cold"))
                shutil.rmtree(directory, ignore_errors=True)
            if rep >= 0:
                results.setdefault((mode, name, setting), []).append(min(runs, key=lambda r: r.total_ns))
        print(f"  spill rep {rep + 1}/{args.reps} done", file=sys.stderr)
    return results


# ---------------------------------------------------------------------------------------------------------------------
# Benchmark 2: what the skip path costs on incompressible data (codec only, no disk)
# ---------------------------------------------------------------------------------------------------------------------
def bench_skip(args: argparse.Namespace, rng: random.Random) -> dict[str, dict[str, list[float]]]:
    """CPU µs per MiB to encode / decode random arrays, per codec; this thread's CPU time, so waits are left out."""
    arrays = make_values("random", args.nvalues, args.value_mib * MiB)
    codecs: dict[str, Any] = {
        "off": spillkit.PickleCodec(),
        "lz4": CompressedCodec(algorithm="lz4"),
        "zstd": CompressedCodec(algorithm="zstd"),
    }
    bodies = {name: [bytearray().join(codec.encode(a)) for a in arrays] for name, codec in codecs.items()}
    if any(
        bytes(body[:4]) != b"SPKZ" or len(body) > a.nbytes + 1024 for body, a in zip(bodies["lz4"], arrays, strict=True)
    ):
        raise AssertionError("random data was not stored raw")
    results: dict[str, dict[str, list[float]]] = {name: {"encode": [], "decode": []} for name in codecs}
    total_mib = args.nvalues * args.value_mib
    loops = 20

    def cpu_us_per_mib(fn: Callable[[], object]) -> float:
        start = time.thread_time_ns()
        for _ in range(loops):
            fn()
        return (time.thread_time_ns() - start) / 1e3 / loops / total_mib

    for rep in range(-1, args.reps):
        order = list(codecs)
        rng.shuffle(order)
        for name in order:
            codec, encoded = codecs[name], bodies[name]
            encode = min(cpu_us_per_mib(lambda c=codec: [c.encode(a) for a in arrays]) for _ in range(args.inner))
            decode = min(
                cpu_us_per_mib(lambda c=codec, e=encoded: [c.decode(memoryview(b)) for b in e])
                for _ in range(args.inner)
            )
            if rep >= 0:
                results[name]["encode"].append(encode)
                results[name]["decode"].append(decode)
    return results


# ---------------------------------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------------------------------
def _ratio(x: float) -> str:
    return f"{x:.2f}x"


def spill_table(results: dict[tuple[str, str, str], list[Run]], mode: str) -> list[str]:
    lines = [
        "| data | compression | store+load ms | x off | IQR | store ms | load ms | CPU x off | written MiB "
        "| written x off |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name in DATASETS:
        off = results[(mode, name, "off")]
        for setting in SETTINGS:
            runs = results[(mode, name, setting)]
            total = [float(r.total_ns) for r in runs]
            cells = [
                name,
                setting,
                f"{median(total) / 1e6:.1f}",
                _ratio(paired_ratio(total, [float(r.total_ns) for r in off])),
                "-" if iqr_pct(total) != iqr_pct(total) else f"{iqr_pct(total):.0f}%",
                f"{median([r.store_ns for r in runs]) / 1e6:.1f}",
                f"{median([r.load_ns for r in runs]) / 1e6:.1f}",
                _ratio(paired_ratio([r.cpu_ns for r in runs], [r.cpu_ns for r in off])),
                f"{median([r.written for r in runs]) / MiB:.1f}",
                _ratio(median([r.written for r in runs]) / median([r.written for r in off])),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def skip_table(results: dict[str, dict[str, list[float]]], spill: dict[tuple[str, str, str], list[Run]]) -> list[str]:
    off = results["off"]
    base = spill[("warm", "random", "off")]
    # the CPU a Chest spends per MiB written in the warm benchmark: the yardstick for the extra cost
    # (CPU, not wall, time: on a busy machine wall time is mostly waiting for a CPU)
    warm_us_per_mib = median([r.cpu_ns / 1e3 / (r.written / MiB) for r in base])
    lines = [
        "| codec | encode CPU µs/MiB | extra µs/MiB | extra / CPU of a warm store+load | decode CPU µs/MiB "
        "| Chest warm store+load on `random`, x off |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for name, chest_setting in (("off", "off"), ("lz4", "lz4"), ("zstd", "zstd (level 1)")):
        r = results[name]
        extra = median([a - b for a, b in zip(r["encode"], off["encode"], strict=True)])
        runs = spill[("warm", "random", chest_setting)]
        chest_ratio = paired_ratio([float(x.total_ns) for x in runs], [float(x.total_ns) for x in base])
        lines.append(
            f"| {name} | {median(r['encode']):.1f} | {extra:+.1f} | {100 * extra / warm_us_per_mib:+.1f}% "
            f"| {median(r['decode']):.1f} | {_ratio(chest_ratio)} |"
        )
    return lines


def cell_ratios(results: dict[tuple[str, str, str], list[Run]]) -> dict[tuple[str, str, str], Ratios]:
    """Per (mode, data, setting other than off): store+load time, CPU time and bytes written, as ratios to off."""
    cells: dict[tuple[str, str, str], Ratios] = {}
    for mode in MODES:
        for name in DATASETS:
            off = results[(mode, name, "off")]
            for setting in list(SETTINGS)[1:]:
                runs = results[(mode, name, setting)]
                cells[(mode, name, setting)] = (
                    paired_ratio([float(r.total_ns) for r in runs], [float(r.total_ns) for r in off]),
                    paired_ratio([r.cpu_ns for r in runs], [r.cpu_ns for r in off]),
                    median([r.written for r in runs]) / median([r.written for r in off]),
                )
    return cells


def verdict(results: dict[tuple[str, str, str], list[Run]]) -> tuple[bool, list[str]]:
    """On by default only if one setting is clearly faster (<= 0.9x) on every compressible data set, both modes,
    and costs at most 5% on random data."""
    lines, any_faster = [], False
    for setting in list(SETTINGS)[1:]:
        worst, best, shrink = 0.0, float("inf"), []
        for mode in MODES:
            for name in DATASETS:
                runs, off = results[(mode, name, setting)], results[(mode, name, "off")]
                ratio = paired_ratio([float(r.total_ns) for r in runs], [float(r.total_ns) for r in off])
                if name != "random":
                    worst, best = max(worst, ratio), min(best, ratio)
                    shrink.append(median([r.written for r in runs]) / median([r.written for r in off]))
        random_ratio = max(
            paired_ratio(
                [float(r.total_ns) for r in results[(mode, "random", setting)]],
                [float(r.total_ns) for r in results[(mode, "random", "off")]],
            )
            for mode in MODES
        )
        faster = worst <= 0.9 and random_ratio <= 1.05
        any_faster |= faster
        lines.append(
            f"- {setting}: store+load on compressible data {best:.2f}x-{worst:.2f}x the time of off, writing "
            f"{min(shrink):.2f}x-{max(shrink):.2f}x the bytes; random data up to {random_ratio:.2f}x the time: "
            f"{'clearly faster' if faster else 'not clearly faster'}"
        )
    return any_faster, lines


def render(
    args: argparse.Namespace,
    base: str,
    spill: dict[tuple[str, str, str], list[Run]],
    skip: dict[str, dict[str, list[float]]],
    started: str,
    load_start: str,
) -> str:
    command = shlex.join(["python", "benchmarks/bench_compression.py", *args.argv])
    on, verdict_lines = verdict(spill)
    busy = ""
    if float(load_start.split(",")[0]) > (os.cpu_count() or 1):
        busy = (
            " The machine was oversubscribed during this run (load average above its CPU count): wall times "
            "include waits for a CPU and their IQRs are wide; the `CPU x off` column is the steadier comparison."
        )
    total = args.nvalues * args.value_mib
    parts = [
        "## Compression: spill then load with lz4 and zstd (`bench_compression.py`)",
        "",
        f"`{command}` on {started}: Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, numpy {np.__version__}, pandas {pd.__version__}, lz4 {lz4.__version__}, "
        f"zstandard {zstandard.__version__}, spillkit git {git_revision()}; spill files on {filesystem_of(base)}. "
        f"Load average {load_start} at the start, {', '.join(f'{x:.2f}' for x in os.getloadavg())} at the end "
        "(a shared machine).",
        "",
        f"Each data set is {args.nvalues} values of {args.value_mib} MiB ({total} MiB) stored into a "
        f"`Chest(available_memory={total // 4} MiB, compression=...)` and read back in the same order "
        f"(so about {total * 3 // 4} MiB is written and read). {args.reps} repetitions after a dropped warm-up, "
        f"best of {args.inner} runs each, every (mode, data, setting) in a freshly shuffled order; "
        "`x off` columns are medians of the per-repetition ratios to compression off. CPU is this thread's time "
        "(compression runs in the caller's thread). Written counts bytes in spill files, headers included." + busy,
        "",
        f"**Decision**: the default stays **{'on' if on else 'off'}**"
        + ("." if on else " (no setting was clearly faster on this machine's disk):"),
        "",
        *verdict_lines,
        "",
        tradeoff(cell_ratios(spill), list(DATASETS), list(SETTINGS)[1:]),
        "",
        "### Warm: what a Chest does (nothing fsynced; the page cache absorbs writes and serves reads)",
        "",
        *spill_table(spill, "warm"),
        "",
        "### Cold: store ends with `flush()` (fsync), files dropped from the page cache before loading",
        "",
        *spill_table(spill, "cold"),
        "",
        f"### The skip path: {args.nvalues} random float64 arrays of {args.value_mib} MiB, codec only",
        "",
        "Each frame is tried on a 64 KiB sample (four 16 KiB pieces) and stored raw when the sample does not "
        "shrink to 90%. Encode and decode CPU time per MiB (this thread's, best of 20 loops; encode leaves raw "
        "frames as views, so plain pickle costs almost nothing), the extra over plain pickle, that extra as a "
        "share of the CPU time a warm store+load of the same data takes per MiB written, and the end-to-end "
        "ratio from the warm table.",
        "",
        *skip_table(skip, spill),
        "",
        "Data sets: " + "; ".join(f"`{name}` = {desc}" for name, (desc, _) in DATASETS.items()) + ".",
    ]
    return "\n".join(parts)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run: fewer values and repetitions")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5, quick 2)")
    parser.add_argument("--inner", type=int, default=2, help="runs per repetition, best kept (default 2)")
    parser.add_argument("--dir", default=None, help="parent directory for spill files (default: the temp dir)")
    parser.add_argument("--no-readme", action="store_true", help="print the tables only; leave README.md alone")
    parser.add_argument("--seed", type=int, default=12345, help="seed for the run order")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.nvalues, args.value_mib = (8, 2) if args.quick else (16, 4)
    args.reps = args.reps or (2 if args.quick else 5)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rng = random.Random(args.seed)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_start = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="spillkit-bench-", dir=args.dir) as base:
        print(f"spill benchmark ({args.reps} reps)...", file=sys.stderr)
        spill = bench_spill(args, base, rng)
        print("skip-path benchmark...", file=sys.stderr)
        skip = bench_skip(args, rng)
        block = render(args, base, spill, skip, started, load_start)
    print(block)
    if not args.no_readme:
        write_section("bench_compression", block)
        print("\nwrote the section into benchmarks/README.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
