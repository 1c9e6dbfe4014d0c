"""Reading a file-per-value record in two steps, so that the slow one needs no lock.

:meth:`FileReads.open_for_read` (under the engine's lock) opens the key's file;
:meth:`FileReads.finish_read` (without it) reads, checks and decodes through that
descriptor, which keeps the record's bytes readable even if the key is deleted or
overwritten meanwhile; :meth:`FileReads.still_current` (under the lock again) says
whether the record is still the key's. :mod:`spillkit.unlocked` drives the three.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from .buffers import read_buffer, release_pages
from .codecs import PickleCodec
from .errors import CorruptSpillFile
from .fileindex import FileIndex
from .mapped import FileId, Once, map_file, pin_file, unpin_file
from .regularfile import SAFE_OPEN
from .spillfile import RecordError, open_record, privatize_prefix

__all__ = ["RELEASE_STREAMS_FROM", "FileReads", "OpenRead"]

RELEASE_STREAMS_FROM = 1 << 20  # a stream's pages are given back after its decode from this length on


@dataclass(frozen=True, slots=True)
class OpenRead:
    """A record opened for reading: :meth:`DiskStore.finish_read` reads it without the engine's lock."""

    key: Hashable
    name: str
    full: str
    size: int
    tag: bytes | None
    fd: int
    pinned: FileId | None = None  # the file, pinned (spillkit.mapped) while finish_read reads or maps it
    mapping: bool = False  # finish_read maps the file (the mapping takes over the pin) rather than reading it
    unpinned: bool = False  # it should have been pinned but could not be (fstat failed): counted in _unpinned_reads


class FileReads(FileIndex):
    """The read path of :class:`~spillkit.storage.DiskStore` (its base: the index it reads from).

    ``open_for_read`` and ``still_current`` need the engine's lock, as the rest of the
    store does; ``finish_read`` touches only its descriptor and the immutable secret and
    codec, so it is thread-safe. Failures: :class:`~spillkit.errors.CorruptSpillFile`
    for a missing, short, grown or forged file, ``OSError`` from the disk, and what the
    codec raises; the descriptor is closed whatever happens.
    """

    def open_for_read(self, key: Hashable) -> OpenRead:
        """Open the key's file (under the caller's lock); :meth:`finish_read` may then run without it.

        The open descriptor keeps the file's bytes readable even if the key is deleted or
        overwritten meanwhile (its file unlinked or renamed over): a read that began still
        sees the record it began with. KeyError for a key without a file.
        """
        name = self._names[key]
        full = os.path.join(self.path, name)
        try:
            # SAFE_OPEN: a FIFO planted under the name does not block the lock forever, and a symbolic
            # link is not followed out of the directory (spillkit.regularfile); both read as damaged.
            fd = os.open(full, os.O_RDONLY | SAFE_OPEN)
        except FileNotFoundError:
            raise CorruptSpillFile(key, full, "the file is missing") from None
        except OSError as error:
            if error.errno != errno.ELOOP:
                raise
            raise CorruptSpillFile(key, full, "a symbolic link is in the file's place") from None
        try:
            info: os.stat_result | None = os.fstat(fd)
        except OSError:
            info = None  # read instead, which reports the failure
        if info is not None and not stat.S_ISREG(info.st_mode):  # a directory, a FIFO, a device
            os.close(fd)
            raise CorruptSpillFile(key, full, "not a regular file is in the file's place")
        if info is not None:
            os.set_blocking(fd, True)  # a regular file: no file system may answer its reads with EAGAIN
        size = self._sizes[key]
        pinned, mapping, unpinned = None, self.map_from is not None and size >= self.map_from, False
        if mapping or size >= self._spares.min_size:
            # Pinned now, under the lock: a delete between this and the mapping must see it mapped, and
            # must not keep the file as a spare (spillkit.spares) for a write over it while it is read.
            if info is not None:
                pinned = (info.st_dev, info.st_ino)
                pin_file(pinned)
                # A page past the end would fault: read, which reports it.
                mapping = mapping and info.st_size == size
            else:
                unpinned = True
                self._unpinned_reads.append(None)  # which file is unknown: no file is kept as a spare meanwhile
        # A short or grown file shows in finish_read.
        return OpenRead(key, name, full, size, self._tags.get(key), fd, pinned, mapping, unpinned)

    def read(self, key: Hashable) -> Any:
        """Load the key's value under the caller's lock; raise CorruptSpillFile if the file is damaged or forged."""
        return self.finish_read(self.open_for_read(key))

    def holds(self, key: Hashable, value: Any) -> bool:
        """True when the key's file is ``value`` serialized now (see :func:`~spillkit.spillfile.still_encodes`).

        The engine asks before it drops a resident value for its copy on disk: a value
        loaded or flushed, then changed in place, must be written again, not lost.
        """
        name, tag = self._names.get(key), self._tags.get(key)
        return self.prints.holds(key, name, tag, value, lambda: self.read(key))  # (loadprints: no compressing again)

    def still_current(self, pending: OpenRead) -> bool:
        """True while ``pending``'s record is still its key's current one (under the caller's lock)."""
        return self._names.get(pending.key) == pending.name and self._tags.get(pending.key) == pending.tag

    def finish_read(self, pending: OpenRead) -> Any:
        """Read, check and decode an :meth:`open_for_read` record; closes its descriptor. Needs no lock.

        A record of at least ``map_from`` bytes is mapped copy-on-write (:mod:`spillkit.mapped`)
        rather than read, when its file holds exactly the bytes written (``open_for_read``
        pinned it); any other size takes the read, which reports it.
        """
        pinned = pending.pinned
        if pinned is not None and pending.mapping:
            mapped = self._map(pending, pinned)
            if mapped is not None:
                privatize_prefix(mapped)  # checked next, then unpickled: from pages no one else can change
                return self._decode(pending, mapped)
        try:
            with open(pending.fd, "rb", buffering=0, closefd=False) as file:
                view = read_buffer(pending.size)
                got = 0
                while got < pending.size:
                    n = file.readinto(view[got:])
                    if not n:
                        break
                    got += n
                grew = got == pending.size and bool(file.read(1))  # bytes appended after the write
        finally:
            os.close(pending.fd)
            if pinned is not None:
                unpin_file(pinned)
            elif pending.unpinned:
                self._unpinned_reads.pop()
        if grew:
            raise CorruptSpillFile(pending.key, pending.full, "the file is longer than what was written")
        return self._decode(pending, view[:got])

    def _map(self, pending: OpenRead, pinned: FileId) -> memoryview | None:
        """Map the record's file and close its descriptor; None, descriptor open, if it must be read.

        The mapping takes over ``pinned``'s pin (undone just before its ``munmap``); with no
        mapping made, the pin stays for the read that follows (which undoes it), or is undone here.
        """
        unpin = Once(functools.partial(unpin_file, pinned))  # (once: an interrupt may leave two callers of it)
        try:
            mapped = map_file(pending.fd, pending.size, unpin)
        except OSError:
            return None  # a file system that cannot map files (ENODEV), or no address space left: read
        except BaseException:
            unpin()
            os.close(pending.fd)
            raise
        os.close(pending.fd)  # the mapping holds the file's pages, not the descriptor
        return mapped

    def _decode(self, pending: OpenRead, data: memoryview) -> Any:
        try:
            body = open_record(data, pending.name, self.secret, pending.tag)
        except RecordError as error:
            raise CorruptSpillFile(pending.key, pending.full, str(error)) from None
        value = self.prints.decode(pending.key, pending.tag, body)
        # The value's arrays are views into this read (or mapping), which would keep a large pickle stream
        # alive beside them, uncounted: its pages go back (the buffer is this read's own, read no more).
        codec, span = self.codec, None
        if len(body) >= RELEASE_STREAMS_FROM and isinstance(codec, PickleCodec) and _plain_pickle(codec):
            span = codec.stream_span(body)  # (only a body this long can hold a stream this long)
        if span is not None and span[1] - span[0] >= RELEASE_STREAMS_FROM:
            release_pages(body[span[0] : span[1]])
        return value


def _plain_pickle(codec: PickleCodec) -> bool:
    # A subclass may decode its own way (lazily, keeping views of the body): its memory is not ours to give back.
    kind = type(codec)
    return all(getattr(kind, name) is getattr(PickleCodec, name) for name in ("encode", "decode", "stream_span"))
