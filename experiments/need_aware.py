"""NextUse with and without the need-aware victim choice, replayed on every shipped trace.

``python experiments/need_aware.py [TRACE ...]``

For each trace (default: ``experiments/traces/*.trace.gz``) and each budget
(5%, 10%, 25%, 50% of peak) in ``settled`` and ``strict`` modes, replays
``NextUse`` as shipped (the engine asks ``victim_for(need, has_copy)``) and a
copy whose ``victim_for`` ignores both (plain ``victim()``: furthest next use first),
and prints written + read bytes of each and their ratio. The checkout's own
``spillkit`` is used, whatever is installed.
"""

from __future__ import annotations

import glob
import os
import sys
import time
from collections.abc import Callable, Hashable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from spillkit.policies import NextUse  # noqa: E402 - after the path is set
from spillkit.policies._graph import GraphPlan  # noqa: E402
from spillkit.replay import replay  # noqa: E402
from spillkit.trace import Trace, read_trace  # noqa: E402

BUDGETS = (0.05, 0.10, 0.25, 0.50)
MODES = ("settled", "strict")
MiB = 1 << 20


class PlainNextUse(NextUse):
    """NextUse before the need-aware choice: the key read furthest ahead, whatever the need."""

    def victim_for(self, need: int, has_copy: Callable[[Hashable], bool] = lambda key: False) -> Hashable:
        return self.victim()


def io_bytes(trace: Trace, policy: NextUse, budget: int, mode: str) -> int:
    policy.plan(GraphPlan.for_local_scheduler(trace.dependencies, trace.order, trace.data))
    result = replay(trace, policy, budget, mode=mode)
    return result.bytes_written + result.bytes_read


def main(paths: list[str]) -> int:
    started = time.perf_counter()
    print("| trace | budget | mode | plain NextUse MiB | need-aware MiB | ratio |")
    print("|---|--:|---|--:|--:|--:|")
    worst, best = 0.0, float("inf")
    for path in paths:
        trace = read_trace(path)
        name = os.path.basename(path).split(".")[0]
        for fraction in BUDGETS:
            budget = int(fraction * trace.peak_bytes())
            for mode in MODES:
                plain = io_bytes(trace, PlainNextUse(), budget, mode)
                aware = io_bytes(trace, NextUse(), budget, mode)
                ratio = aware / plain if plain else 1.0
                worst, best = max(worst, ratio), min(best, ratio)
                print(f"| {name} | {fraction:.0%} | {mode} | {plain / MiB:,.0f} | {aware / MiB:,.0f} | {ratio:.2f} |")
    print(f"\nneed-aware / plain: best {best:.2f}, worst {worst:.2f}; {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] or sorted(glob.glob(os.path.join(HERE, "traces", "*.trace.gz")))))
