"""Named, seeded, size-parameterised dask computations that are real spill benchmarks.

Each workload builds a dask collection from ``scale`` (1.0 is the default size,
which runs in roughly 5-30 s on a 2-core machine with an unlimited cache) and a
``seed``. Sizes grow linearly in bytes with ``scale``. Needs the dask extra.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .extras import missing_extra

__all__ = ["WORKLOADS", "Workload", "build", "workload_names"]


@dataclass(frozen=True)
class Workload:
    """A named computation: ``make(scale, seed)`` returns a dask collection to compute.

    Parameters
    ----------
    name : str
        Its key in :data:`WORKLOADS` and the name :func:`build` takes.
    description : str
        One line for listings.
    make : callable
        ``make(scale, seed)``: the dask collection at that size (1.0 the default) and seed.
    modules : tuple of str, default ("dask.array",)
        The parts of dask it needs (``build`` imports them first, so a missing one
        names the extra to install). Each parameter is also an attribute of that name.

    Notes
    -----
    Frozen (assigning a field raises ``dataclasses.FrozenInstanceError``), so safe to share between threads;
    nothing is checked when one is made. :func:`build` raises ValueError for an unknown name and ImportError
    naming the extra for a missing module; what ``make`` raises propagates.
    """

    name: str
    description: str
    make: Callable[[float, int], Any]
    modules: tuple[str, ...] = ("dask.array",)


def _side(base: int, scale: float, chunk: int) -> int:
    # Bytes grow with side**2, so the side grows with sqrt(scale); keep whole chunks.
    return max(chunk, round(base * math.sqrt(scale) / chunk) * chunk)


def _random(shape: tuple[int, int], chunks: tuple[int, int], seed: int) -> Any:
    import dask.array as da

    return da.random.default_rng(seed).random(shape, chunks=chunks)  # type: ignore[no-untyped-call]


def _anomaly(scale: float, seed: int) -> Any:
    n = _side(20_000, scale, 1_000)
    x = _random((n, n), (1_000, 1_000), seed)
    return (x - x.mean()).sum(axis=0)


def _column_anomaly(scale: float, seed: int) -> Any:
    n = _side(24_000, scale, 1_000)
    x = _random((n, n), (1_000, 1_000), seed)
    return (x - x.mean(axis=0)).sum(axis=1)


def _rechunk(scale: float, seed: int) -> Any:
    n = _side(20_000, scale, 500)
    x = _random((n, n), (n, 500), seed)  # column strips
    return x.rechunk((500, n)).sum(axis=1)  # to row strips, then reduce so the output is small


def _tsqr(scale: float, seed: int) -> Any:
    rows = int(1_000_000 * scale) // 50_000 * 50_000 or 50_000
    x = _random((rows, 100), (50_000, 100), seed)
    import dask.array as da

    q, r = da.linalg.tsqr(x)  # type: ignore[no-untyped-call]
    return q.sum(axis=0) + r.sum(axis=0)


def _matmul(scale: float, seed: int) -> Any:
    n = _side(6_000, scale, 1_000)
    x = _random((n, n), (1_000, 1_000), seed)
    return x.dot(x.T).sum(axis=0)


def _frame(scale: float, seed: int) -> Any:
    import dask.array as da
    import dask.dataframe as dd

    rows = max(100_000, int(40_000_000 * scale))
    partitions = 100
    rng = da.random.default_rng(seed)  # type: ignore[no-untyped-call]
    keys = rng.integers(0, 10_000, size=rows, chunks=rows // partitions)
    values = rng.random(rows, chunks=rows // partitions)
    columns = [dd.from_dask_array(keys, columns="k"), dd.from_dask_array(values, columns="v")]
    return dd.concat(columns, axis=1)  # type: ignore[no-untyped-call]


def _shuffle(scale: float, seed: int) -> Any:
    import dask

    with dask.config.set({"dataframe.shuffle.method": "tasks"}):
        df = _frame(1.25 * scale, seed).shuffle("k")
    return df.v.sum()


def _groupby(scale: float, seed: int) -> Any:
    return _frame(2.5 * scale, seed).groupby("k").v.mean()


FRAMES = ("dask.array", "dask.dataframe")  # dask.dataframe needs pandas too: the dask extra has both
WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in [
        Workload("anomaly", "global anomaly (x - x.mean()).sum(0)", _anomaly),
        Workload("rechunk", "rechunk column strips to row strips, then sum", _rechunk),
        Workload("tsqr", "tall-skinny QR (da.linalg.tsqr)", _tsqr),
        Workload("matmul", "matrix product x.dot(x.T), then sum", _matmul),
        Workload("shuffle", "dataframe shuffle with shuffle.method='tasks'", _shuffle, FRAMES),
        Workload("column-anomaly", "column anomaly (x - x.mean(axis=0)), then row sums", _column_anomaly),
        Workload("groupby", "dataframe groupby mean (a control: little to spill)", _groupby, FRAMES),
    ]
}


def workload_names() -> list[str]:
    """Names of the built-in workloads."""
    return list(WORKLOADS)


def build(name: str, scale: float = 1.0, seed: int = 0) -> Any:
    """The dask collection of workload ``name`` at ``scale`` with ``seed``."""
    try:
        workload = WORKLOADS[name]
    except KeyError:
        raise ValueError(f"unknown workload {name!r}; choose one of {workload_names()}") from None
    for module in workload.modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise missing_extra(f"workload {name!r}", module, "dask") from error
    return workload.make(scale, seed)
