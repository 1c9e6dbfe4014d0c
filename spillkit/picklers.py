"""The codec's picklers: plain ``pickle.dumps`` where it can, a pickler that keeps broadcasts where it must.

:func:`dumps` pickles a value with protocol 5 and a ``buffer_callback``, as ``pickle.dumps``
does, except that broadcast numpy arrays anywhere inside it pickle as the elements they hold
(:mod:`spillkit.broadcasts`). Values that cannot hold one take ``pickle.dumps`` itself; the
others a pickler whose ``reducer_override`` catches broadcasts and leaves everything else to
pickle's usual rules (``copyreg`` registrations included). Making a pickler costs a microsecond
(three times a small dict's whole ``pickle.dumps``), so each thread keeps one and clears its
memo after each value. :func:`cloud_dumps` is the same over cloudpickle, for what plain pickle
refuses (lambdas, local classes).
"""

from __future__ import annotations

import io
import pickle
import sys
import threading
from collections.abc import Callable
from typing import Any

import cloudpickle

from .broadcasts import broadcast_reduction, is_plain

__all__ = ["cloud_dumps", "dumps"]

Keep = Callable[[pickle.PickleBuffer], bool]
Buffer = bytes | bytearray | memoryview


_ndarray: Any = None  # numpy.ndarray, once a value that may hold one is pickled


class _BroadcastPickler(pickle.Pickler):
    # Called for every object pickle has no rule of its own for (not ints, strings, containers...):
    # the first test is all most pay.
    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is _ndarray and 0 in obj.strides:
            reduction = broadcast_reduction(obj)
            if reduction is not None:
                return reduction
        return NotImplemented


class _BroadcastCloudPickler(cloudpickle.Pickler):  # type: ignore[misc]  # (cloudpickle has no types)
    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is _ndarray and 0 in obj.strides:
            reduction = broadcast_reduction(obj)
            if reduction is not None:
                return reduction
        return super().reducer_override(obj)


class _Slot:
    """One thread's pickler, its file, and the ``buffer_callback`` of the value it is pickling."""

    __slots__ = ("busy", "keep", "pickler", "sink")

    def __init__(self) -> None:
        self.busy = False
        self.keep: Keep | None = None
        self.sink = io.BytesIO()
        self.pickler = _BroadcastPickler(self.sink, protocol=5, buffer_callback=self.callback)

    def callback(self, buffer: pickle.PickleBuffer) -> bool:
        assert self.keep is not None  # (set for the whole of each dump)
        return self.keep(buffer)


_threads = threading.local()


def dumps(obj: Any, keep: Keep) -> Buffer:
    """``pickle.dumps(obj, protocol=5, buffer_callback=keep)``, keeping broadcast arrays broadcast.

    Raises what pickle raises. Thread-safe (one pickler per thread). A reducer that pickles
    another value meanwhile, on the same thread, gets a pickler of its own.
    """
    global _ndarray
    if is_plain(obj):
        return pickle.dumps(obj, protocol=5, buffer_callback=keep)
    if _ndarray is None:
        _ndarray = sys.modules["numpy"].ndarray  # (is_plain: numpy is imported)
    slot: _Slot | None = getattr(_threads, "slot", None)
    if slot is None or slot.busy:
        if slot is not None:
            return _fresh(_BroadcastPickler, obj, keep)
        slot = _threads.slot = _Slot()
    slot.busy, slot.keep = True, keep
    sink = slot.sink
    try:
        slot.pickler.dump(obj)
        return sink.getvalue()  # (no copy: the file hands over its bytes, and takes new ones below)
    except BaseException:
        _threads.slot = None  # a dump cut short: the next value gets a new pickler
        raise
    finally:
        # Let go of what this value referenced: the memo holds every object pickled, the file the bytes.
        slot.pickler.clear_memo()
        sink.seek(0)
        sink.truncate()
        slot.busy = False
        slot.keep = None


def cloud_dumps(obj: Any, keep: Keep) -> Buffer:
    """``cloudpickle.dumps(obj, protocol=5, buffer_callback=keep)``, keeping broadcast arrays broadcast."""
    if is_plain(obj):
        stream: bytes = cloudpickle.dumps(obj, protocol=5, buffer_callback=keep)
        return stream
    return _fresh(_BroadcastCloudPickler, obj, keep)


def _fresh(pickler: Callable[..., Any], obj: Any, keep: Keep) -> Buffer:
    sink = io.BytesIO()
    pickler(sink, protocol=5, buffer_callback=keep).dump(obj)
    return sink.getvalue()
