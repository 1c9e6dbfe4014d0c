"""Compare policies on traces at many budgets, beside lower bounds: the replay lab's engine room."""

from __future__ import annotations

import csv
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any, Literal, TextIO

from .policies import policy_names
from .replay import DiskModel, replay
from .sizes import format_bytes, format_percent, parse_bytes
from .trace import Trace, read_trace

__all__ = ["COLUMNS", "compare", "parse_budgets", "parse_policies", "to_markdown", "write_csv"]

COLUMNS = [
    "trace", "budget", "budget_fraction", "mode", "policy", "hits", "loads", "bytes_written", "bytes_read",
    "io_bytes", "io_seconds", "recompute_seconds", "ratio_to_bound",
]  # fmt: skip


def parse_budgets(text: str) -> list[str]:
    """Split ``"5%,10%,1 GiB"`` into budget specs (checked later against each trace)."""
    specs = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))  # (each once)
    if not specs:
        raise ValueError(f"no budgets in {text!r}; give percentages of peak or sizes, e.g. 10%,25%,1 GiB")
    for spec in specs:
        if not spec.endswith("%"):
            parse_bytes(spec)
            continue
        try:
            percent = float(spec[:-1])
        except ValueError:
            raise ValueError(f"budget {spec!r} is not a percentage (like 25%) or a size (like 1 GiB)") from None
        if not 0 < percent <= 1000:
            raise ValueError(f"budget {spec!r} must be a percentage above 0 and at most 1000%")
    return specs


def parse_policies(text: str) -> list[str]:
    """``"all"`` or a comma-separated list of registered policy names."""
    if text.strip().lower() == "all":
        return policy_names()
    names = list(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    if not names:
        raise ValueError(f"no policies in {text!r}; choose from {policy_names()} or 'all'")
    unknown = [n for n in names if n not in policy_names()]
    if unknown:
        raise ValueError(f"unknown policies {unknown}; choose from {policy_names()} or 'all'")
    return names


class _Progress:
    """A one-line progress bar on stderr (only when it is a terminal, or when forced)."""

    def __init__(self, total: int, stream: TextIO | None, label: str = "replaying") -> None:
        self.total, self.done, self.stream, self.label = total, 0, stream, label
        self.start = time.perf_counter()

    def step(self, what: str, steps: int = 1) -> None:
        self.done += steps
        if self.stream is None:
            return
        width = 30
        filled = width * self.done // max(self.total, 1)
        elapsed = time.perf_counter() - self.start
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total} {elapsed:5.1f}s {what[:40]:40s}")
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


def compare(
    traces: Sequence[str | Trace],
    budgets: Sequence[str],
    policies: Sequence[str],
    modes: Sequence[str] = ("settled",),
    disk: DiskModel | None = None,
    bounds: bool = True,
    progress: TextIO | Literal["stderr"] | None = "stderr",
) -> list[dict[str, Any]]:
    """Replay every trace with every policy at every budget and mode; return one row each.

    A trace is named (the rows' ``trace``) after its file, up to the first dot, whether given as a
    path or as a :class:`~spillkit.trace.Trace` that :func:`~spillkit.trace.read_trace` read; a Trace
    made otherwise after its header's ``workload``. Two traces named alike get ``-2``, ``-3``, ...

    Budgets ending in ``%`` are fractions of each trace's peak intermediate
    bytes. With ``bounds`` (needs SciPy), each (trace, budget) also gets rows
    for the FOO lower bound, the PFOO-L bound and a clairvoyant policy (Belady
    on the trace's real future, dead values never written),
    and every row's ``ratio_to_bound`` is its I/O over the FOO bound.

    ``progress`` is where a one-line progress bar goes when it is a terminal: ``"stderr"`` (the
    default) is ``sys.stderr`` as it is when compare runs (one bound at import would outlive a
    redirection of it), or a stream, or None for no bar.
    """
    if progress == "stderr":
        progress = sys.stderr
    names = _names(traces)
    loaded = [(t if isinstance(t, Trace) else read_trace(t), name) for t, name in zip(traces, names, strict=True)]
    per_budget = len(policies) * len(modes) + (3 if bounds else 0)  # replays, then the bounds' three
    bar = _Progress(
        len(loaded) * len(budgets) * per_budget, progress if progress is not None and progress.isatty() else None
    )
    rows: list[dict[str, Any]] = []
    for trace, name in loaded:
        peak = trace.peak_bytes()
        done: set[int] = set()
        for spec in budgets:
            budget = int(peak * float(spec[:-1]) / 100) if spec.endswith("%") else parse_bytes(spec)
            if budget in done:  # two specs of one size (5% and 10% of a tiny trace): its rows once
                bar.step(f"{name} {spec} (as an earlier budget)", per_budget)
                continue
            done.add(budget)
            fraction = budget / peak if peak else 0.0
            group: list[dict[str, Any]] = []
            for mode in modes:
                for policy in policies:
                    result = replay(trace, policy, budget, mode=mode, disk=disk)
                    group.append({"trace": name, "budget": budget, "budget_fraction": fraction, **result.row()})
                    bar.step(f"{name} {spec} {policy} {mode}")
            if bounds:
                group.extend(_bounds(trace, name, budget, fraction, disk, bar))
            floor = next((r["io_bytes"] for r in group if r["policy"] == "bound:foo"), None)
            for row in group:
                row["ratio_to_bound"] = _ratio(row["io_bytes"], floor)
            rows.extend(group)
    return rows


def _ratio(io_bytes: float, floor: float | None) -> float:
    """I/O over the bound: NaN without a bound; at a bound of 0, 1.0 for no I/O and infinity for any."""
    if floor is None:
        return math.nan
    if floor == 0:
        return 1.0 if io_bytes == 0 else math.inf
    return io_bytes / floor


def _bounds(
    trace: Trace, name: str, budget: int, fraction: float, disk: DiskModel | None, bar: _Progress
) -> list[dict[str, Any]]:
    from .bounds import belady_size, foo_lower_bound, pfoo_lower_bound

    model = disk or DiskModel()
    out = []
    for label, function in (("bound:foo", foo_lower_bound), ("bound:pfoo-l", pfoo_lower_bound)):
        bound = function(trace, budget)
        out.append({
            "trace": name, "budget": budget, "budget_fraction": fraction, "mode": "bound", "policy": label,
            "io_bytes": bound.io_bytes,
            # a lower bound on seconds too: every byte at the faster bandwidth, no per-file latency
            "io_seconds": bound.io_bytes / max(model.write_bandwidth, model.read_bandwidth),
            "solve_seconds": bound.solve_seconds,
        })  # fmt: skip
        bar.step(f"{name} {label}")
    clairvoyant = belady_size(trace, budget)
    out.append({"trace": name, "budget": budget, "budget_fraction": fraction, **clairvoyant.row(),
                "policy": "belady-size"})  # fmt: skip
    bar.step(f"{name} belady-size")
    return out


def _name(trace: str | Trace) -> str:
    """A trace file's name up to its first dot (leading dots skipped); a trace made in memory: its workload's."""
    if isinstance(trace, Trace):
        if trace.source is None:
            return str(trace.header.get("workload") or "trace")
        trace = trace.source
    base = os.path.basename(trace)
    return base.lstrip(".").split(".")[0] or base  # (.hidden.trace: "hidden", never "")


def _names(traces: Sequence[str | Trace]) -> list[str]:
    """One distinct name per trace: two traces named alike (d1/w.trace, d2/w.trace) would share tables and plots.

    The first trace of each name keeps it; a later one gets the first ``-2``, ``-3``, ... suffix that is
    neither another trace's own name (d3/w-2.trace keeps ``w-2``) nor already given.
    """
    plain = [_name(trace) for trace in traces]
    taken, seen = set(plain), set()
    names = []
    for name in plain:
        if name in seen:
            suffix = 2
            while f"{name}-{suffix}" in taken:
                suffix += 1
            name = f"{name}-{suffix}"
            taken.add(name)
        seen.add(name)
        names.append(name)
    return names


def write_csv(rows: Iterable[dict[str, Any]], path: str) -> None:
    """Write rows as CSV with :data:`COLUMNS` first, then any other fields."""
    rows = list(rows)
    extra = sorted({k for r in rows for k in r} - set(COLUMNS))
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS + extra, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _times(ratio: float) -> str:
    """A ratio to the bound for the table: empty without a bound (NaN), ``inf`` over a bound of 0."""
    return "" if math.isnan(ratio) else f"{ratio:.2f}"


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """One Markdown table per (trace, budget), policies sorted by I/O."""
    out: list[str] = []
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["trace"], row["budget"]), []).append(row)
    header = "| policy | mode | hits | loads | written | read | I/O | I/O s | recompute s | x bound |"
    for (name, budget), group in groups.items():
        fraction = group[0]["budget_fraction"]
        out += [f"### {name}, budget {format_bytes(budget)} ({format_percent(fraction)} of peak)", "", header,
                "|" + " --- |" * 10]  # fmt: skip
        for row in sorted(group, key=lambda r: r["io_bytes"]):
            out.append(
                f"| {row['policy']} | {row['mode']} | {row.get('hits', '')} | {row.get('loads', '')} | "
                f"{format_bytes(row.get('bytes_written', 0)) if 'bytes_written' in row else ''} | "
                f"{format_bytes(row.get('bytes_read', 0)) if 'bytes_read' in row else ''} | "
                f"{format_bytes(row['io_bytes'])} | {row['io_seconds']:.2f} | "
                f"{'' if row['mode'] == 'bound' else format(row.get('recompute_seconds', 0), '.2f')} | "
                f"{_times(row.get('ratio_to_bound', math.nan))} |"
            )
        out.append("")
    return "\n".join(out)
