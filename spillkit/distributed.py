"""Chest as the storage of dask.distributed workers: ``data=worker_storage``.

A worker keeps every task result in its ``data`` mapping. dask's default is a
``SpillBuffer`` (zict's LRU over pickle files); :func:`worker_storage` builds a
:class:`~spillkit.chest.Chest` instead, with any registered eviction policy::

    from distributed import LocalCluster
    from spillkit.distributed import worker_storage

    if __name__ == "__main__":  # dask starts worker processes by spawning: a script needs the guard
        cluster = LocalCluster(n_workers=2, memory_limit="1 GiB", data=(worker_storage, {"policy": "cost"}))

The Chest takes part in the worker's memory management as SpillBuffer does:
it spills by itself when the values it holds pass the budget (dask's
``target`` fraction of the worker's memory limit), and the worker's memory
monitor calls ``evict()`` when the whole process passes the ``spill``
fraction, reads ``fast`` to know whether anything is left to spill, and
reports ``spilled_total`` to the scheduler. ``dask worker`` has no option for
``data=``; :mod:`spillkit.distributed_preload` is the command-line form.
"""

from __future__ import annotations

import contextvars
import os
import sys
import warnings
from typing import Any

from .extras import missing_extra

try:
    import dask.config
    from dask.system import CPU_COUNT
    from dask.utils import parse_bytes
    from distributed.sizeof import safe_sizeof
    from distributed.worker_memory import WorkerMemoryManager, parse_memory_limit, worker_logger
except ImportError as error:  # (tests/test_extras.py)
    raise missing_extra("spillkit.distributed", "dask.distributed", "dask") from error

from .chest import Chest
from .distributed_hooks import drop_with_worker, instrument_worker_chest
from .errors import SpillWarning
from .policies import Policy
from .sizeof import tolerant

__all__ = ["SUBDIRECTORY", "drop_with_worker", "storage_for", "worker_budget", "worker_storage"]

SUBDIRECTORY = "spillkit"  # beside dask's own "storage" in the worker's local directory
_STACK_DEPTH = 12  # frames searched for the WorkerMemoryManager that is building us
# The worker storage_for builds for, given to worker_storage (a context variable: per thread and task).
_BUILT_WORKER: contextvars.ContextVar[tuple[WorkerMemoryManager, Any, int] | None] = contextvars.ContextVar(
    "spillkit_built_worker", default=None
)


def worker_storage(
    worker_local_directory: str,
    *,
    policy: Policy | str = "lru",
    available_memory: int | float | str | None = None,
    memory_limit: int | float | str | None = None,
    instrument_metrics: bool = True,
    name: str | None = None,
    **chest_kwargs: Any,
) -> Chest:
    """Build the Chest a dask.distributed worker stores its data in.

    Give it to a worker, nanny or cluster as ``data=worker_storage`` or
    ``data=(worker_storage, {"policy": "cost", ...})``; the worker calls it
    once, with its own local directory, while it starts.

    Parameters
    ----------
    worker_local_directory : str
        The worker's scratch directory (dask passes it). Values spill to its
        subdirectory ``spillkit``, which dask deletes with the worker.
    policy : Policy or str
        A policy name from :func:`spillkit.policy_names` (each worker builds
        its own policy object; a Policy instance only suits a single worker).
    available_memory : int, float or str, optional
        The budget for values held in memory. Default: see :func:`worker_budget`.
    memory_limit : int, float or str, optional
        The worker's memory limit, when the budget should be computed from
        another one than the worker's own (parsed as ``memory_limit=`` is).
    instrument_metrics : bool
        Export the Chest into prometheus_client's global registry, which a
        worker's ``/metrics`` endpoint serves (skipped if prometheus-client is
        not installed).
    name : str, optional
        The ``chest`` label of the metrics. Default: ``dask-worker-<worker
        name>``, or the basename of ``worker_local_directory`` for a worker
        without a name; a taken label gets that basename appended.
    **chest_kwargs
        Passed to :class:`~spillkit.chest.Chest` (``dump``/``load``, ``codec``,
        ``available_disk`` (default: dask's ``distributed.worker.memory.max-spill``,
        if set), ``sizeof``, ``pack_threshold``, ``map_loads``;
        default ``sizeof`` is ``distributed.sizeof.safe_sizeof``, which never
        raises, made :func:`~spillkit.sizeof.tolerant`: a size it passes on
        that is negative, NaN or infinite (from a function registered with
        ``dask.sizeof``) counts as 1 MB, warned, as its failures do; and
        ``map_loads`` is on: files of 1 MiB or more are loaded by
        mapping them: in two runs of ``benchmarks/bench_distributed.py`` with
        ``lru`` the workers' CPU time was 0.88x and 0.85x dask's default's,
        against 0.99x and 0.87x reading the files; in the latest, 0.95x against
        0.96x, within noise).

    Returns
    -------
    Chest
        An empty Chest whose ``fast``, ``evict()`` and ``spilled_total``
        serve the worker's memory monitor and heartbeat.

    Notes
    -----
    Thread-safe, as every Chest is (the worker calls it from its event loop
    and its memory monitor). Failures: a value that cannot be written stays in
    memory and ``evict()`` returns -1, so the worker logs it and keeps
    running, as with SpillBuffer; so does a value the ``available_disk`` quota
    (or the disk) refuses, even one larger than the whole budget (a warning;
    memory then passes the budget, as SpillBuffer's does at ``max-spill``, and
    the memory monitor pauses the worker if it must). A put raises only when a
    value larger than the whole budget cannot be pickled, which fails that one
    task. The Chest is dropped (its files, its
    metrics) when the worker closes (:func:`drop_with_worker`), or with the
    worker's local directory when a worker process dies.

    Examples
    --------
    Outside a worker, give the memory limit the budget is a fraction of:

    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> chest = worker_storage(tmp.name, memory_limit="1 GiB", instrument_metrics=False)
    >>> chest.available_memory == int(2**30 * dask.config.get("distributed.worker.memory.target"))
    True
    >>> chest.evict()                      # nothing to spill: -1, never an exception
    -1
    >>> chest.drop()
    >>> tmp.cleanup()
    """
    # The worker's memory manager, the worker and its threads: storage_for's, or the one building us (or Nones).
    manager, worker, nthreads = _BUILT_WORKER.get() or _building_worker()
    if available_memory is None:
        available_memory = worker_budget(memory_limit, manager=manager, nthreads=nthreads)
    if "available_disk" not in chest_kwargs:
        chest_kwargs["available_disk"] = _max_spill(manager)  # (0 too: nothing spills, as SpillBuffer does)
    chest_kwargs.setdefault("sizeof", tolerant(safe_sizeof))
    chest_kwargs.setdefault("map_loads", True)
    chest = Chest(
        path=os.path.join(worker_local_directory, SUBDIRECTORY),
        available_memory=available_memory,
        policy=policy,
        **chest_kwargs,
    )
    chest.engine.keep_when_disk_full = True  # a full quota keeps values in memory, as SpillBuffer at max-spill
    if worker is not None:
        drop_with_worker(worker, chest)
    if instrument_metrics:
        basename = os.path.basename(os.path.normpath(worker_local_directory))
        worker_name = getattr(worker, "name", None)
        default = basename if worker_name is None else f"dask-worker-{worker_name}"
        # (str(): dask worker names may be ints, and an int label was refused, then exported as "3-<dir>")
        instrument_worker_chest(chest, default if name is None else str(name), basename)
    return chest


def _max_spill(manager: WorkerMemoryManager | None) -> int | None:
    """dask's ``distributed.worker.memory.max-spill``: the worker's, or the config's outside one (None: no cap)."""
    cap = dask.config.get("distributed.worker.memory.max-spill") if manager is None else manager.max_spill
    return None if cap is False else int(parse_bytes(cap))


def storage_for(worker: Any, **options: Any) -> Chest:
    """:func:`worker_storage` for a worker already built (the preload's): its limit, threads, max-spill and name."""
    token = _BUILT_WORKER.set((worker.memory_manager, worker, worker.state.nthreads))
    try:
        return worker_storage(worker.local_directory, **options)
    finally:
        _BUILT_WORKER.reset(token)


def worker_budget(
    memory_limit: int | float | str | None = None,
    *,
    manager: WorkerMemoryManager | None = None,
    nthreads: int | None = None,
) -> int:
    """The bytes of values a worker's Chest holds in memory before it spills.

    The same bytes as dask's SpillBuffer: the worker's memory limit times
    ``distributed.worker.memory.target`` (0.6 by default). As with SpillBuffer,
    no ``target`` (False) means no budget of its own (``sys.maxsize``: only
    the memory monitor's ``evict()`` spills, at ``spill``), and so does a
    worker without a memory limit.

    Parameters
    ----------
    memory_limit : int, float or str, optional
        The worker's limit, as dask parses ``memory_limit=`` (bytes, ``"4 GiB"``,
        a fraction of the machine, ``"auto"``). Default: the limit of the
        worker being built (dask builds ``data`` inside its
        ``WorkerMemoryManager``, after parsing the limit, so the limit is read
        from that manager on the call stack); outside a worker, the machine's
        memory, with a :class:`~spillkit.errors.SpillWarning`.
    manager : WorkerMemoryManager, optional
        The memory manager to read the limit and fractions from (default:
        the one building a worker now, if any).
    nthreads : int, optional
        The worker's threads, which ``"auto"`` and fractions of the machine are
        shares of, as dask parses a worker's limit (default: those of the
        worker being built; outside a worker, all the machine's cores).

    Returns
    -------
    int
        The budget in bytes.

    Notes
    -----
    Pure apart from reading dask's configuration and the call stack; never
    raises for a missing worker.
    """
    if manager is None:
        manager, _, building = _building_worker()
        nthreads = nthreads or building
    if manager is not None:
        target = manager.memory_target_fraction
    else:
        target = dask.config.get("distributed.worker.memory.target")
    if memory_limit is not None:
        limit = parse_memory_limit(memory_limit, nthreads or CPU_COUNT, logger=worker_logger)
    elif manager is not None:
        limit = manager.memory_limit
    else:
        warnings.warn(
            "spillkit.distributed: no dask worker is being built and no memory_limit was given; "
            "the budget is computed from the whole machine's memory",
            SpillWarning,
            stacklevel=3,
        )
        limit = parse_memory_limit("auto", CPU_COUNT, logger=worker_logger)
    if not limit or not target:
        return sys.maxsize
    return int(limit * target)


def _building_worker() -> tuple[WorkerMemoryManager | None, Any, int | None]:
    """The WorkerMemoryManager calling us from its ``__init__``, its worker and threads (or Nones)."""
    frame = sys._getframe(1)
    for _ in range(_STACK_DEPTH):
        candidate = frame.f_locals.get("self")
        # memory_target_fraction is set just before data= is called; checking it makes sure
        # the manager has parsed its limit (a manager built any other way is left alone).
        if isinstance(candidate, WorkerMemoryManager) and hasattr(candidate, "memory_target_fraction"):
            nthreads = frame.f_locals.get("nthreads")
            return candidate, frame.f_locals.get("worker"), nthreads if isinstance(nthreads, int) else None
        if frame.f_back is None:
            break
        frame = frame.f_back
    return None, None, None
