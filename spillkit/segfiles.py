"""Append-only segment files, each holding many small spill records back to back.

Pure file mechanics for :class:`~spillkit.segments.PackedStore`: naming,
creating, appending, reading. A segment is never rewritten in place: bytes are
only appended past its end, so a record that a manifest points at stays
exactly as it was until the file is unlinked whole. Only blocks that hold
no live byte may be given back, by punching holes (:func:`punch_dead`).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

from .holes import dead_blocks, hole_support, punch
from .regularfile import SAFE_OPEN, ensure_regular

__all__ = [
    "SEGMENT_PREFIX",
    "Segment",
    "append",
    "create_segment",
    "is_segment_name",
    "open_segment",
    "punch_dead",
    "read_at",
]

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
    ``synced`` and ``settled`` say what is known to be on disk (see ``trusts``).
    """

    name: str
    fd: int
    size: int
    live: int = 0
    keys: set[Hashable] = field(default_factory=set)
    pinned: bool = False  # the last manifest points into it: unlink only once a newer manifest is durable
    # Its size when last pinned: no manifest names a record at or past it, so those records may go at
    # once when they die (the active segment is sealed then, see SegmentIndex); their dead bytes so far.
    pinned_size: int = 0
    dead_since_pin: int = 0
    dirty: bool = False  # appended to since the last fsync
    appendable: bool = True  # False once a failed append could not be undone, or for a re-opened file
    synced: int = 0  # the file's first ``synced`` bytes were covered by a successful fsync
    settled: bool = False  # its directory entry was covered by a successful fsync of the directory
    # An fsync of it (or of the directory, before ``settled``) failed: Linux may have dropped the dirty
    # pages and reports that once, so a second fsync would prove nothing. Records past ``synced`` are
    # not trusted (see ``trusts``); it is never fsynced or appended to again.
    unsynced: bool = False
    pid: int = field(default_factory=os.getpid)  # a forked child never appends to nor unlinks its parent's
    # A record died while the segment was pinned: the last manifest may name it, so no hole is punched
    # over the dead records until the next checkpoint (see spillkit.holes).
    named_dead: bool = False
    adopted: bool = False  # re-opened from an earlier session (small ones are merged at a flush: SegmentUpkeep)
    punched: int = 0  # bytes holes punched over dead records gave back (``size`` still counts them)
    dead_punched: int = 0  # ``dead`` when holes were last punched: no more to give back while it is the same

    def trusts(self, offset: int, length: int) -> bool:
        """False for a record that may not be on disk: past ``synced`` in a segment whose fsync failed.

        A record that ends at or below ``synced`` is trusted even when the failed write-back carried
        a page it shares with newer records. Its bytes were on disk after the good fsync and are never
        written again: appends only go past the end, and a failed append is cut off at its own offset,
        never below ``synced``. The page the failed write-back carried holds those same bytes in that
        range, so the disk keeps them whether the page was not written, written, or torn sector by
        sector; the page cache, marked clean, still holds them too, and a re-read after eviction gets
        the disk's. The file's length on disk is at least ``synced`` (the good fsync made it durable).
        What this cannot rule out, a device that damages a sector it fails to write, is the exposure
        every append to a flushed segment has anyway (it rewrites that page), and such a record fails
        its CRC and HMAC when read, like any damaged record.
        """
        return not self.unsynced or offset + length <= self.synced

    def pin(self) -> None:
        """A manifest about to be committed (or committed) may name every record in it now."""
        self.pinned, self.pinned_size, self.dead_since_pin = True, self.size, 0

    def distrust(self, durable: int) -> None:
        """An fsync failed: only the first ``durable`` bytes (or fewer, already) stay trusted; no more appends."""
        self.unsynced = True
        self.synced = min(self.synced, durable)
        self.dirty = False
        self.appendable = False  # the next append starts a fresh segment

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
    """Open an existing segment for reading (re-opening a directory).

    FileNotFoundError if it is gone, another ``OSError`` if it cannot be opened or is no
    regular file (see :mod:`spillkit.regularfile`).
    """
    full = os.path.join(path, name)
    fd = ensure_regular(os.open(full, os.O_RDONLY | SAFE_OPEN), full)  # a planted FIFO must not block the reopen
    try:
        size = os.fstat(fd).st_size
    except BaseException:
        os.close(fd)
        raise
    # A manifest points into it, so its flush fsynced those records and the directory. Bytes past them
    # (a killed process's appends) are never read; the segment is never appended to nor fsynced again.
    return Segment(
        name, fd, size, pinned=True, pinned_size=size, appendable=False, synced=size, settled=True, adopted=True
    )


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
    data = os.pread(segment.fd, length, offset)
    if len(data) == length or not data:
        return data
    # Linux returns at most 0x7ffff000 bytes per call: a record of 2 GiB or more takes several.
    parts = [data]
    got = len(data)
    while got < length:
        part = os.pread(segment.fd, length - got, offset + got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def punch_dead(path: str, segment: Segment, live: Iterable[tuple[int, int]]) -> int:
    """Punch holes over the whole blocks of the segment no ``live`` ``(offset, length)`` touches; return bytes freed.

    The caller makes sure no manifest names a record there (see :mod:`spillkit.holes`). A segment
    adopted read-only is opened for writing by its name, used only if that is still the same file.
    The bytes freed are what the file's allocated blocks shrank by, so a range punched before
    counts nothing. Never raises ``OSError``: a refusal leaves the bytes where they were.
    """
    if not hole_support() or segment.fd < 0:
        return 0
    writer = -1
    try:
        info = os.fstat(segment.fd)
        if _opened_for_writing(segment.fd):
            writer = segment.fd
        else:
            writer = os.open(os.path.join(path, segment.name), os.O_WRONLY | SAFE_OPEN)  # no link, no FIFO wait
            again = os.fstat(writer)
            if (again.st_dev, again.st_ino) != (info.st_dev, info.st_ino):  # the name now stands for another file
                return 0
        # Whole pages at least: a hole over part of one zeroes that part, rewriting a page that holds live bytes.
        punch(writer, dead_blocks(segment.size, live, max(info.st_blksize, mmap.PAGESIZE)))
        return max(0, info.st_blocks - os.fstat(segment.fd).st_blocks) * 512  # st_blocks counts 512-byte units
    except OSError:
        return 0
    finally:
        if writer not in (-1, segment.fd):
            os.close(writer)


def _opened_for_writing(fd: int) -> bool:
    import fcntl  # here: reached only where holes can be punched (Linux); this module imports anywhere

    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY
