"""The built-in demo: fill a Chest past its budget with numpy arrays and report what it did."""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from .chest import Chest
from .extras import missing_extra
from .policies import policy_names
from .sizes import format_bytes, parse_bytes

__all__ = ["check_arguments", "run_demo"]


def run_demo(
    arrays: int = 200,
    array_bytes: int | str = "1 MiB",
    budget: int | str = "50 MiB",
    reads: int = 400,
    seed: int = 0,
    policies: list[str] | None = None,
    forever: bool = False,
    on_chest: Callable[[Chest, str], object] | None = None,
    seconds: float | None = None,
) -> list[dict[str, object]]:
    """Store ``arrays`` arrays in one Chest per policy, read them back, check every value.

    Returns one row of statistics per policy (also printed as a table).

    Parameters
    ----------
    forever : bool
        Repeat the workload until Ctrl-C, every policy in its own thread at the
        same time, so a dashboard can compare the policies live.
    on_chest : callable, optional
        ``on_chest(chest, policy_name)`` runs for each Chest before it is used,
        e.g. to instrument it with :func:`spillkit.metrics.instrument`.
    seconds : float, optional
        Stop repeating after this many seconds (implies ``forever``).

    Raises
    ------
    ValueError
        For no arrays, arrays too small to hold one float64 (8 bytes), a
        negative number of reads, or a ``seconds`` that is negative or not finite.

    Notes
    -----
    Every read is checked; a wrong value raises ``AssertionError`` (from a
    worker thread it stops the others and is raised here).
    """
    try:
        import numpy as np
    except ImportError as error:  # (tests/test_extras.py; the command line exits 4 with it)
        raise missing_extra("the demo", "numpy", "demo") from error
    size = check_arguments(arrays, array_bytes, reads, seconds)
    names = list(policies or policy_names())

    def one(name: str, stop: threading.Event | None) -> dict[str, object]:
        rng = random.Random(seed)
        with Chest(available_memory=budget, policy=name) as chest:
            if on_chest is not None:
                on_chest(chest, name)
            start = time.perf_counter()
            while stop is None or not stop.is_set():
                for i in range(arrays):
                    if stop is not None and stop.is_set():
                        break  # answer Ctrl-C within one array, not one round
                    chest[f"array-{i}"] = np.full(size // 8, i, dtype="f8")
                hot = list(range(arrays // 5)) or list(range(arrays))  # below 5 arrays, all are hot
                for n in range(reads):
                    if stop is not None and stop.is_set():
                        break
                    i = rng.choice(hot) if rng.random() < 0.8 else rng.randrange(arrays)
                    if chest[f"array-{i}"][0] != i:
                        raise AssertionError(f"array-{i} came back wrong")
                    if n % 50 == 0 and chest.get("never-stored") is not None:  # a miss now and then
                        raise AssertionError("a key that was never stored came back")
                if stop is None:
                    break
            return _row(name, chest, time.perf_counter() - start)

    if not (forever or seconds is not None):
        rows = [one(name, None) for name in names]
    else:
        rows = _in_threads(one, names, seconds)
    _print_table(rows)
    return rows


def check_arguments(arrays: int, array_bytes: int | str, reads: int, seconds: float | None) -> int:
    """The bytes per array, once the arguments are known to make a workload that ends and checks its reads."""
    if arrays < 1:
        raise ValueError(f"the demo needs at least 1 array, not {arrays}")
    size = parse_bytes(array_bytes)
    if size < 8:  # each array is float64 and a read checks its first element: 8 bytes at least
        raise ValueError(f"an array needs at least 8 bytes (one float64), not {array_bytes!r}")
    if reads < 0:
        raise ValueError(f"the number of reads must be at least 0, not {reads}")
    if seconds is not None and not (math.isfinite(seconds) and seconds >= 0):
        # a NaN deadline never passes and makes every wait return at once: a busy loop, never stopping
        raise ValueError(f"seconds must be a finite number of at least 0, not {seconds}")
    return size


def _in_threads(
    one: Callable[[str, threading.Event | None], dict[str, object]], names: list[str], seconds: float | None
) -> list[dict[str, object]]:
    """Run ``one(name, stop)`` per name in its own thread until Ctrl-C, ``seconds``, or an error."""
    stop = threading.Event()
    results: dict[str, dict[str, object]] = {}
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            results[name] = one(name, stop)
        except BaseException as error:
            errors.append(error)
            stop.set()

    threads = [threading.Thread(target=work, args=(name,), name=f"spillkit-demo-{name}") for name in names]
    for thread in threads:
        thread.start()
    deadline = None if seconds is None else time.monotonic() + seconds
    try:
        while not stop.is_set():
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            stop.wait(1.0 if remaining is None else min(remaining, 1.0))
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return [results[name] for name in names]


def _row(name: str, chest: Chest, seconds: float) -> dict[str, Any]:
    stats = chest.stats
    return {
        "policy": name,
        "hits": stats.hits,
        "loads": stats.loads,
        "misses": stats.misses,
        "spills": stats.spills,
        "written": format_bytes(stats.spill_bytes),
        "read": format_bytes(stats.load_bytes),
        "in memory": format_bytes(chest.memory_bytes),
        "on disk": format_bytes(chest.disk_bytes),
        "seconds": f"{seconds:.2f}",
    }


def _print_table(rows: list[dict[str, object]]) -> None:
    if not rows:
        return
    columns = list(rows[0])
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths, strict=True)))
