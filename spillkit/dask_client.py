"""Whether a dask.distributed Client is active: then dask ignores ``cache=``, and a Chest given to it is unused.

Part of :mod:`spillkit.dask` (re-exported by :mod:`spillkit.dask_callback`). Imports
``distributed`` only if the process already has.
"""

from __future__ import annotations

import sys
import warnings

__all__ = ["distributed_client_active", "warn_if_distributed"]


def distributed_client_active() -> bool:
    """True when a dask.distributed Client is active (then dask ignores ``cache=``)."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        distributed.default_client()
    except ValueError:
        return False
    return True


def warn_if_distributed() -> bool:
    """Warn (and return True) when a dask.distributed Client is active: dask then ignores ``cache=``."""
    if not distributed_client_active():
        return False
    warnings.warn(
        "a dask.distributed Client is active, so dask ignores cache= and this Chest will not be used; "
        "use spillkit.distributed.worker_storage as the workers' data= instead",
        RuntimeWarning,
        stacklevel=3,
    )
    return True
