"""The built-in demo: fill a Chest past its budget with numpy arrays and report what it did."""

from __future__ import annotations

import random
import time

from .chest import Chest
from .policies import policy_names
from .sizes import format_bytes, parse_bytes

__all__ = ["run_demo"]


def run_demo(
    arrays: int = 200,
    array_bytes: int | str = "1 MiB",
    budget: int | str = "50 MiB",
    reads: int = 400,
    seed: int = 0,
    policies: list[str] | None = None,
    forever: bool = False,
    on_chest: object = None,
) -> list[dict[str, object]]:
    """Store ``arrays`` arrays in one Chest per policy, read them back, check every value.

    Returns one row of statistics per policy (also printed as a table).
    With ``forever=True`` the workload repeats until interrupted (for dashboards).
    """
    try:
        import numpy as np
    except ImportError as error:  # pragma: no cover - exercised only without numpy
        raise SystemExit('the demo needs numpy: pip install "spillkit[demo]"') from error
    size = parse_bytes(array_bytes)
    rows: list[dict[str, object]] = []
    for name in policies or policy_names():
        rng = random.Random(seed)
        with Chest(available_memory=budget, policy=name) as chest:
            if callable(on_chest):
                on_chest(chest, name)
            start = time.perf_counter()
            while True:
                for i in range(arrays):
                    chest[f"array-{i}"] = np.full(size // 8, i, dtype="f8")
                hot = list(range(arrays // 5))
                for _ in range(reads):
                    i = rng.choice(hot) if rng.random() < 0.8 else rng.randrange(arrays)
                    if chest[f"array-{i}"][0] != i:
                        raise AssertionError(f"array-{i} came back wrong")
                if not forever:
                    break
            seconds = time.perf_counter() - start
            stats = chest.stats
            rows.append(
                {
                    "policy": name,
                    "hits": stats.hits,
                    "loads": stats.loads,
                    "spills": stats.spills,
                    "written": format_bytes(stats.spill_bytes),
                    "read": format_bytes(stats.load_bytes),
                    "in memory": format_bytes(chest.memory_bytes),
                    "on disk": format_bytes(chest.disk_bytes),
                    "seconds": f"{seconds:.2f}",
                }
            )
    _print_table(rows)
    return rows


def _print_table(rows: list[dict[str, object]]) -> None:
    if not rows:
        return
    columns = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths, strict=True)))
