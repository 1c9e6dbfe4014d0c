"""Holes punched over the dead records of a segment: room made in place when the disk is full.

Compaction frees a segment's dead records by copying its live ones elsewhere,
which needs free room for those live bytes: a disk filled to the last block
has none, and deleting keys would then free nothing. Punching a hole
(``fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)``) gives the blocks of
a dead range back to the file system without moving anything: the file keeps
its length (reads of a hole return zeros) and every offset in the index stays
right. Only whole blocks that no live record touches are punched (a partial
block would be zeroed, rewriting a page that holds live bytes), so a live
record's bytes on disk are never written again (see ``Segment.trusts``).

Linux only (through ``ctypes``); elsewhere, or on a file system that cannot
punch holes, nothing is punched and nothing is freed. Which ranges are dead,
and whether a manifest may still name them, is
:class:`~spillkit.segindex.SegmentIndex`'s; opening and measuring the file is
:func:`spillkit.segfiles.punch_dead`'s (under the tests' fault injector).
"""

from __future__ import annotations

import ctypes
import errno
import sys
from collections.abc import Iterable
from typing import Any

__all__ = ["dead_blocks", "disk_full", "hole_support", "punch"]

_KEEP_SIZE = 0x01  # FALLOC_FL_KEEP_SIZE
_PUNCH_HOLE = 0x02  # FALLOC_FL_PUNCH_HOLE (the kernel requires KEEP_SIZE with it)


def _bind_fallocate() -> Any | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        # fallocate64 takes 64-bit offsets even in a 32-bit process; musl has only fallocate (always 64-bit).
        function = getattr(libc, "fallocate64", None) or libc.fallocate
    except (OSError, AttributeError):  # pragma: no cover - a Linux libc without fallocate
        return None
    function.restype = ctypes.c_int
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return function


_FALLOCATE = _bind_fallocate()


def hole_support() -> bool:
    """True where this platform may punch holes (Linux); the file system may still refuse."""
    return _FALLOCATE is not None


def disk_full(error: BaseException) -> bool:
    """True for the errors of a full disk or an exhausted quota (ENOSPC, EDQUOT)."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def dead_blocks(size: int, live: Iterable[tuple[int, int]], block: int) -> list[tuple[int, int]]:
    """``(offset, length)`` of the runs of whole ``block``-aligned blocks of ``[0, size)`` no live range touches.

    ``live`` holds ``(offset, length)`` pairs in any order. The partial block at the end of the file is
    left out: appends go on into it.
    """
    runs = []
    end = 0  # the furthest byte a live range reaches so far
    for offset, length in [*sorted(live), (size, 0)]:
        start = -(-end // block) * block
        stop = min(offset, size) // block * block
        if stop > start:
            runs.append((start, stop - start))
        end = max(end, offset + length)
    return runs


def punch(fd: int, runs: Iterable[tuple[int, int]]) -> None:
    """Punch a hole over each ``(offset, length)`` run of ``fd`` (open for writing), keeping the file's length.

    Stops at the first refusal (EOPNOTSUPP: a file system without holes; an I/O error): what was
    punched stays punched, the rest keeps its bytes. Never raises; does nothing off Linux.
    """
    if _FALLOCATE is None:
        return
    for offset, length in runs:
        if _FALLOCATE(fd, _PUNCH_HOLE | _KEEP_SIZE, offset, length) != 0:
            return
