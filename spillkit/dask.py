"""dask integration: a Chest as the local scheduler's cache, task timings as costs, trace recording.

Only this module, :mod:`spillkit.dask_callback` (:class:`ChestCallback`),
:mod:`spillkit.dask_loads`, :mod:`spillkit.dask_record` (:class:`record`), all
re-exported here, :mod:`spillkit.dask_owner` and :mod:`spillkit.workloads` import dask. dask's local
schedulers store each task's result in ``cache[key]``, read it once per
dependent, and ``del`` it right after its last reader ran; but they store a
result *before* deleting the inputs it was the last reader of, so a budget
enforced inside ``__setitem__`` writes values that are about to be deleted.
:class:`ChestCallback` defers making room until dask's releases are done
(memory overshoots by at most the one result just stored), so no dead value is
ever written, measures each task's duration as its recompute cost, and gives
graph-aware policies (``NextUse``, ``LRC``) the graph and dask's planned order.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from .extras import missing_extra

try:
    import dask
except ImportError as error:  # (tests/test_extras.py)
    raise missing_extra("spillkit.dask", "dask", "dask") from error

from .chest import Chest
from .dask_callback import ChestCallback, plan_from_dask
from .dask_client import distributed_client_active
from .dask_loads import WorkerLoads
from .dask_record import record

__all__ = ["ChestCallback", "costs", "plan_from_dask", "record", "spilling"]


def costs(chest: Chest) -> ChestCallback:
    """``with costs(chest): x.compute(cache=chest)``: task durations become recompute costs."""
    return ChestCallback(chest, costs=True)


@contextlib.contextmanager
def spilling(
    chest: Chest | None = None,
    available_memory: int | float | str | None = None,
    policy: str | None = None,
    **chest_kwargs: Any,
) -> Iterator[Chest]:
    """Make a Chest dask's cache for the block: ``with spilling(available_memory="4 GiB"): x.compute()``.

    Builds a Chest with the graph-aware ``NextUse`` policy unless one is given,
    sets ``dask.config`` ``cache=`` to it, and applies :class:`ChestCallback`.
    Unless another scheduler is configured (or a dask.distributed Client is active),
    ``compute()`` without ``scheduler=`` runs dask's threaded scheduler with spilled
    inputs loaded by the worker threads that need them, several at once, instead of
    one by one in dask's scheduling thread (:mod:`spillkit.dask_loads`).
    A temporary Chest made here is closed at the end of the block (or, if a
    computation in another thread still has it then, when that one ends). Other
    keywords (``compression="lz4"``, ``path``, ...) go to that Chest; it loads
    large values by mapping their files (``map_loads=True``) and, unless it writes
    behind, does not check its synchronous writes again (``verify_writes=False``)
    unless told otherwise: that check is for a value another thread changes in place
    while a put spills it, and here only dask puts, in its scheduling thread, the
    results of tasks that have ended, while the inputs of running tasks are pinned
    in memory (dask's tasks must not change their inputs in any case). Measured at
    ``bench_dask``'s default scale: the check took the Chest from 1.76x to 1.96x an
    unlimited dict's time on anomaly, and from 1.94x to 2.13x on rechunk.
    ``TypeError`` for a ``chest`` that is not a Chest, or one given with keywords for a new one.
    """
    made = chest is None
    if chest is None:
        chest_kwargs.setdefault("map_loads", True)
        if not chest_kwargs.get("write_behind"):  # (see the docstring; with write-behind: the Chest's default)
            chest_kwargs.setdefault("verify_writes", False)
        chest = Chest(available_memory=available_memory, policy=policy or "nextuse", **chest_kwargs)
    elif not isinstance(chest, Chest):
        raise TypeError(
            f"spilling() takes a spillkit.Chest or keywords for a new one, not {type(chest).__name__} "
            f"{chest!r}; for a budget: spilling(available_memory=...)"
        )
    else:
        given = [*(["available_memory"] if available_memory is not None else []), *(["policy"] if policy else [])]
        if given or chest_kwargs:
            raise TypeError(f"give Chest keywords ({', '.join(given + list(chest_kwargs))}) or a chest, not both")
    cache = WorkerLoads(chest)
    settings: dict[str, Any] = {"cache": cache}
    if _current("scheduler") in (None, _ABSENT, "threads", "threading") and not distributed_client_active():
        settings["scheduler"] = cache.schedule  # dask's threaded scheduler, with spilled inputs loaded by workers
    try:
        # The settings go before the callback: a computation that starts while the block ends either
        # meets the callback (which claims the Chest for it, so a close waits) or no longer finds the cache.
        with ChestCallback(chest):
            _install(cache, settings)
            try:
                yield chest
            finally:
                _uninstall(cache)
    finally:
        if made:
            cache.close_when_free(chest.close)


_settings_lock = threading.Lock()
_ABSENT = object()


def _install(cache: WorkerLoads, settings: dict[str, Any]) -> None:
    """Set ``settings`` in dask.config, remembering what they replace (not dask.config.set's context: see below)."""
    with _settings_lock:
        cache.replaced = {name: _current(name) for name in settings}
        dask.config.config.update(settings)


def _uninstall(cache: WorkerLoads) -> None:
    """End the block: put back what it replaced, skipping settings of blocks that have ended since.

    dask.config.set's context would put back what it found on entry: two blocks in two threads that end
    out of order would leave the first block's cache in force, its Chest closed, and a computation
    starting then would meet it with no callback to claim it. A setting a later block (or the user) put
    in place is left: that one, when it ends, puts back what this block found, or what that block did.
    """
    with _settings_lock:
        cache.active = False  # (a Client closed after this block may put its scheduler= back)
        for name in cache.replaced:
            current = dask.config.config.get(name, _ABSENT)
            if _loads_of(current) is not cache:
                continue
            value = _live_setting(name, cache.replaced[name])
            if value is _ABSENT:
                dask.config.config.pop(name, None)
            else:
                dask.config.config[name] = value


def _current(name: str) -> Any:
    """dask.config's ``name`` in force (:func:`_live_setting`), or ``_ABSENT``."""
    return _live_setting(name, dask.config.config.get(name, _ABSENT))


def _live_setting(name: str, value: Any) -> Any:
    """``value`` of dask.config's ``name``, or, if it is an ended block's, what that block found (and so on).

    An ended block's setting comes back when a ``dask.config.set`` context that began during the block
    ends after it (it puts back what it found): its scheduler would still be in force, serving nothing.
    """
    while (ended := _loads_of(value)) is not None and not ended.active:
        value = ended.replaced.get(name, _ABSENT)
    return value


def _loads_of(setting: Any) -> WorkerLoads | None:
    """The WorkerLoads a dask.config ``cache`` or ``scheduler`` setting belongs to, if any."""
    if isinstance(setting, WorkerLoads):
        return setting
    owner = getattr(setting, "__self__", None)  # (scheduler=: its bound schedule method)
    return owner if isinstance(owner, WorkerLoads) else None
