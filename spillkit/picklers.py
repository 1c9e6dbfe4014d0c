"""The codec's picklers: plain ``pickle.dumps`` where it can, a pickler that keeps broadcasts where it must.

:func:`dumps` pickles a value with protocol 5 and a ``buffer_callback``, as ``pickle.dumps``
does, except that broadcast numpy arrays anywhere inside it pickle as the elements they hold
(:mod:`spillkit.broadcasts`). Values that cannot hold one take ``pickle.dumps`` itself; the
others a pickler whose ``reducer_override`` catches broadcasts and leaves everything else to
pickle's usual rules (``copyreg`` registrations included). Making a pickler costs a microsecond
(three times a small dict's whole ``pickle.dumps``), so each thread keeps one for small values
and clears its memo after each. :func:`cloud_dumps` is the same over cloudpickle, for what plain pickle
refuses (lambdas, local classes).
"""

from __future__ import annotations

import collections
import io
import pickle
import sys
import threading
import types
from collections.abc import Callable
from typing import Any

import cloudpickle

from .broadcasts import broadcast_reduction, is_plain

__all__ = ["ChangedInPlace", "cloud_dumps", "dumps", "is_partd_store"]

Keep = Callable[[pickle.PickleBuffer], bool]
Buffer = bytes | bytearray | memoryview


_ndarray: Any = None  # numpy.ndarray, once a value that may hold one is pickled


_partd: Any = None  # partd.core.Interface, once partd is imported (dask imports it for a disk shuffle)


class ChangedInPlace(pickle.PicklingError):
    """A value that tasks change in place where a copy would not see it: it stays in memory, unspilled."""


def is_partd_store(value: Any) -> bool:
    """True for a partd store (dask's disk shuffle makes them); False while partd is not imported."""
    _know_types()
    return _partd is not None and isinstance(value, _partd)


def _refuse(obj: Any) -> None:
    # A partd store (dask's disk shuffle) is appended to in place by each task given it: a copy read
    # back from disk would miss those appends (helper-102: every row of a shuffle lost), and the
    # Chest could not hold a copy it served to a task (a budget smaller than the store).
    raise ChangedInPlace(
        f"{type(obj).__qualname__}: a partd store is changed in place by the tasks given it; a copy from disk "
        "would miss their changes, so it stays in memory"
    )


class _BroadcastPickler(pickle.Pickler):
    # Called for every object pickle has no rule of its own for (not ints, strings, containers...):
    # the first test is all most pay.
    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is _ndarray and 0 in obj.strides:
            reduction = broadcast_reduction(obj)
            if reduction is not None:
                return reduction
        return NotImplemented


# What cloudpickle pickles and plain pickle refuses, coming back as something else: a memoryview as
# bytes, an open text file as a StringIO of what it held, a dict's view or a mappingproxy as a view
# of a new dict that no longer follows the original (helper-102, helper-114).
_SAMPLES: tuple[object, ...] = (
    memoryview(b""),
    {}.keys(),
    {}.values(),
    {}.items(),
    collections.OrderedDict().keys(),
    collections.OrderedDict().values(),
    collections.OrderedDict().items(),
    types.MappingProxyType({}),
)
_CHANGED_BY_CLOUDPICKLE = frozenset(type(sample) for sample in _SAMPLES) | {io.TextIOWrapper}


def _is_standard_stream(obj: Any) -> bool:
    # cloudpickle pickles these two by name, so they come back as this process's own (helper-118).
    return obj is sys.stdout or obj is sys.stderr


class _BroadcastCloudPickler(cloudpickle.Pickler):  # type: ignore[misc]  # (cloudpickle has no types)
    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is _ndarray and 0 in obj.strides:
            reduction = broadcast_reduction(obj)
            if reduction is not None:
                return reduction
        elif is_partd_store(obj):
            _refuse(obj)
        elif type(obj) in _CHANGED_BY_CLOUDPICKLE and not _is_standard_stream(obj):  # it stays in memory, as it is
            raise pickle.PicklingError(f"cannot pickle {type(obj).__name__!r} object")
        return super().reducer_override(obj)


_REUSE_UP_TO = 1024  # bytes of stream: a pickler is reused only after values this short (see dumps)


class _Slot:
    """A thread's pickler, its file, and a box for the ``buffer_callback`` of the value it is pickling.

    The pickler's callback reads the box, not the slot: a slot dropped is freed at once, no cycle.
    """

    __slots__ = ("keep", "pickler", "sink")

    def __init__(self) -> None:
        keep: list[Keep] = []
        self.keep = keep
        self.sink = io.BytesIO()
        self.pickler = _BroadcastPickler(self.sink, protocol=5, buffer_callback=lambda buffer: keep[0](buffer))


_threads = threading.local()


def dumps(obj: Any, keep: Keep) -> Buffer:
    """``pickle.dumps(obj, protocol=5, buffer_callback=keep)``, keeping broadcast arrays broadcast.

    Raises what pickle raises. Thread-safe: each thread takes its own pickler out while it
    pickles, so a reducer that pickles another value meanwhile, on the same thread, finds none
    and makes one. The pickler goes back only after a whole dump of a short stream: clearing a
    pickler's memo empties its table but never shrinks it, so after a value of many objects every
    later value would pay to wipe that table (a small dict took 4 ms after a list of 2,000,000
    strings: helper-100), and a stream of n bytes memoized at most n / 2 objects.
    """
    if is_plain(obj):
        return pickle.dumps(obj, protocol=5, buffer_callback=keep)
    _know_types()
    # is_partd_store, inline (a call per value costs): the value itself, as dask stores one. Checking every
    # object inside values cost 9% on a list of 100 small objects; cloud_dumps does check them.
    if _partd is not None and isinstance(obj, _partd):
        _refuse(obj)
    slot: _Slot | None = getattr(_threads, "slot", None)
    if slot is None:
        slot = _Slot()
    else:
        _threads.slot = None
    slot.keep.append(keep)
    try:
        slot.pickler.dump(obj)
    except BaseException:
        # The slot is dropped (a dump cut short leaves no state behind), but the error's traceback
        # keeps it as long as the error lives: let go of the value's objects and buffers now.
        _empty(slot)
        raise
    stream = slot.sink.getvalue()  # (no copy: the file hands over its bytes, and takes new ones below)
    if len(stream) <= _REUSE_UP_TO:
        _empty(slot)  # what this value referenced (the memo holds every object pickled), then give it back
        _threads.slot = slot
    return stream


def _empty(slot: _Slot) -> None:
    slot.pickler.clear_memo()
    slot.sink.seek(0)
    slot.sink.truncate()
    slot.keep.clear()


def cloud_dumps(obj: Any, keep: Keep) -> Buffer:
    """``cloudpickle.dumps(obj, protocol=5, buffer_callback=keep)``, keeping broadcast arrays broadcast.

    Always through the pickler (this is the fallback for what pickle refuses: rarely a hot path),
    which also refuses what cloudpickle would turn into something else (a memoryview into bytes).
    """
    _know_types()
    sink = io.BytesIO()
    _BroadcastCloudPickler(sink, protocol=5, buffer_callback=keep).dump(obj)
    return sink.getvalue()


def _know_types() -> None:
    """Learn numpy's array type and partd's store type, once each is imported."""
    global _ndarray, _partd
    if _ndarray is None:
        numpy = sys.modules.get("numpy")  # (cloud_dumps comes here without it)
        _ndarray = None if numpy is None else numpy.ndarray
    if _partd is None:
        core = sys.modules.get("partd.core")
        _partd = None if core is None else core.Interface
