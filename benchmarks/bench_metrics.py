"""Metrics benchmarks: what Prometheus instrumentation costs a Chest.

Run from the repository root::

    python benchmarks/bench_metrics.py            # full run, rewrites its section of benchmarks/README.md
    python benchmarks/bench_metrics.py --quick    # short run
    python benchmarks/bench_metrics.py --no-readme

Two measurements, timed with ``time.perf_counter_ns``:

1. The in-memory get/set loop (every key resident: overwrite each key, then
   read each key, several passes) on a plain Chest and on a Chest instrumented
   with ``spillkit.metrics.instrument``. Target: at most 1.1x slower. Each
   repetition builds both Chests fresh and times them in a shuffled order; the
   result is the median of the per-repetition (paired) ratios.
2. One scrape, ``generate_latest(registry)``, of a registry holding 10
   instrumented Chests that have spilled, loaded and missed (so every series
   and histogram bucket is filled). Target: under 5 ms (median). A few cache
   reads run between scrapes, so every scrape reads changed numbers.

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
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from a checkout without installing spillkit

from readme_section import write_section  # noqa: E402 - after the sys.path setup above

import spillkit  # noqa: E402
from spillkit.metrics import instrument  # noqa: E402
from spillkit.stats import LATENCY_BOUNDS  # noqa: E402

README = Path(__file__).resolve().parent / "README.md"


Timing = tuple[float, float]  # (wall seconds, CPU seconds of this thread)


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


def bench_scrape(nchests: int, scrapes: int, rng: random.Random) -> tuple[list[Timing], int, int]:
    """Wall and CPU seconds per scrape of ``nchests`` busy instrumented Chests; samples and bytes per scrape."""
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
    samples = sum(len(metric.samples) for metric in registry.collect())
    size = len(generate_latest(registry))
    seconds = []
    for _ in range(scrapes):
        for chest in chests:  # change the numbers between scrapes (not timed)
            chest[rng.randrange(200)]
        seconds.append(timed(lambda: generate_latest(registry)))
    for chest in chests:
        chest.close()
    return seconds, samples, size


def bench_reference(nchests: int, scrapes: int) -> list[Timing]:
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
    return [timed(lambda: generate_latest(registry)) for _ in range(scrapes)]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def paired(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Median of the per-repetition ratios b/a, with the quartiles."""
    ratios = [y / x for x, y in zip(a, b, strict=True)]
    if len(ratios) < 2:
        return ratios[0], ratios[0], ratios[0]
    q = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), q[0], q[2]


def render(
    args: argparse.Namespace,
    loop: dict[str, list[Timing]],
    scrape: tuple[list[Timing], int, int],
    reference: list[Timing],
) -> str:
    ops = 2 * args.keys * args.passes
    wall = {k: [w for w, _ in v] for k, v in loop.items()}
    cpu = {k: [c for _, c in v] for k, v in loop.items()}
    wall_ratio = paired(wall["plain"], wall["instrumented"])
    cpu_ratio = paired(cpu["plain"], cpu["instrumented"])
    seconds, samples, size = scrape
    scrape_wall = median([w for w, _ in seconds]) * 1e3
    scrape_cpu = median([c for _, c in seconds]) * 1e3
    scrape_p90 = statistics.quantiles([w for w, _ in seconds], n=10)[-1] * 1e3

    def verdict(wall_ok: bool, cpu_ok: bool) -> str:
        return {(True, True): "met", (False, True): "met in CPU time only", (True, False): "met in wall time only"}.get(
            (wall_ok, cpu_ok), "**missed**"
        )

    def loop_row(variant: str) -> str:
        w, c = median(wall[variant]), median(cpu[variant])
        return f"| {w * 1e3:.1f} ms ({w / ops * 1e9:.0f} ns/op) | {c * 1e3:.1f} ms ({c / ops * 1e9:.0f} ns/op) | | |"

    return "\n".join(
        [
            "## Metrics (Prometheus instrumentation)",
            "",
            f"`{' '.join(['python benchmarks/bench_metrics.py', *args.argv])}` on {time.strftime('%Y-%m-%d')}: "
            f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, load average "
            f"{args.load:.1f} when it started. {args.reps} repetitions, the two Chests in shuffled order each time, "
            f"best of {args.inner} runs each; medians. CPU time is this thread's (`time.thread_time_ns`): on a "
            "shared, busy machine it shows the cost without the waits for a CPU that inflate wall time.",
            "",
            "| Measurement | Wall time | CPU time | Target | |",
            "|---|---|---|---|---|",
            f"| get/set loop, plain Chest ({args.keys:,} resident keys, {args.passes} passes, {ops:,} ops) "
            + loop_row("plain"),
            "| get/set loop, instrumented Chest " + loop_row("instrumented"),
            f"| instrumented / plain, median of paired ratios (quartiles) | {wall_ratio[0]:.3f}x "
            f"({wall_ratio[1]:.2f}-{wall_ratio[2]:.2f}) | {cpu_ratio[0]:.3f}x ({cpu_ratio[1]:.2f}-{cpu_ratio[2]:.2f}) "
            f"| <= 1.1x | {verdict(wall_ratio[0] <= 1.1, cpu_ratio[0] <= 1.1)} |",
            f"| one scrape (`generate_latest`) of {args.chests} instrumented Chests: {samples} samples, "
            f"{size / 1024:.0f} KiB ({args.scrapes} scrapes; wall p90 {scrape_p90:.2f} ms) "
            f"| {scrape_wall:.2f} ms | {scrape_cpu:.2f} ms | < 5 ms | {verdict(scrape_wall < 5, scrape_cpu < 5)} |",
            f"| for reference: prometheus_client's own `Gauge` and `Histogram` holding the same series, one scrape "
            f"| {median([w for w, _ in reference]) * 1e3:.2f} ms | {median([c for _, c in reference]) * 1e3:.2f} ms "
            "| | |",
            "",
            "Instrumenting adds no listener and nothing per operation: the collector reads the counters "
            "`Stats` keeps anyway, at scrape time. The ratio is noise around 1. Most of a scrape is "
            "prometheus_client formatting the text (a few microseconds per sample), as the reference row shows.",
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
    reference = bench_reference(args.chests, args.scrapes)
    block = render(args, loop, scrape, reference)
    print(block)
    if not args.no_readme:
        write_section("bench_metrics", block)
        print(f"\nwrote the table into {README}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
