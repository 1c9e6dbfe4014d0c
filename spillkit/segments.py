"""The packed disk tier: small values share append-only segment files, large ones get a file each.

:class:`PackedStore` is built here, with what makes it durable: fsyncs,
manifests (protect, checkpoint, adopting records at a re-open) and closing.
Deciding what is packed and writing, reading and deleting records is
:class:`~spillkit.packing.PackedRecords`, which it inherits (and which
defines :class:`PackedWrite`, re-exported here).
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from collections.abc import Hashable, Iterable

from . import bodymac
from .codecs import Codec
from .compaction import Place
from .errors import SpillWarning
from .packing import PackedRecords, PackedWrite
from .security import process_secret
from .segfiles import is_segment_name, open_segment
from .storage import DiskStore

__all__ = ["DEFAULT_PACK_THRESHOLD", "DEFAULT_SEGMENT_BYTES", "PackedStore", "PackedWrite"]

DEFAULT_PACK_THRESHOLD = 64 * 1024
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024


class PackedStore(PackedRecords):
    """A disk tier that packs values smaller than ``pack_threshold`` into segment files.

    Each small value is one full spill record (CRC-32, HMAC-SHA256, the key's
    name; see :mod:`spillkit.spillfile`) appended to the active segment
    (``.spillkit-seg-NNNNNN``, rotated at ``segment_bytes``); values whose
    record is ``pack_threshold`` bytes or more go to ``inner``, a
    :class:`~spillkit.storage.DiskStore` with one file per value (which loads
    records of ``map_from`` bytes or more by mapping them, see
    :mod:`spillkit.mapped`; None reads every record). An index in
    memory maps each packed key to its segment, offset, length and HMAC tag;
    a read fetches exactly that record with ``os.pread`` and checks it like a
    file, so bit flips, truncation, another key's record and forgeries raise
    :class:`~spillkit.errors.CorruptSpillFile` naming the key.

    Deletes and overwrites leave dead records behind. A segment more than
    ``compact_ratio`` dead is compacted: its live records are copied to the
    active segment and the file is unlinked. Segments the last manifest
    points into are *pinned*: they are compacted during :meth:`sync` (a flush)
    and unlinked only by :meth:`checkpoint`, after the new manifest that points
    at the copies is durable, so a crash at any moment leaves the last flush
    readable. A pinned active segment takes appends still; once the records
    appended since the pin are mostly dead (see ``SegmentIndex._piling_up``),
    it is sealed, so later ones go to an unpinned segment that compaction may
    free at any time. ``total_bytes`` is the bytes of every file on disk, dead
    records included; ``available_disk`` caps it, and a write that would pass the cap
    first compacts the unpinned segments (which may exceed it briefly by the
    live bytes of one segment). On a full disk, holes are punched over dead
    records no manifest names (:mod:`spillkit.holes`): ``total_bytes`` (the
    Chest's ``disk_bytes``) still counts the files' whole length, an upper
    bound of the blocks used, and ``hole_bytes`` is what the holes gave back.

    Not thread-safe except :meth:`prepare`, which encodes in memory and touches
    no shared state: the engine holds the lock. A failed append is cut off
    again and changes nothing; compaction failures only warn (the records stay
    where they were). A segment whose fsync failed is never fsynced or
    appended to again; its live records past what its last good fsync covered
    (all of them if the failure was the directory's, before one covered the
    segment's name) are listed by :meth:`unsynced_keys` until each is written
    anew, and it is not compacted while any is left. A compaction copy of a
    durable record that a failed fsync leaves untrusted is not listed: the
    key goes back to the original, which is kept (see :meth:`sync`).

    Examples
    --------
    >>> import tempfile
    >>> from spillkit.codecs import PickleCodec
    >>> tmp = tempfile.TemporaryDirectory()
    >>> store = PackedStore(tmp.name, PickleCodec())
    >>> store.write("one", 1)
    81
    >>> store.read("one"), store.location("one")
    (1, ('.spillkit-seg-000001', 0))
    >>> store.close()
    >>> tmp.cleanup()
    """

    def __init__(
        self,
        path: str,
        codec: Codec,
        available_disk: int | None = None,
        secret: bytes | None = None,
        pack_threshold: int = DEFAULT_PACK_THRESHOLD,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        compact_ratio: float = 0.5,
        map_from: int | None = None,
    ) -> None:
        super().__init__(segment_bytes, compact_ratio)
        if pack_threshold < 0:
            raise ValueError(f"pack_threshold must be 0 (no packing) or more, got {pack_threshold}")
        self.inner = DiskStore(path, codec, None, secret, map_from)  # the quota is checked here, over both
        self.path = path
        self.codec = codec
        self.secret = self.inner.secret
        self.prints = self.inner.prints  # one for both: a key moves between a file and a segment
        self.available_disk = available_disk
        self.pack_threshold = pack_threshold
        self.total_bytes = 0
        self.spare_bytes = 0  # of total_bytes: spare files kept for reuse, as of the last count
        self.verify_writes = False  # set by the Chest (on unless verify_writes=False)

    # ---- durability ----------------------------------------------------------------------
    def adopt(
        self, key: Hashable, name: str, size: int, tag: bytes | None = None, segment: str | None = None, offset: int = 0
    ) -> None:
        """Register a record that already exists (re-opening a directory); FileNotFoundError if it is gone."""
        if segment is None:
            full = os.path.join(self.path, name)
            if not stat.S_ISREG(os.lstat(full).st_mode):  # (FileNotFoundError if gone) a link is not followed
                raise OSError(errno.EINVAL, "not a regular file", full)
            self.inner.adopt(key, name, size, tag)
        else:
            if tag is None or not is_segment_name(segment):
                raise ValueError(f"a packed record needs a tag and a segment name, got {segment!r}")
            found = self._segments.get(segment)
            if found is None:
                found = self._segments[segment] = open_segment(self.path, segment)
                self._segment_total += found.size
            self._forget(key)
            self._place(key, Place(found, offset, size, tag, name))
        self._count()

    def sync(self) -> None:
        """Compact pinned segments that are mostly dead, then fsync segments, files and the directory.

        Raises the ``OSError`` of the first failed fsync. As for files (see
        ``DiskStore.sync``), a segment whose fsync failed is never fsynced or
        appended to again; its records that the last good fsync did not cover
        are listed by :meth:`unsynced_keys` until each has a new record. If the
        directory's fsync fails, so are all the records of every segment
        created since its last good fsync (the name may be lost). A key whose
        untrusted record is a compaction copy (made by this sync or an earlier
        one since the last :meth:`checkpoint`) of a durable record is pointed
        back at that record instead, which is still on disk: it stays trusted,
        and its segment is kept until a later sync makes a copy durable.
        """
        self._compact_pinned()
        try:
            for segment in self._segments.values():
                if segment.dirty:
                    covered = segment.size
                    try:
                        os.fsync(segment.fd)
                    except OSError:
                        segment.distrust(segment.synced)  # records an earlier fsync covered stay trusted
                        raise
                    segment.dirty = False
                    segment.synced = covered
            self.inner.sync_files()
            try:
                self.inner.sync_directory()
            except OSError:
                for segment in self._segments.values():
                    if not segment.settled:
                        segment.distrust(0)
                raise
        except OSError:
            self._fall_back()  # copies of durable records that are now untrusted: back to the originals
            raise
        for segment in self._segments.values():
            segment.settled = True

    def unsynced_keys(self) -> list[Hashable]:
        """Keys whose record :meth:`sync` no longer trusts after a failed fsync: to be written anew before a commit."""
        keys = self.inner.unsynced_keys()
        for segment in self._segments.values():
            if segment.unsynced:
                keys.extend(key for key in segment.keys if not self._places[key].trusted)
        return keys

    def protect(self, names: Iterable[str], *, add: bool = False) -> None:
        """A manifest naming ``names`` is committed (``add=True``: is about to be); see ``DiskStore.protect``.

        Files get copy-on-write through the inner store. Packed records are
        covered by their segments: with ``add=True`` every segment holding a
        live record is pinned (either manifest may end up on disk); otherwise
        :meth:`checkpoint` unlinks the segments only the previous manifest needed.
        """
        self.inner.protect(names, add=add)
        if add:
            for segment in self._segments.values():
                if segment.pinned or segment.live > 0:
                    segment.pin()
        else:
            self.checkpoint()

    @property
    def retained(self) -> frozenset[str]:
        """Files and segments kept only because the last committed manifest needs them."""
        return self.inner.retained | {segment.name for segment in self._retired}

    @property
    def held_for_manifest(self) -> bool:
        """True when the last committed manifest keeps room a new one would free (see :attr:`retained`).

        Beyond :attr:`retained`: dead records of pinned segments, which no hole may cover until then.
        """
        return bool(self.retained) or any(s.pinned and s.named_dead for s in self._segments.values())

    def checkpoint(self) -> None:
        """A manifest of the current records is durable: unlink the segments it no longer needs.

        Only after a :meth:`sync` that succeeded (a commit follows one): every compaction copy is
        then covered by good fsyncs and trusted for good, so the originals are forgotten and their
        segments unlinked. A failed unlink warns; the segment stays counted and is tried again at
        the next checkpoint.
        """
        self._origins.clear()
        self.holes_held = False  # the manifest on disk is this one
        kept = []
        for segment in self._retired:
            try:
                os.unlink(os.path.join(self.path, segment.name))
            except FileNotFoundError:
                pass
            except OSError as error:  # still on disk and counted; tried again at the next checkpoint
                warnings.warn(f"could not remove segment {segment.name!r}: {error!r}", SpillWarning, stacklevel=2)
                kept.append(segment)
                continue
            segment.close()  # kept open while retired (see Compactor._fall_back)
            self._segment_total -= segment.size
        self._retired = kept
        for segment in self._segments.values():
            segment.named_dead = False  # its dead records: named by no manifest now
            if segment.live:
                segment.pin()  # the active one too: it takes appends still (see SegmentIndex._forget)
            else:
                segment.pinned = False
        self._count()

    def close(self) -> None:
        """Close the segment files, remove the spares and blank files (unusable afterwards; files stay on disk)."""
        for segment in [*self._segments.values(), *self._retired]:
            segment.close()
        self._active = None
        self.inner._spares.close()
        if self.secret != process_secret():  # a directory's own key: none of it kept once its Chest is closed
            bodymac.forget(self.secret)

    def __del__(self) -> None:
        try:  # noqa: SIM105 (not contextlib: at interpreter exit module globals may already be None)
            self.close()
        except Exception:
            pass

    def _count(self) -> None:
        self.inner.release_unmapped()  # files deleted while mapped whose values have been freed since
        self.spare_bytes = self.inner._spares.bytes  # once: total_bytes and spilled_total agree on it
        self.total_bytes = self.inner.total_bytes + self.spare_bytes + self._segment_total

    @property
    def discarded_bytes(self) -> int:
        """Bytes written to temporary files and thrown away (files of their own: packed records are in memory)."""
        return self.inner.discarded_bytes

    def space_in_use(self) -> int:
        """:meth:`recount`'s bytes, read without the lock (a scrape's): plain numbers, mapped files as of now."""
        return self.inner.space_in_use() + self._segment_total

    def recount(self) -> int:
        """Bring ``total_bytes`` up to date (lock held) and return it."""
        self._count()
        return self.total_bytes
