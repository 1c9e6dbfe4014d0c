"""refuse_to_start (spillkit.distributed_preload): the nanny's data= when the preload's options are wrong.

The preload's own paths (dask_setup on nannies and workers, misspelt options failing a nanny's worker)
are in tests/test_distributed.py; this is the function itself, called as dask calls a ``(func, kwargs)``.
"""

from __future__ import annotations

import pytest
from distributed.utils import has_arg

from spillkit.distributed_preload import refuse_to_start


def test_refuse_to_start_raises_the_reason_under_the_preloads_name() -> None:
    # Catches: returning a mapping (the worker would start on it, and the wrong options would be ignored
    # silently) or a message that does not say which module refused or why.
    with pytest.raises(ValueError, match=r"^spillkit\.distributed_preload: unknown option 'polcy'$"):
        refuse_to_start("unknown option 'polcy'")


def test_refuse_to_start_raises_however_dask_calls_it() -> None:
    # Catches: a TypeError (an unexpected keyword) in place of the reason: dask passes the worker's local
    # directory to a data= callable that names it, and kwargs its caller set up.
    kwargs = {"reason": "bad options"}
    if has_arg(refuse_to_start, "worker_local_directory"):  # (as WorkerMemoryManager decides)
        kwargs["worker_local_directory"] = "/nonexistent"
    with pytest.raises(ValueError, match="bad options"):
        refuse_to_start(**kwargs)
    with pytest.raises(ValueError, match="bad options"):
        refuse_to_start(reason="bad options", worker_local_directory="/nonexistent", anything=1)
