"""How much more memory costs the first time it is touched after sitting free: a property of the machine.

Run from the repository root::

    python benchmarks/bench_first_touch.py            # 3 repetitions, rewrites its section of benchmarks/README.md
    python benchmarks/bench_first_touch.py --quick    # 1 repetition, 1 s idle, README untouched

Some virtual machines give free guest memory back to the host (virtio-balloon
free page reporting, DAMON page-out): the next touch of such a page faults in
the host too. Then writing a spill file (which takes page-cache pages) and
allocating a fresh array both cost several times more after the machine sat
idle than right after memory was freed. Every spilling cache and the plain
dict it is compared with pay this, each for a different amount of memory,
so it decides much of the noise in ``bench_dask.py``. Each repetition: idle
for ``--idle`` seconds, then write ``--mib`` MiB as 8 MiB files and delete
them (cold), at once again (warm); idle, then fill a fresh array of the same
size (cold), and again (warm). Medians over repetitions; no spillkit code runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rawio import write_whole
from readme_section import write_section

FILE = 8 << 20


def write_files(directory: str, nbytes: int, source: memoryview) -> float:
    """Seconds to write ``nbytes`` as 8 MiB files (``rawio.write_whole``); the files are then removed, untimed."""
    paths = [os.path.join(directory, f"touch-{i}") for i in range(nbytes // FILE)]
    start = time.perf_counter()
    for path in paths:
        write_whole(path, source)
    seconds = time.perf_counter() - start
    for path in paths:
        os.unlink(path)
    return seconds


def fill_array(nbytes: int) -> float:
    """Seconds to allocate and fill a fresh array of ``nbytes`` (its pages are touched for the first time)."""
    start = time.perf_counter()
    array = np.ones(nbytes // 8)
    seconds = time.perf_counter() - start
    del array
    return seconds


def measure(mib: int, idle: float, reps: int) -> dict[str, list[float]]:
    nbytes = mib << 20
    source = memoryview(np.random.default_rng(0).integers(0, 255, FILE, dtype=np.uint8)).cast("B")
    runs: dict[str, list[float]] = {"files cold": [], "files warm": [], "array cold": [], "array warm": []}
    with tempfile.TemporaryDirectory(prefix="spillkit-touch-") as directory:
        for rep in range(reps):
            time.sleep(idle)
            runs["files cold"].append(write_files(directory, nbytes, source))
            runs["files warm"].append(write_files(directory, nbytes, source))
            time.sleep(idle)
            runs["array cold"].append(fill_array(nbytes))
            runs["array warm"].append(fill_array(nbytes))
            print(f"rep {rep + 1}/{reps}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in runs.items()), file=sys.stderr)
    return runs


def report(runs: dict[str, list[float]], args: argparse.Namespace) -> str:
    mib = args.mib
    lines = [
        "## First touch of memory on this machine (`bench_first_touch.py`)",
        "",
        f"`python benchmarks/bench_first_touch.py --mib {mib} --idle {args.idle:g} --reps {args.reps}` on "
        f"{time.strftime('%Y-%m-%d')}: Python {platform.python_version()}, {os.cpu_count()} CPUs. No spillkit code "
        f"runs. Cold: after {args.idle:g} s idle; warm: at once again, into the memory the cold round just freed. "
        "Medians over repetitions (min-max in brackets).",
        "",
        "| what | cold s | warm s | cold / warm | cold GiB/s | warm GiB/s |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for what, label in (("files", f"write {mib} MiB as 8 MiB files"), ("array", f"fill a fresh {mib} MiB array")):
        cold, warm = runs[f"{what} cold"], runs[f"{what} warm"]
        ratios = [c / w for c, w in zip(cold, warm, strict=True)]
        gib = mib / 1024
        lines.append(
            f"| {label} | {statistics.median(cold):.2f} | {statistics.median(warm):.2f} | "
            f"{statistics.median(ratios):.1f}x ({min(ratios):.1f}-{max(ratios):.1f}) | "
            f"{gib / statistics.median(cold):.2f} | {gib / statistics.median(warm):.2f} |"
        )
    lines += [
        "",
        "Where cold / warm is well above 1, the machine gives idle memory back to its host, and whichever run "
        "touches more fresh memory pays more: the unlimited dict of `bench_dask.py` touches its whole peak, a "
        "Chest its budget plus the page cache of what it spills. Read the dask ratios with that in mind.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=1024, help="bytes per round, in MiB (default 1024)")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds idle before each cold round (default 30)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--quick", action="store_true", help="1 repetition of 256 MiB after 1 s idle; README untouched")
    args = parser.parse_args(argv)
    if args.quick:
        args.mib, args.idle, args.reps = 256, 1.0, 1
    runs = measure(args.mib, args.idle, args.reps)
    text = report(runs, args)
    print(text)
    if not args.quick:
        write_section("bench_first_touch", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
