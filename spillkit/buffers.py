"""Read buffers that are not zero-filled first, and giving back the pages of a read no value uses.

``bytearray(n)`` writes n zero bytes before a read overwrites them all: on
spill loads of large arrays that extra pass measured 0.09 s of the 0.16 s a
dask workload spent in ``DiskStore.read`` (``benchmarks/bench_dask.py
--profile``). ``numpy.empty`` skips it. numpy is not a dependency of spillkit,
so it is used only when the process has already imported it (which it has
whenever the values carry numpy arrays, the case where reads are large).

A value's out-of-band arrays are views into the buffer its record was read into
(or the file's mapping), so the whole buffer lives as long as any of them,
pickle stream included: 93 MB of pickled strings stayed beside a DataFrame's
12 MB float column, uncounted (helper-114). :func:`release_pages` gives the
stream's whole pages back once the value is unpickled (nothing refers to them:
unpickling copies what the stream holds).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys

__all__ = ["UNINITIALIZED_FROM", "read_buffer", "release_pages"]

UNINITIALIZED_FROM = 1 << 16  # smaller reads: bytearray is as fast (the zero-fill is cheap in cache)


def read_buffer(size: int) -> memoryview:
    """A writable, C-contiguous byte buffer of ``size`` bytes whose contents are undefined.

    Thread-safe. Raises ``MemoryError`` when the allocation fails.
    """
    numpy = sys.modules.get("numpy")
    # While another thread is still importing numpy, the module is in sys.modules without its names yet.
    empty = getattr(numpy, "empty", None)
    uint8 = getattr(numpy, "uint8", None)
    if empty is not None and uint8 is not None and size >= UNINITIALIZED_FROM:
        view: memoryview = memoryview(empty(size, dtype=uint8)).cast("B")
        return view
    return memoryview(bytearray(size))


def _bind_madvise() -> object | None:
    if os.name != "posix" or not hasattr(mmap, "MADV_DONTNEED"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):  # pragma: no cover - a POSIX libc without madvise
        return None
    madvise.restype = ctypes.c_int
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return madvise


_MADVISE = _bind_madvise()


def release_pages(view: memoryview) -> int:
    """Give the whole pages inside ``view`` back to the system (``MADV_DONTNEED``); return the bytes given.

    Only for memory the caller owns and will not read again: afterwards an anonymous
    page reads as zeros and a page of a private file mapping as the file's. A read-only
    view, or a system without ``madvise``, gives nothing back (returns 0). Thread-safe.
    """
    if _MADVISE is None or view.readonly or not view.c_contiguous:
        return 0
    try:
        address = ctypes.addressof(ctypes.c_char.from_buffer(view))
    except (TypeError, ValueError):  # an empty view, or one ctypes cannot take
        return 0
    start = address + (-address % mmap.PAGESIZE)
    end = (address + view.nbytes) - (address + view.nbytes) % mmap.PAGESIZE
    if end <= start:
        return 0
    if _MADVISE(start, end - start, mmap.MADV_DONTNEED) != 0:  # type: ignore[operator]
        return 0  # (EINVAL on memory the system will not release: nothing lost, nothing given)
    return end - start
