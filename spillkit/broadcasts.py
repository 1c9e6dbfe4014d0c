"""Broadcast numpy arrays go to disk as the elements they hold, and come back broadcast.

``np.broadcast_to`` (and ``dask.array.ones``, ``zeros``, ``full`` and ``empty``, whose chunks are
broadcast scalars) gives arrays whose zero strides repeat a few elements over a large shape.
``dask.sizeof`` counts such an array by the elements it holds, so a 32 MB array of zeros costs
a Chest's budget 8 bytes. Plain pickling writes every repeated element, and loads a contiguous
copy of the whole shape: a Chest that counted 8 bytes would then hold 32 MB, over its budget,
after spilling 32 MB it had no need to write. The codec's pickler (:mod:`spillkit.picklers`)
pickles such an array as its held elements, its shape and whether it was writable, and
:func:`rebroadcast` rebuilds the same strided view, so the value comes back with the size it
was counted at. (dask.distributed's serialization keeps broadcasts the same way.)

Arrays of objects pickle as numpy pickles them (their elements may hold the array itself, which
a reduction by its elements could not pickle). Arrays numpy only warns about writing to (the
results of ``np.broadcast_arrays``, which numpy says will become read-only) come back read-only.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["broadcast_reduction", "held_elements", "is_plain", "rebroadcast"]

# Values that hold no array, pickled by plain pickle.dumps: faster than any pickler given a rule.
_NO_ARRAYS = frozenset({bytes, bytearray, str, int, float, complex, bool, type(None)})


def _is_broadcast(array: Any) -> bool:
    """True when some axis longer than one has stride zero: elements repeated, not stored."""
    if 0 not in array.strides or array.size == 0:  # (the first test alone for most arrays: it is fast)
        return False
    return any(stride == 0 and length > 1 for stride, length in zip(array.strides, array.shape, strict=True))


def is_plain(value: Any) -> bool:
    """True if pickling ``value`` can meet no broadcast array: plain pickle gives the same bytes.

    So while numpy is not imported (no array exists), and for a number, string or bytes, or an
    ``np.ndarray`` that is no broadcast and holds no objects.
    """
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return True
    kind = type(value)
    return kind in _NO_ARRAYS or (kind is numpy.ndarray and not value.dtype.hasobject and not _is_broadcast(value))


def broadcast_reduction(obj: Any) -> tuple[Any, ...] | None:
    """How to pickle ``obj`` if it is a broadcast ``np.ndarray`` (not a subclass, not of objects), else None."""
    numpy = sys.modules.get("numpy")
    if numpy is None or type(obj) is not numpy.ndarray or obj.dtype.hasobject or not _is_broadcast(obj):
        return None
    # (The held elements' repeated axes have length 1 and pickle as themselves: this does not come
    # back to them.) The array interface says read-only where the flags would warn
    # (np.broadcast_arrays' results), without warning.
    return rebroadcast, (held_elements(obj), obj.shape, not obj.__array_interface__["data"][1])


def held_elements(array: Any) -> Any:
    """The elements an array holds: its view of the first along every axis of stride zero."""
    return array[tuple(slice(0, 1) if stride == 0 else slice(None) for stride in array.strides)]


def rebroadcast(held: Any, shape: tuple[int, ...], writeable: bool) -> Any:
    """Rebuild a broadcast array from its held elements: ``np.broadcast_to``'s view of them.

    ``writeable`` restores an array made writable through ``as_strided``, whose writes land
    on every element that shares the held one along the repeated axes, as they did before the
    spill (views that overlapped along other axes come back apart). The strides are numpy's own
    broadcast of ``held`` to ``shape`` (ValueError if it does not broadcast), never taken from
    the file.
    """
    import numpy as np

    view = np.broadcast_to(held, shape)
    if writeable and held.flags.writeable:
        view = np.lib.stride_tricks.as_strided(held, shape=view.shape, strides=view.strides, writeable=True)
    return view
