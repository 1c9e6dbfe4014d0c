"""Read buffers that are not zero-filled first.

``bytearray(n)`` writes n zero bytes before a read overwrites them all: on
spill loads of large arrays that extra pass measured 0.09 s of the 0.16 s a
dask workload spent in ``DiskStore.read`` (``benchmarks/bench_dask.py
--profile``). ``numpy.empty`` skips it. numpy is not a dependency of spillkit,
so it is used only when the process has already imported it (which it has
whenever the values carry numpy arrays, the case where reads are large).
"""

from __future__ import annotations

import sys

__all__ = ["UNINITIALIZED_FROM", "read_buffer"]

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
