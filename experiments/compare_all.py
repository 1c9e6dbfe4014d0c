"""Replay every shipped trace with every policy at 5-50% of its peak; write results.csv, RESULTS.md and figures.

``python experiments/compare_all.py [--no-bounds] [--out DIR]``

Each trace in ``experiments/traces/`` is replayed with every registered policy
at 5%, 10%, 25% and 50% of its peak intermediate bytes, in ``settled`` mode
(the dask integration's default) and ``strict`` mode (a Chest used alone),
beside the FOO and PFOO-L lower bounds and clairvoyant Belady-Size when
``spillkit.bounds`` and SciPy are available. Writes ``results.csv``,
``RESULTS.md`` (findings computed from the numbers, tables and figures) and
``figures/*.png`` into ``--out`` (default: this directory), and prints the
total run time. The checkout's own ``spillkit`` is used, whatever is installed.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from spillkit import __version__, policy_names  # noqa: E402 - after the path is set
from spillkit.compare import compare, to_markdown, write_csv  # noqa: E402
from spillkit.plots import BELADY, FOO, PFOO, plot_all  # noqa: E402

BUDGETS = ["5%", "10%", "25%", "50%"]
MODES = ("settled", "strict")
TIE = 0.005  # policies within 0.5% of the least I/O of a cell share the win
NEAR = 0.02  # "within 2% of the bound": nothing left for a policy to win
RECENCY = ("lru", "fifo", "sieve", "s3fifo", "arc")


def bounds_available() -> tuple[bool, str]:
    """Whether ``spillkit.bounds`` imports and solves a tiny problem (it needs SciPy)."""
    try:
        import spillkit.bounds  # noqa: F401
    except ImportError as error:
        return False, f"spillkit.bounds is not available ({error})"
    return True, ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=HERE, help="directory for results.csv, RESULTS.md and figures/")
    parser.add_argument("--no-bounds", action="store_true", help="skip the lower bounds and Belady-Size")
    parser.add_argument("--traces", nargs="*", help="trace files (default: experiments/traces/*.trace.gz)")
    args = parser.parse_args(argv)
    start, cpu = time.perf_counter(), time.process_time()
    paths = args.traces or sorted(glob.glob(os.path.join(HERE, "traces", "*.trace.gz")))
    if not paths:
        print("no traces found; run experiments/record_traces.py first", file=sys.stderr)
        return 3
    bounds, why = (False, "--no-bounds given") if args.no_bounds else bounds_available()
    if not bounds:
        print(f"compare_all: no bounds: {why}", file=sys.stderr)
    rows = compare(paths, BUDGETS, policy_names(), modes=MODES, bounds=bounds, progress=sys.stderr)
    replayed = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, "results.csv")
    write_csv(rows, csv_path)
    figures = plot_all(rows, os.path.join(args.out, "figures"), traces=paths)
    drawn = time.perf_counter()
    timing = {"replay": replayed - start, "figures": drawn - replayed, "cpu": time.process_time() - cpu}
    markdown = render(rows, [os.path.relpath(f, args.out) for f in figures], paths, timing, bounds)
    md_path = os.path.join(args.out, "RESULTS.md")
    with open(md_path, "w", encoding="utf-8") as file:
        file.write(markdown)
    total, used = time.perf_counter() - start, time.process_time() - cpu
    print(f"wrote {os.path.relpath(csv_path)}, {os.path.relpath(md_path)} and {len(figures)} figures")
    work = f"{len(paths)} traces x {len(BUDGETS)} budgets x {len(policy_names())} policies x {len(MODES)} modes"
    replays = "replays and bounds" if bounds else "replays (no bounds)"
    print(
        f"total run time {total:.1f} s wall, {used:.1f} s CPU ({work}: {replays} {timing['replay']:.1f} s, "
        f"figures {timing['figures']:.1f} s)"
    )
    return 0


# ---------------------------------------------------------------- the numbers behind every sentence

Cell = tuple[str, float]  # (trace, budget fraction)


def _label(cell: Cell) -> str:
    return f"{cell[0]} at {cell[1]:.0%}"


def _cells(rows: Sequence[dict[str, Any]], mode: str) -> dict[Cell, dict[str, dict[str, Any]]]:
    """(trace, budget) -> policy -> row, for one mode's policy rows plus the bounds and Belady-Size."""
    cells: dict[Cell, dict[str, dict[str, Any]]] = {}
    for row in rows:
        reference = row["policy"] in (FOO, PFOO, BELADY)
        if row["mode"] == mode or reference:
            cells.setdefault((row["trace"], row["budget_fraction"]), {})[row["policy"]] = row
    return cells


def _policies(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The policies run, in registry order."""
    return [p for p in policy_names() if any(r["policy"] == p for r in rows)]


def _ratio(cell: dict[str, dict[str, Any]], policy: str) -> float:
    """I/O over the FOO bound (or over the least I/O of any policy, without bounds)."""
    floor = cell[FOO]["io_bytes"] if FOO in cell else min(r["io_bytes"] for p, r in cell.items() if p in policy_names())
    io = cell[policy]["io_bytes"]
    return float(io / floor) if floor else (1.0 if io == 0 else float("inf"))


def _gib(nbytes: float) -> str:
    """``"1.23 GiB"``, ``"456 MiB"``, ``"7.8 MiB"``, ``"512 KiB"``."""
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.2f} GiB"
    if nbytes >= 10 * 2**20:
        return f"{nbytes / 2**20:.0f} MiB"
    if nbytes >= 2**20:
        return f"{nbytes / 2**20:.1f} MiB"
    return f"{nbytes / 2**10:.0f} KiB"


def _and(items: Sequence[str]) -> str:
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


def _winners(cell: dict[str, dict[str, Any]]) -> list[str]:
    """The policies with the least I/O of a cell (ties within TIE), in registry order."""
    names = [p for p in policy_names() if p in cell]
    least = min(cell[p]["io_bytes"] for p in names)
    return [p for p in names if cell[p]["io_bytes"] <= least * (1 + TIE)]


def _spill_size(row: dict[str, Any]) -> float:
    return float(row["bytes_written"]) / max(int(row.get("writes", 0)), 1)


def findings(rows: Sequence[dict[str, Any]], bounds: bool) -> list[str]:
    """The findings as Markdown bullets: every number, and every condition a sentence states, computed from ``rows``."""
    cells = _cells(rows, "settled")
    strict = _cells(rows, "strict")
    policies = _policies(rows)
    n = len(cells)
    out: list[str] = []
    versus = "the FOO lower bound" if bounds else "the best policy of each cell (no bounds in this run)"
    ratios = {p: {c: _ratio(cell, p) for c, cell in cells.items() if p in cell} for p in policies}

    # Who wins, and how far from the floor.
    wins = {p: [c for c, cell in cells.items() if p in _winners(cell)] for p in policies}
    ranking = sorted(policies, key=lambda p: -len(wins[p]))
    top = ranking[0]
    worst = max(ratios[top].items(), key=lambda item: item[1])
    others = ", ".join(f"{p} {len(wins[p])}" for p in ranking[1:] if wins[p])
    why = (
        " NextUse spills the value that dask's planned order (recorded in the trace's graph) reads furthest in the "
        "future: it knows what comes next, which recency- and frequency-based policies cannot."
        if top == "nextuse"
        else ""
    )
    out.append(
        f"**`{top}` wins most often.** In settled mode it has the least I/O (or within {TIE:.1%} of it) in "
        f"{len(wins[top])} of {n} trace-and-budget cells (then: {others}). Its I/O is a median "
        f"{statistics.median(ratios[top].values()):.2f}x {versus}, at worst {worst[1]:.2f}x ({_label(worst[0])})." + why
    )
    if "nextuse" in ratios and "lrc" in ratios:
        over = {c: cell["lrc"]["io_bytes"] / max(cell["nextuse"]["io_bytes"], 1) for c, cell in cells.items()}
        apart = sorted({c[0] for c, r in over.items() if abs(r - 1) > 0.05})
        most = max(over.items(), key=lambda item: item[1])
        out.append(
            f"**LRC (fewest remaining readers first) is within 5% of NextUse** on every trace but "
            f"{_and(apart) or 'none'}; at worst it does {most[1]:.2f}x NextUse's I/O ({_label(most[0])}). "
            "How many readers a value has left does not say *when* the next one reads it."
        )

    # Where there is something to win at all.
    if bounds and "lru" in ratios:
        flat = [c for c, r in ratios["lru"].items() if r <= 1 + NEAR]
        by_trace: dict[str, list[str]] = {}
        for trace, fraction in flat:
            by_trace.setdefault(trace, []).append(f"{fraction:.0%}")
        listed = "; ".join(f"{t} ({', '.join(fs)})" for t, fs in by_trace.items())
        out.append(
            f"**Often there is nothing to win.** In {len(flat)} of {n} cells LRU is already within {NEAR:.0%} of the "
            f"FOO bound, so no policy, online or clairvoyant, can save more than {NEAR:.0%} there: {listed}. That "
            "I/O is forced by the budget, whatever the policy chooses."
        )
        gains = {
            c: 1 - cell[_winners(cell)[0]]["io_bytes"] / cell["lru"]["io_bytes"]
            for c, cell in cells.items()
            if cell["lru"]["io_bytes"]
        }
        best = sorted(gains.items(), key=lambda item: -item[1])[:3]
        saved = []
        for c, gain in best:
            winner = _winners(cells[c])[0]
            saved.append(
                f"{winner} saves {gain:.0%} on {_label(c)} ({_gib(cells[c][winner]['io_bytes'])} instead of "
                f"{_gib(cells[c]['lru']['io_bytes'])}; the bound is {_gib(cells[c][FOO]['io_bytes'])})"
            )
        graph_aware = all(_winners(cells[c])[0] in ("nextuse", "lrc") for c, _ in best)
        out.append(
            ("**Where the policy matters, the graph-aware one gains most.** " if graph_aware else "")
            + "The largest savings over LRU: "
            + "; ".join(saved)
            + "."
        )

    # Who loses, and by how much.
    if "lru" in ratios:
        doubled = {
            p: [c for c, cell in cells.items() if cell[p]["io_bytes"] > 2 * cell["lru"]["io_bytes"]]
            for p in policies
            if p != "lru"
        }
        doubled = {p: cs for p, cs in doubled.items() if cs}
        medians = ", ".join(
            f"{p} {statistics.median(ratios[p].values()):.2f}x"
            for p in sorted(policies, key=lambda p: statistics.median(ratios[p].values()))
        )
        text = f"**Median I/O over {'the bound' if bounds else 'the best'}, settled mode:** {medians}."
        if doubled:
            text += (
                " More than twice LRU's I/O: "
                + "; ".join(f"{p} on {', '.join(_label(c) for c in cs)}" for p, cs in doubled.items())
                + "."
            )
        if "size" in doubled:
            c = max(doubled["size"], key=lambda c: cells[c]["size"]["io_bytes"] - cells[c]["lru"]["io_bytes"])
            size, lru = cells[c]["size"], cells[c]["lru"]
            if "writes" in size and _spill_size(size) > _spill_size(lru) and size["writes"] >= 0.95 * lru["writes"]:
                text += (
                    f" SizeAware spills the largest values first, and that does not buy it fewer spills: on "
                    f"{_label(c)} its average spill is {_gib(_spill_size(size))} against LRU's "
                    f"{_gib(_spill_size(lru))}, for {size['writes']} spills to LRU's {lru['writes']}, so it does "
                    f"{size['io_bytes'] / lru['io_bytes']:.1f}x LRU's I/O."
                )
        out.append(text)

    # Modes.
    if strict and "lru" in ratios:
        pairs = {c: (cells[c]["lru"], strict[c]["lru"]) for c in cells if c in strict and "lru" in strict[c]}
        never_worse = [c for c, (s, t) in pairs.items() if s["io_bytes"] <= t["io_bytes"]]
        c, (s, t) = max(pairs.items(), key=lambda item: item[1][1]["io_bytes"] / max(item[1][0]["io_bytes"], 1))
        out.append(
            f"**Settling after releases pays.** LRU's settled I/O is at most its strict I/O in {len(never_worse)} of "
            f"{len(pairs)} cells. The biggest gap is {_label(c)}: strict {_gib(t['io_bytes'])} (written "
            f"{_gib(t['bytes_written'])}, read back only {_gib(t['bytes_read'])}) against settled "
            f"{_gib(s['io_bytes'])}. A strict Chest makes room at every put, before the finished task's inputs are "
            "released, so it writes values that are released moments later and never read."
        )
        for p in policies:
            worse = [
                c
                for c in cells
                if c in strict and p in strict[c] and cells[c][p]["io_bytes"] > 1.05 * strict[c][p]["io_bytes"]
            ]
            if len(worse) < max(1, len(cells) // 4):
                continue
            c = max(worse, key=lambda c: cells[c][p]["io_bytes"] / max(strict[c][p]["io_bytes"], 1))
            s, t = cells[c][p], strict[c][p]
            out.append(
                f"**{p} is worse settled than strict** (by more than 5% in {len(worse)} of {len(cells)} cells; most on "
                f"{_label(c)}: settled {_gib(s['io_bytes'])}, strict {_gib(t['io_bytes'])}). Settled, it drops "
                f"{s.get('evictions', '?')} values already on disk and does {s.get('loads', '?')} loads; strict, "
                f"{t.get('evictions', '?')} and {t.get('loads', '?')}: it evicts values it has loaded and loads them "
                "again. This run does not show why; worth a look."
            )

    # The clairvoyant reference.
    if bounds and any(BELADY in cell for cell in cells.values()):
        with_belady = {c: cell for c, cell in cells.items() if BELADY in cell}
        beaten: dict[str, list[tuple[Cell, str, float]]] = {}
        for mode, group in (("settled", cells), ("strict", strict)):
            for c, cell in group.items():
                if BELADY in cell:
                    online = min(policies, key=lambda p: cell[p]["io_bytes"])
                    gain = 1 - cell[online]["io_bytes"] / max(cell[BELADY]["io_bytes"], 1)
                    if gain > 0:
                        beaten.setdefault(mode, []).append((c, online, gain))
        median = statistics.median(_ratio(cell, BELADY) for cell in with_belady.values())
        text = (
            f"**The clairvoyant replay is not optimal.** `{BELADY}` (replayed knowing the trace's own future, strict, "
            f"dead values spilled free) is a median {median:.2f}x the bound."
        )
        if beaten:
            text += (
                " An online policy does slightly less I/O than it in "
                + " and ".join(
                    f"{len(found)} {mode} cell{'s' if len(found) > 1 else ''} "
                    f"(by at most {max(g for _, _, g in found):.1%}; e.g. "
                    f"{found[0][1]} on {_label(found[0][0])})"
                    for mode, found in beaten.items()
                )
                + ": ranking by next use alone is not optimal when values differ in size."
            )
        out.append(text + " The FOO bound, not this replay, is the floor.")
    return out


def ratio_table(rows: Sequence[dict[str, Any]], mode: str, bounds: bool) -> str:
    """Rows (trace, budget), columns policies: I/O over the FOO bound, the cell's best in bold."""
    cells = _cells(rows, mode)
    columns = _policies(rows) + ([BELADY] if bounds else [])
    lines = ["| trace | budget | FOO bound | " + " | ".join(columns) + " |", "|---|---|---|" + "---|" * len(columns)]
    for (trace, fraction), cell in cells.items():
        winners = _winners(cell)
        floor = _gib(cell[FOO]["io_bytes"]) if FOO in cell else ""
        shown = []
        for p in columns:
            if p not in cell:
                shown.append("")
                continue
            text = f"{_ratio(cell, p):.2f}"
            shown.append(f"**{text}**" if p in winners else text)
        lines.append(f"| {trace} | {fraction:.0%} | {floor} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def _revision() -> str:
    try:
        done = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def render(
    rows: Sequence[dict[str, Any]], figures: list[str], paths: list[str], timing: dict[str, float], bounds: bool
) -> str:
    """The whole RESULTS.md."""
    policies = _policies(rows)
    total = timing["replay"] + timing["figures"]
    figure = {os.path.splitext(os.path.basename(f))[0]: f for f in figures}
    traces = [os.path.basename(p).split(".")[0] for p in paths]
    ratio_word = "I/O over the FOO lower bound" if bounds else "I/O over the least I/O of any policy (no bounds)"
    parts = [
        "# Results: spill policies on the shipped traces",
        "",
        f"Generated by `python experiments/compare_all.py` (spillkit {__version__}, git {_revision()}, "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}) in {total:.0f} s of wall time "
        f"({timing['cpu']:.0f} s of CPU) on the development machine: replays{' and bounds' if bounds else ''} "
        f"{timing['replay']:.0f} s, figures {timing['figures']:.0f} s. Do not edit by hand: the script writes this "
        "file, `results.csv` and "
        f"`figures/`, and every number in the findings is computed from the results.",
        "",
        f"Each of the {len(traces)} traces in `experiments/traces/` ({', '.join(traces)}) is replayed with every "
        f"policy ({', '.join(policies)}) at {', '.join(BUDGETS)} of its peak intermediate bytes, in two modes: "
        "**settled** (the dask integration's default: the budget is enforced after each task's releases) and "
        "**strict** (a Chest used alone: room is made at every put). I/O is bytes written to disk plus bytes read "
        + (
            "back. The FOO lower bound (an LP relaxation of optimal spilling, valid in every mode) is the floor no "
            "policy can go below; *x bound* is a run's I/O over it, so 1.00 is optimal."
            if bounds
            else "back. This run had no bounds, so ratios are to the best policy of each cell."
        )
        + " The traces were recorded with no memory limit, so none marks a read that a live Chest would have "
        "served from a value the program still held (`reuse`): every read of a value a replay spilled counts with "
        "its bytes, as for a Chest that finds no such value, and a live Chest at the same budget may read less "
        '(README, the replay lab: "Where it cannot").',
        "",
        "## Findings",
        "",
        *(f"- {line}" for line in findings(rows, bounds)),
        "",
        "## Figures",
        "",
    ]
    captions = [
        (
            "reduction_vs_lru-settled",
            "I/O saved relative to LRU at 25% of peak, settled mode"
            + ("; the black bar is the most any policy could save (the FOO bound)." if bounds else "."),
        ),
        (
            "loads_vs_budget-settled",
            "I/O (written + read) against the budget, one panel per trace, with the bound; "
            "the grey area is out of any policy's reach. Lines that coincide hide one another: see the tables.",
        ),
        ("io_vs_budget-settled", "The same I/O split into bytes written (spilled) and bytes read back (loaded)."),
        ("reduction_vs_lru-strict", "I/O saved relative to LRU at 25% of peak, strict mode."),
        ("loads_vs_budget-strict", "I/O against the budget, strict mode."),
        ("io_vs_budget-strict", "Bytes written and read back, strict mode."),
    ]
    for stem, caption in captions:
        if stem in figure:
            parts += [f"![{caption}]({figure[stem]})", "", f"*{caption}*", ""]
    timelines = [(stem, path) for stem, path in figure.items() if stem.startswith("timeline-")]
    if timelines:
        parts += [
            "Timelines (memory and disk bytes over one run, with every spill, eviction and load marked; LRU above the "
            "policy with the least I/O, at 25% of peak, settled mode):",
            "",
            *(f"- [{stem.removeprefix('timeline-')}]({path})" for stem, path in timelines),
            "",
        ]
        if "timeline-matmul" in figure:
            parts += [f"![Timeline of matmul at 25% of peak]({figure['timeline-matmul']})", ""]
    for mode in MODES:
        parts += [
            f"## {ratio_word[0].upper() + ratio_word[1:]}, {mode} mode",
            "",
            f"Bold: the least I/O of the cell (ties within {TIE:.1%}).",
            "",
            ratio_table(rows, mode, bounds),
            "",
        ]
    parts += ["## All results", "", "Per trace and budget, every policy in both modes, sorted by I/O.", ""]
    for trace in traces:
        mine = [r for r in rows if r["trace"] == trace]
        parts += ["<details>", f"<summary>{trace}</summary>", "", to_markdown(mine), "</details>", ""]
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    sys.exit(main())
