"""The trade-off paragraph of bench_compression's report, computed from its ratios.

Every sentence that states a result is built from the measured ratios to
compression off, so another run prints what that run measured, not what an
earlier one did. Kept apart from bench_compression.py so the paragraph can be
recomputed from a table's printed ratios alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# (mode, data set, setting) -> (store+load time, CPU time, bytes written), each as a ratio to "off"
Cells = Mapping[tuple[str, str, str], tuple[float, float, float]]

FASTER, SLOWER = 0.9, 1.1  # a setting counts as faster or slower than off only beyond these ratios
INCOMPRESSIBLE = "random"


def _span(values: Sequence[float]) -> str:
    low, high = f"{min(values):.2f}x", f"{max(values):.2f}x"
    return low if low == high else f"{low}-{high}"


def _listed(items: Sequence[str], none: str) -> str:
    return ", ".join(items) if items else none


def tradeoff(cells: Cells, datasets: Sequence[str], settings: Sequence[str]) -> str:
    """The paragraph after the decision: what this run's ratios show, warm and cold; ``settings`` exclude off."""
    compressible = [name for name in datasets if name != INCOMPRESSIBLE]

    def pairs(mode: str, names: Sequence[str]) -> list[tuple[str, str, tuple[float, float, float]]]:
        return [(name, setting, cells[(mode, name, setting)]) for name in names for setting in settings]

    warm = pairs("warm", compressible)
    cpu_above = sum(1 for _, _, (_, cpu, _) in warm if cpu > 1)
    by_cpu = {name: max(cells[("warm", name, s)][1] for s in settings) for name in compressible}
    least = min(by_cpu, key=by_cpu.__getitem__)
    cold = pairs("cold", compressible)
    gains = [f"`{name}` with {setting} ({time:.2f}x)" for name, setting, (time, _, _) in cold if time <= FASTER]
    losers = [f"`{n}`" for n in compressible if all(cells[("cold", n, s)][0] >= SLOWER for s in settings)]
    sentences = [
        "The trade-off: compression spends CPU in the thread that spills and loads to write and read fewer bytes.",
        f"Warm (a Chest's case: writes land in the page cache and reads come from it), compressible data took "
        f"{_span([t for _, _, (t, _, _) in warm])} the store+load time of off and "
        f"{_span([c for _, _, (_, c, _) in warm])} its CPU time (above 1 in {cpu_above} of {len(warm)} "
        f"data-and-setting pairs; least on `{least}`, at most {by_cpu[least]:.2f}x).",
        f"Cold (fsync, then reads from the device), store+load was at most {FASTER}x off's time for "
        f"{_listed(gains, 'no compressible data set and setting')}; with every setting at least {SLOWER}x for "
        f"{_listed(losers, 'no data set')}.",
        f"Compressible data took {_span([w for _, _, (_, _, w) in warm + cold])} the bytes of off to write: "
        "on a disk slower than this one (network or spinning disks) those bytes weigh more; measure there "
        "with `--dir`.",
    ]
    if INCOMPRESSIBLE in datasets:
        noise = {mode: pairs(mode, [INCOMPRESSIBLE]) for mode in ("warm", "cold")}
        sentences.append(
            f"Incompressible data (`{INCOMPRESSIBLE}`) is stored raw after one sample (bytes written: "
            f"{_span([w for mode in noise for _, _, (_, _, w) in noise[mode]])} off's); its store+load took "
            f"{_span([t for _, _, (t, _, _) in noise['warm']])} off's time warm and "
            f"{_span([t for _, _, (t, _, _) in noise['cold']])} cold, CPU time "
            f"{_span([c for mode in noise for _, _, (_, c, _) in noise[mode]])}."
        )
    return " ".join(sentences)
