"""Metrics benchmarks: what Prometheus instrumentation costs a Chest.

Run from the repository root::

    python benchmarks/bench_metrics.py            # full run, rewrites its section of benchmarks/README.md
    python benchmarks/bench_metrics.py --quick    # short run
    python benchmarks/bench_metrics.py --no-readme

Two measurements, timed with ``time.perf_counter_ns`` (wall):

1. The in-memory get/set loop (every key resident: overwrite each key, then
   read each key, several passes) on a plain Chest and on a Chest instrumented
   with ``spillkit.metrics.instrument``. Target: at most 1.1x slower (wall). Each
   repetition builds both Chests fresh and times them in a shuffled order; the
   result is the median of the per-repetition (paired) ratios.
2. One scrape, ``generate_latest(registry)``, of a registry holding 10
   instrumented Chests that have spilled, loaded and missed (so every series
   and histogram bucket is filled). Target: under 5 ms (median wall time). A
   few cache reads run between scrapes, so every scrape reads changed numbers.
   Each round also scrapes a reference registry of prometheus_client's own
   Gauge and Histogram, the two in a shuffled order, for a paired CPU-time
   ratio to what prometheus_client's formatting costs anyway.

Both are also timed in CPU time of this thread (``time.thread_time_ns``); a
target missed in wall time is reported as not met, with the CPU time beside it.

The cyclic garbage collector is off while timing.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing spillkit

from bench_core import git_revision  # noqa: E402 - after the sys.path setup above
from readme_section import write_section  # noqa: E402

import spillkit  # noqa: E402
from spillkit.metrics import instrument  # noqa: E402
from spillkit.stats import LATENCY_BOUNDS  # noqa: E402

README = Path(__file__).resolve().parent / "README.md"


Timing = tuple[float, float]  # (wall seconds, CPU seconds of this thread)


@dataclass
class Scrape:
    """Per-scrape timings of the instrumented Chests' registry and of the reference; (samples, bytes) of each."""

    chests: list[Timing]
    reference: list[Timing]
    size: tuple[int, int]
    reference_size: tuple[int, int]


def timed(fn: Callable[[], object]) -> Timing:
    """Wall and CPU (this thread) seconds ``fn()`` takes with the cyclic GC off."""
    gc.collect()
    gc.disable()
    try:
        cpu, wall = time.thread_time_ns(), time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - wall) / 1e9, (time.thread_time_ns() - cpu) / 1e9
    finally:
        gc.enable()


def get_set_loop(chest: spillkit.Chest, keys: list[str], values: list[bytes], passes: int) -> None:
    for _ in range(passes):
        for key, value in zip(keys, values, strict=True):
            chest[key] = value
        for key in keys:
            chest[key]


def bench_loop(nkeys: int, passes: int, reps: int, inner: int, rng: random.Random) -> dict[str, list[Timing]]:
    """Per repetition, the best of ``inner`` runs for the plain and the instrumented Chest."""
    keys = [f"key-{i}" for i in range(nkeys)]
    values = [os.urandom(100) for _ in range(nkeys)]
    times: dict[str, list[Timing]] = {"plain": [], "instrumented": []}
    for _ in range(reps):
        order = list(times)
        rng.shuffle(order)
        for variant in order:
            registry = CollectorRegistry()
            with spillkit.Chest(available_memory=1 << 40) as chest:
                if variant == "instrumented":
                    instrument(chest, registry, name="bench")
                get_set_loop(chest, keys, values, 1)  # warm up: every key inserted
                runs = [timed(lambda c=chest: get_set_loop(c, keys, values, passes)) for _ in range(inner)]
                times[variant].append((min(w for w, _ in runs), min(c for _, c in runs)))
                if chest.stats.loads or len(chest.inmem) != nkeys:
                    raise AssertionError("something spilled in the in-memory benchmark")
    return times


def reference_registry(nchests: int) -> CollectorRegistry:
    """The same series from prometheus_client's own Gauge and Histogram: what any exporter pays per scrape."""
    registry = CollectorRegistry()
    gauge = Gauge("reference_value", "19 plain series per Chest", ["chest", "series"], registry=registry)
    histogram = Histogram(
        "reference_seconds", "2 histograms per Chest", ["chest", "activity"], buckets=LATENCY_BOUNDS, registry=registry
    )
    for i in range(nchests):
        for series in range(19):
            gauge.labels(f"chest-{i}", str(series)).set(series)
        for activity in ("disk-read", "disk-write"):
            histogram.labels(f"chest-{i}", activity).observe(0.001)
    return registry


def samples_and_bytes(registry: CollectorRegistry) -> tuple[int, int]:
    return sum(len(metric.samples) for metric in registry.collect()), len(generate_latest(registry))


def bench_scrape(nchests: int, scrapes: int, rng: random.Random) -> Scrape:
    """Wall and CPU seconds per scrape of ``nchests`` busy instrumented Chests and of the reference registry.

    Each round scrapes both, in a shuffled order, so their ratio is paired per round.
    """
    registry = CollectorRegistry()
    chests = []
    for i in range(nchests):
        chest = spillkit.Chest(available_memory=50_000, policy=spillkit.policy_names()[i % 4])
        instrument(chest, registry, name=f"chest-{i}")
        for k in range(200):
            chest[k] = os.urandom(1_000)
        for _ in range(200):
            chest[rng.randrange(200)]
        chest.get("absent")
        chests.append(chest)
    reference = reference_registry(nchests)
    result = Scrape([], [], samples_and_bytes(registry), samples_and_bytes(reference))
    for _ in range(scrapes):
        for chest in chests:  # change the numbers between scrapes (not timed)
            chest[rng.randrange(200)]
        order = [(registry, result.chests), (reference, result.reference)]
        rng.shuffle(order)
        for scraped, into in order:
            into.append(timed(lambda r=scraped: generate_latest(r)))
    for chest in chests:
        chest.close()
    return result


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def paired(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Median of the per-repetition ratios b/a, with the quartiles."""
    ratios = [y / x for x, y in zip(a, b, strict=True)]
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    q = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), q[0], q[2]


def verdict(wall_ok: bool, cpu: str) -> str:
    """Met or not on wall time (the targets are wall-time ones); a miss names the CPU time beside it."""
    return "met" if wall_ok else f"**not met** (wall); {cpu}"


def noise_sentence(ratio: tuple[float, float, float]) -> str:
    """What the paired ratio's quartiles say, computed, not assumed."""
    mid, low, high = ratio
    if low <= 1 <= high:
        return (
            f"In this run the paired wall-time ratio's quartiles ({low:.2f}-{high:.2f}) include 1: the difference "
            "between the two Chests is within the run's noise."
        )
    return (
        f"In this run the paired wall-time ratio's quartiles ({low:.2f}-{high:.2f}) exclude 1: the instrumented "
        f"Chest's loop took {mid:.3f}x the plain one's."
    )


def render(args: argparse.Namespace, loop: dict[str, list[Timing]], scrape: Scrape) -> str:
    ops = 2 * args.keys * args.passes
    wall = {k: [w for w, _ in v] for k, v in loop.items()}
    cpu = {k: [c for _, c in v] for k, v in loop.items()}
    wall_ratio = paired(wall["plain"], wall["instrumented"])
    cpu_ratio = paired(cpu["plain"], cpu["instrumented"])
    samples, size = scrape.size
    ref_samples, _ = scrape.reference_size
    scrape_wall = median([w for w, _ in scrape.chests]) * 1e3
    scrape_cpu = median([c for _, c in scrape.chests]) * 1e3
    scrape_p90 = statistics.quantiles([w for w, _ in scrape.chests], n=10)[-1] * 1e3
    ref_wall = median([w for w, _ in scrape.reference]) * 1e3
    ref_cpu = median([c for _, c in scrape.reference]) * 1e3
    # CPU time: a scrape takes milliseconds, so waits for a CPU on a busy machine swamp its wall time
    to_reference = paired([c for _, c in scrape.reference], [c for _, c in scrape.chests])

    def loop_row(variant: str) -> str:
        w, c = median(wall[variant]), median(cpu[variant])
        return f"| {w * 1e3:.1f} ms ({w / ops * 1e9:.0f} ns/op) | {c * 1e3:.1f} ms ({c / ops * 1e9:.0f} ns/op) | | |"

    loop_verdict = verdict(wall_ratio[0] <= 1.1, f"CPU-time ratio {cpu_ratio[0]:.3f}x")
    scrape_verdict = verdict(scrape_wall < 5, f"CPU time {scrape_cpu:.2f} ms")
    return "\n".join(
        [
            "## Metrics (Prometheus instrumentation)",
            "",
            f"`{' '.join(['python benchmarks/bench_metrics.py', *args.argv])}` on {time.strftime('%Y-%m-%d')}: "
            f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, spillkit git "
            f"{git_revision()}, load average {args.load:.1f} when it started. {args.reps} repetitions, the two "
            f"Chests in shuffled order each time, best of {args.inner} runs each; medians. Each of the "
            f"{args.scrapes} scrape rounds scrapes the Chests' registry and the reference in a shuffled order. CPU "
            "time is this thread's (`time.thread_time_ns`): on a shared, busy machine it shows the cost without "
            "the waits for a CPU that inflate wall time. Targets are on wall time.",
            "",
            "| Measurement | Wall time | CPU time | Target | |",
            "|---|---|---|---|---|",
            f"| get/set loop, plain Chest ({args.keys:,} resident keys, {args.passes} passes, {ops:,} ops) "
            + loop_row("plain"),
            "| get/set loop, instrumented Chest " + loop_row("instrumented"),
            f"| instrumented / plain, median of paired ratios (quartiles) | {wall_ratio[0]:.3f}x "
            f"({wall_ratio[1]:.2f}-{wall_ratio[2]:.2f}) | {cpu_ratio[0]:.3f}x ({cpu_ratio[1]:.2f}-{cpu_ratio[2]:.2f}) "
            f"| <= 1.1x | {loop_verdict} |",
            f"| one scrape (`generate_latest`) of {args.chests} instrumented Chests: {samples} samples, "
            f"{size / 1024:.0f} KiB (wall p90 {scrape_p90:.2f} ms) "
            f"| {scrape_wall:.2f} ms | {scrape_cpu:.2f} ms | < 5 ms | {scrape_verdict} |",
            f"| for reference: prometheus_client's own `Gauge` and `Histogram`, {args.chests} x (19 series + 2 "
            f"histograms): {ref_samples} samples, one scrape | {ref_wall:.2f} ms | {ref_cpu:.2f} ms | | |",
            "",
            "Instrumenting adds no listener and nothing per operation: the collector reads the counters "
            f"`Stats` keeps anyway, at scrape time. {noise_sentence(wall_ratio)} A scrape of the Chests took "
            f"{to_reference[0]:.2f}x the CPU time of a scrape of the reference (median of paired ratios, quartiles "
            f"{to_reference[1]:.2f}-{to_reference[2]:.2f}): {scrape_cpu * 1e3 / samples:.1f} µs per sample against "
            f"{ref_cpu * 1e3 / ref_samples:.1f} µs for prometheus_client formatting its own metrics.",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run (fewer keys and repetitions)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions of the get/set loop (default 15)")
    parser.add_argument("--no-readme", action="store_true", help="print the table only; leave README.md alone")
    parser.add_argument("--inner", type=int, default=3, help="back-to-back runs per repetition; the best is kept")
    parser.add_argument("--seed", type=int, default=12345, help="seed for variant order and reads")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.keys, args.passes, args.chests = (2_000, 2, 10) if args.quick else (10_000, 4, 10)
    args.reps = args.reps or (5 if args.quick else 15)
    args.scrapes = 51 if args.quick else 301
    args.load = os.getloadavg()[0]  # a shared, busy machine inflates every wall time; say so
    rng = random.Random(args.seed)
    loop = bench_loop(args.keys, args.passes, args.reps, args.inner, rng)
    scrape = bench_scrape(args.chests, args.scrapes, rng)
    block = render(args, loop, scrape)
    print(block)
    if not args.no_readme:
        write_section("bench_metrics", block)
        print(f"\nwrote the table into {README}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
