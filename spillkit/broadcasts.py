"""Broadcast numpy arrays go to disk as the elements they hold, and come back broadcast.

``np.broadcast_to`` (and ``dask.array.ones``, ``zeros``, ``full`` and ``empty``, whose chunks are
broadcast scalars) gives arrays whose zero strides repeat a few elements over a large shape.
``dask.sizeof`` counts such an array by the elements it holds, so a 32 MB array of zeros costs
a Chest's budget 8 bytes. Plain pickling writes every repeated element, and loads a contiguous
copy of the whole shape: a Chest that counted 8 bytes would then hold 32 MB, over its budget,
after spilling 32 MB it had no need to write. The codec pickles such an array as its held
elements, its shape and whether it was writable, and :func:`rebroadcast` rebuilds the same
strided view, so the value comes back with the size it was counted at. (dask.distributed's
serialization keeps broadcasts the same way.)
"""

from __future__ import annotations

import copyreg
import sys
from typing import Any

__all__ = ["dispatch_table", "rebroadcast"]


def _is_broadcast(array: Any) -> bool:
    """True when some axis longer than one has stride zero: elements repeated, not stored."""
    if 0 not in array.strides or array.size == 0:  # (the first test alone for most arrays: it is fast)
        return False
    return any(stride == 0 and length > 1 for stride, length in zip(array.strides, array.shape, strict=True))


def _reduce_ndarray(array: Any) -> Any:
    if not _is_broadcast(array):
        return array.__reduce_ex__(5)
    # The held elements: the first along every repeated axis (a length-1 axis pickles as
    # itself, so this reducer does not come back to it).
    held = array[tuple(slice(0, 1) if stride == 0 else slice(None) for stride in array.strides)]
    return rebroadcast, (held, array.shape, bool(array.flags.writeable))


def rebroadcast(held: Any, shape: tuple[int, ...], writeable: bool) -> Any:
    """Rebuild a broadcast array from its held elements: ``np.broadcast_to``'s view of them.

    ``writeable`` restores an array made writable through ``as_strided``, whose writes land
    on every element that shares the held one, as they did before the spill. The strides are
    numpy's own broadcast of ``held`` to ``shape`` (ValueError if it does not broadcast), never
    taken from the file.
    """
    import numpy as np

    view = np.broadcast_to(held, shape)
    if writeable and held.flags.writeable:
        view = np.lib.stride_tricks.as_strided(held, shape=view.shape, strides=view.strides, writeable=True)
    return view


# Values that hold no array: pickled by plain pickle.dumps, which is 1 microsecond faster
# than a Pickler made to take a dispatch table (a third of a small value's encoding).
_NO_ARRAYS = frozenset({bytes, bytearray, str, int, float, complex, bool, type(None)})


def dispatch_table(value: Any) -> dict[Any, Any] | None:
    """The dispatch table that pickles ``value`` with its broadcast arrays kept; None if it needs none.

    None while numpy is not imported (no array can exist), and for a ``value`` that can hold no
    broadcast array: a plain number, string or bytes, or an ``np.ndarray`` that is no broadcast
    and holds no objects. Otherwise a copy of :data:`copyreg.dispatch_table` taken now, so
    reducers registered with :func:`copyreg.pickle` still apply. Only arrays of exactly
    ``np.ndarray`` are affected; subclasses pickle as they define.
    """
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return None
    kind = type(value)
    if kind in _NO_ARRAYS or (kind is numpy.ndarray and not value.dtype.hasobject and not _is_broadcast(value)):
        return None
    table = dict(copyreg.dispatch_table)
    table[numpy.ndarray] = _reduce_ndarray
    return table
