"""Append-only segment files, each holding many small spill records back to back.

Pure file mechanics for :class:`~spillkit.segments.PackedStore`: naming,
creating, appending, reading. A segment is never rewritten in place: bytes are
only appended past its end, so a record that a manifest points at stays
exactly as it was until the file is unlinked whole.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Hashable
from dataclasses import dataclass, field

__all__ = ["SEGMENT_PREFIX", "Segment", "append", "create_segment", "is_segment_name", "open_segment", "read_at"]

SEGMENT_PREFIX = ".spillkit-seg-"  # hidden: a key's file name never starts with a dot (naming.is_reserved)
_SEGMENT_NAME = re.compile(r"\.spillkit-seg-[0-9]{6,}\Z")


def is_segment_name(name: str) -> bool:
    """True for the names segment files are given."""
    return _SEGMENT_NAME.match(name) is not None


@dataclass(eq=False, slots=True)
class Segment:
    """One segment file and what this process knows of it.

    ``size`` is the file's length as written by this process (dead records
    included); ``live`` the bytes of the records some key still points at.
    """

    name: str
    fd: int
    size: int
    live: int = 0
    keys: set[Hashable] = field(default_factory=set)
    pinned: bool = False  # the last manifest points into it: unlink only once a newer manifest is durable
    dirty: bool = False  # appended to since the last fsync
    appendable: bool = True  # False once a failed append could not be undone, or for a re-opened file
    # An fsync failed: Linux may have dropped the dirty pages and reports that once, so the contents
    # on disk are unknown and a second fsync would prove nothing. Its live records are written anew
    # elsewhere (verified) before a manifest may name them; it takes no appends and is not compacted.
    unsynced: bool = False
    pid: int = field(default_factory=os.getpid)  # a forked child never appends to nor unlinks its parent's

    def close(self) -> None:
        """Close the file descriptor (idempotent)."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    @property
    def dead(self) -> int:
        """Bytes no key points at any more (deleted or overwritten records, failed appends)."""
        return self.size - self.live


def create_segment(path: str, number: int) -> tuple[Segment, int]:
    """Create the first free segment file numbered ``number`` or above; return it and the next number.

    ``O_EXCL`` makes the file ours even when another Chest opened the same
    directory and made segments of its own.
    """
    while True:
        name = f"{SEGMENT_PREFIX}{number:06d}"
        try:
            fd = os.open(os.path.join(path, name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            number += 1
            continue
        return Segment(name, fd, 0), number + 1


def open_segment(path: str, name: str) -> Segment:
    """Open an existing segment for reading (re-opening a directory); FileNotFoundError if it is gone."""
    fd = os.open(os.path.join(path, name), os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
    except BaseException:
        os.close(fd)
        raise
    return Segment(name, fd, size, pinned=True, appendable=False)


def append(segment: Segment, data: bytes) -> int:
    """Write ``data`` at the segment's end and return its offset.

    On failure (disk full, I/O error) the partial record is cut off again so
    the file keeps its length; if even that fails the segment takes the bytes
    as dead and accepts no more appends. Either way the error is raised.
    """
    offset = segment.size
    view = memoryview(data)
    written = 0
    try:
        while written < len(view):
            written += os.pwrite(segment.fd, view[written:], offset + written)
    except BaseException:
        try:  # even when nothing was counted as written: a failing device may have taken part of it
            os.ftruncate(segment.fd, offset)
        except OSError:
            segment.appendable = False
            with contextlib.suppress(OSError):
                segment.size = max(offset, os.fstat(segment.fd).st_size)
        raise
    segment.size = offset + len(view)
    segment.dirty = True
    return offset


def read_at(segment: Segment, offset: int, length: int) -> bytes:
    """Read ``length`` bytes at ``offset``; fewer only when the file was cut short."""
    return os.pread(segment.fd, length, offset)
