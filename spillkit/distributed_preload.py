"""The command-line form of ``data=worker_storage``: a dask preload module.

``dask worker`` has no option for a worker's ``data=`` mapping, and dask's
configuration has no key for it. What it has is preloads, modules whose
``dask_setup(server)`` runs in each nanny or worker as it starts::

    # with a nanny (dask worker's default): sets the nanny's data= for its worker
    dask worker tcp://scheduler:8786 --memory-limit 8GiB --preload-nanny spillkit.distributed_preload

    # without a nanny: replaces the worker's still empty storage before it connects
    dask worker tcp://scheduler:8786 --no-nanny --preload spillkit.distributed_preload

The options of :func:`~spillkit.distributed.worker_storage` come from dask's
configuration, under ``spillkit.worker`` (``policy``, ``available-memory``,
``available-disk``, ``memory-limit``, ``instrument-metrics``, ``name``), so environment variables
or a YAML file set them::

    DASK_SPILLKIT__WORKER__POLICY=cost dask worker ... --preload-nanny spillkit.distributed_preload

    # ~/.config/dask/spillkit.yaml: the configuration alone, no command-line option
    distributed:
      worker:
        preload: [spillkit.distributed_preload]
    spillkit:
      worker:
        policy: cost

``distributed.nanny.preload`` in the configuration works for nannies made in
Python, but ``dask worker`` passes its own (empty) ``--preload-nanny`` list,
which overrides it; ``distributed.worker.preload`` works in both modes.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, cast

from .extras import missing_extra

try:
    import dask.config
    from distributed import Nanny, Worker
except ImportError as error:  # (tests/test_extras.py)
    raise missing_extra("spillkit.distributed_preload", "dask.distributed", "dask") from error

from .chest import Chest
from .distributed import storage_for, worker_storage

if TYPE_CHECKING:
    from dask.typing import Key

__all__ = ["dask_setup", "refuse_to_start", "storage_options"]

_OPTIONS = ("policy", "available-memory", "available-disk", "memory-limit", "instrument-metrics", "name")


def storage_options() -> dict[str, Any]:
    """The keyword arguments for ``worker_storage`` set under ``spillkit.worker`` in dask's config.

    Raises ``ValueError`` naming the known options if an unknown one is set
    (a misspelt option would otherwise be ignored silently).
    """
    config = dask.config.get("spillkit.worker", default=None) or {}
    if not isinstance(config, Mapping):  # (DASK_SPILLKIT__WORKER=1 sets the section itself)
        raise ValueError(f"spillkit.worker must be a mapping of options, not {config!r}; known: {list(_OPTIONS)}")
    unknown = sorted(set(config) - set(_OPTIONS) - {o.replace("-", "_") for o in _OPTIONS})
    if unknown:
        raise ValueError(f"unknown spillkit.worker option(s) {unknown}; known: {list(_OPTIONS)}")
    return {key.replace("-", "_"): value for key, value in config.items()}


def refuse_to_start(reason: str, **_: Any) -> MutableMapping[Key, object]:
    """The nanny's ``data=`` for its worker when the options are wrong: the worker fails to start, saying why."""
    raise ValueError(f"spillkit.distributed_preload: {reason}")


def dask_setup(server: Nanny | Worker) -> None:
    """Make ``server``'s worker store its data in a spillkit Chest.

    A :class:`~distributed.Nanny` gets ``data=(worker_storage, options)`` for
    the worker process it starts (and restarts), exactly as
    ``Nanny(data=...)`` would. A :class:`~distributed.Worker` (``--no-nanny``,
    or ``--preload`` under a nanny) has its storage replaced: dask runs
    preloads before the worker registers with the scheduler, so the storage
    is still empty.

    Raises
    ------
    ValueError
        If the nanny was already given a ``data=``, or an option is unknown.
    RuntimeError
        If the worker already holds data.

    Notes
    -----
    dask calls it once per server, from the server's event loop while it
    starts; it is not meant to be called concurrently. dask logs an
    exception a preload raises ("Failed to start preload") and starts the
    server all the same (``distributed.preloading.PreloadManager`` catches
    every ``Exception``): a worker given ``--preload`` then keeps dask's own
    storage, its log the only sign; nothing is half-replaced. Under a
    nanny, wrong options are not raised here but handed to the worker
    (:func:`refuse_to_start`), whose start then fails with their message.
    """
    if isinstance(server, Nanny):
        if server.worker_kwargs.get("data") is not None:
            raise ValueError("spillkit.distributed_preload: this nanny already has a data= mapping for its worker")
        try:
            server.worker_kwargs["data"] = (worker_storage, storage_options())
        except ValueError as error:  # raised here, dask would log it and start the worker on its own storage
            server.worker_kwargs["data"] = (refuse_to_start, {"reason": str(error)})
        return
    options = storage_options()
    manager = server.memory_manager
    if len(manager.data):
        raise RuntimeError("spillkit.distributed_preload: the worker already holds data; preload it at start")
    if isinstance(manager.data, Chest):  # data=worker_storage as well: that empty Chest goes (files, label)
        manager.data.drop()
    storage = cast("MutableMapping[Key, object]", storage_for(server, **options))  # (dropped with the worker)
    # The worker reads its storage through the memory manager and its state machine.
    manager.data = storage
    server.state.data = storage
