"""The packed disk tier: small values share append-only segment files, large ones get a file each."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .codecs import Codec
from .compaction import Compactor, Place
from .errors import CorruptSpillFile, DiskQuotaExceeded, SpillWarning
from .segfiles import is_segment_name, open_segment, read_at
from .spillfile import HEADER_SIZE, PAD, RecordError, encode_header, open_record
from .storage import DiskStore, PreparedWrite

__all__ = ["DEFAULT_PACK_THRESHOLD", "DEFAULT_SEGMENT_BYTES", "PackedStore", "PackedWrite"]

DEFAULT_PACK_THRESHOLD = 64 * 1024
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024


@dataclass(slots=True)
class PackedWrite(PreparedWrite):
    """A small value encoded into one record in memory, not yet appended (``temp`` is unused)."""

    record: bytes


class PackedStore(Compactor):
    """A disk tier that packs values smaller than ``pack_threshold`` into segment files.

    Each small value is one full spill record (CRC-32, HMAC-SHA256, the key's
    name; see :mod:`spillkit.spillfile`) appended to the active segment
    (``.spillkit-seg-NNNNNN``, rotated at ``segment_bytes``); values whose
    record is ``pack_threshold`` bytes or more go to ``inner``, a
    :class:`~spillkit.storage.DiskStore` with one file per value. An index in
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
    readable. ``total_bytes`` is the bytes of every file on disk, dead records
    included; ``available_disk`` caps it, and a write that would pass the cap
    first compacts the unpinned segments (which may exceed it briefly by the
    live bytes of one segment).

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
    >>> store = PackedStore(tempfile.mkdtemp(), PickleCodec())
    >>> store.write("one", 1)
    81
    >>> store.read("one"), store.location("one")
    (1, ('.spillkit-seg-000001', 0))
    >>> store.close()
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
    ) -> None:
        super().__init__(segment_bytes, compact_ratio)
        if pack_threshold < 0:
            raise ValueError(f"pack_threshold must be 0 (no packing) or more, got {pack_threshold}")
        self.inner = DiskStore(path, codec, None, secret)  # the quota is checked here, over both
        self.path = path
        self.codec = codec
        self.secret = self.inner.secret
        self.available_disk = available_disk
        self.pack_threshold = pack_threshold
        self.total_bytes = 0

    # ---- what is stored where ----------------------------------------------------------
    def __contains__(self, key: object) -> bool:
        return key in self._places or key in self.inner

    def __len__(self) -> int:
        return len(self._places) + len(self.inner)

    def __iter__(self) -> Iterator[Hashable]:
        return iter([*self._places, *self.inner])

    def has_copy(self, key: Hashable) -> bool:
        """True when the key has a record that can stand in for its value (not one :meth:`unsynced_keys` lists)."""
        place = self._places.get(key)
        return self.inner.has_copy(key) if place is None else place.trusted

    def file_bytes(self, key: Hashable) -> int:
        """Bytes of the key's record (header included), packed or in a file of its own."""
        place = self._places.get(key)
        return self.inner.file_bytes(key) if place is None else place.length

    def filename(self, key: Hashable) -> str:
        """Full path of the file holding the key's record: its own, or its segment."""
        place = self._places.get(key)
        return self.inner.filename(key) if place is None else os.path.join(self.path, place.segment.name)

    def tag(self, key: Hashable) -> bytes | None:
        """The HMAC of the key's current record (None for a file adopted without one)."""
        place = self._places.get(key)
        return self.inner.tag(key) if place is None else place.tag

    def location(self, key: Hashable) -> tuple[str | None, int]:
        """``(segment file name, offset)`` of a packed key; ``(None, 0)`` for a key with its own file."""
        place = self._places.get(key)
        return (None, 0) if place is None else (place.segment.name, place.offset)

    def names(self) -> dict[Hashable, str]:
        """Key to record name (a packed record carries the name its own file would have)."""
        names = self.inner.names()
        names.update((key, place.name) for key, place in self._places.items())
        return names

    def segment_files(self) -> list[str]:
        """Names of the segment files this store keeps on disk (including ones awaiting a checkpoint)."""
        return [segment.name for segment in [*self._segments.values(), *self._retired]]

    # ---- writing -----------------------------------------------------------------------
    def reserve(self, key: Hashable) -> str:
        """Choose the key's name and hold it until :meth:`commit` or :meth:`discard`."""
        return self.inner.reserve(key)

    def unreserve(self, name: str) -> None:
        """Release a name held by :meth:`reserve` when no write follows."""
        self.inner.unreserve(name)

    def prepare(self, key: Hashable, value: Any, name: str) -> PreparedWrite:
        """Encode ``value``: small ones into a record in memory, large ones into a temporary file.

        Touches no shared state, so it may run without the engine's lock.
        """
        frames = [memoryview(frame).cast("B") for frame in self.codec.encode(value)]
        head = HEADER_SIZE + len(name.encode("utf-8"))
        size = head + -head % PAD + sum(frame.nbytes for frame in frames)
        self._check_quota(key, size, self._live_bytes)  # as if compacted: the exact check is at commit
        if size >= self.pack_threshold:
            return self.inner.prepare_frames(key, frames, name)
        header, _, tag = encode_header(name, frames, self.codec, self.secret)
        return PackedWrite(key, name, "", size, tag, b"".join([header, *frames]))

    def commit(self, prepared: PreparedWrite) -> int:
        """Append a packed record, or move a file into place; the key's old record becomes dead.

        On failure (quota, ``OSError``) nothing changes: the key keeps its old record.
        """
        key = prepared.key
        try:
            self._make_room(key, prepared.size)
        except BaseException:
            self.discard(prepared)
            raise
        if isinstance(prepared, PackedWrite):
            try:
                segment = self._writable(prepared.size)
                offset = self._append(segment, prepared.record)
            except BaseException:
                self._count()
                raise
            finally:
                self.inner.unreserve(prepared.name)
            self.inner.delete(key)  # a file of the key from before (nothing if none)
            self._forget(key)
            self._place(key, Place(segment, offset, prepared.size, prepared.tag, prepared.name))
        else:
            self.inner.commit(prepared)  # on failure it discards the temporary file itself
            self._forget(key)
        self._maintain()
        return prepared.size

    def discard(self, prepared: PreparedWrite) -> None:
        """Drop a prepared write and release its name."""
        if isinstance(prepared, PackedWrite):
            self.inner.unreserve(prepared.name)
        else:
            self.inner.discard(prepared)

    def write(self, key: Hashable, value: Any) -> int:
        """Encode ``value`` and store it as the key's record; return the bytes written."""
        name = self.reserve(key)
        try:
            prepared = self.prepare(key, value, name)
        except BaseException:
            self.inner.unreserve(name)
            raise
        return self.commit(prepared)

    def _check_quota(self, key: Hashable, size: int, on_disk: int) -> None:
        if self.available_disk is None:
            return
        try:  # a file of the key is replaced or removed by this write (unless a manifest keeps it)
            replaced = self.inner._freed_by_replacing(key)
        except KeyError:  # deleted meanwhile (prepare runs without the lock)
            replaced = 0
        after = self.inner.total_bytes + on_disk - replaced + size
        if after > self.available_disk:
            raise DiskQuotaExceeded(
                f"storing {key!r} needs {size} bytes on disk; that would make {after} "
                f"bytes, over available_disk={self.available_disk}"
            )

    def _make_room(self, key: Hashable, size: int) -> None:
        """Check the quota against the files really on disk, compacting first if that helps."""
        try:
            self._check_quota(key, size, self._segment_total)
        except DiskQuotaExceeded:
            self._reclaim()
            self._check_quota(key, size, self._segment_total)

    # ---- reading and deleting ----------------------------------------------------------
    def read(self, key: Hashable) -> Any:
        """Load the key's value; raise CorruptSpillFile if its record is damaged, moved or forged."""
        place = self._places.get(key)
        if place is None:
            return self.inner.read(key)
        full = os.path.join(self.path, place.segment.name)
        data = read_at(place.segment, place.offset, place.length)
        where = f"record at offset {place.offset}"
        if len(data) < place.length:
            raise CorruptSpillFile(key, full, f"{where}: the segment is truncated")
        try:
            body = open_record(memoryview(data), place.name, self.secret, place.tag)
        except RecordError as error:
            raise CorruptSpillFile(key, full, f"{where}: {error}") from None
        return self.codec.decode(body)

    def delete(self, key: Hashable) -> None:
        """Forget the key's record (it becomes dead bytes) or remove its file; absent keys are fine."""
        if key in self._places:
            self._forget(key)
            self._maintain()
        else:
            self.inner.delete(key)
            self._count()

    def clear(self) -> None:
        """Forget every record and remove the files, without compacting on the way (pinned ones wait)."""
        for key in list(self.inner):
            self.inner.delete(key)
        for key in list(self._places):
            self._forget(key)
        self._maintain()

    # ---- durability ----------------------------------------------------------------------
    def adopt(
        self, key: Hashable, name: str, size: int, tag: bytes | None = None, segment: str | None = None, offset: int = 0
    ) -> None:
        """Register a record that already exists (re-opening a directory); FileNotFoundError if it is gone."""
        if segment is None:
            if not os.path.exists(os.path.join(self.path, name)):
                raise FileNotFoundError(os.path.join(self.path, name))
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

    def remove_unreferenced(self) -> list[str]:
        """Unlink segment files no adopted record points into (left by a crash after the last flush).

        Call once, after adopting a manifest. Returns the names removed.
        """
        removed = []
        for name in os.listdir(self.path):
            if is_segment_name(name) and name not in self._segments:
                try:
                    os.unlink(os.path.join(self.path, name))
                except FileNotFoundError:
                    continue
                except OSError as error:
                    # As remove_leftovers does for files: garbage that cannot be removed now must not
                    # make the committed keys unreachable; the next reopen tries again.
                    message = f"could not remove the leftover segment {name!r}: {error!r}"
                    warnings.warn(message, SpillWarning, stacklevel=3)
                    continue
                removed.append(name)
        return removed

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
                segment.pinned = segment.pinned or segment.live > 0
        else:
            self.checkpoint()

    @property
    def retained(self) -> frozenset[str]:
        """Files and segments kept only because the last committed manifest needs them."""
        return self.inner.retained | {segment.name for segment in self._retired}

    def checkpoint(self) -> None:
        """A manifest of the current records is durable: unlink the segments it no longer needs.

        Only after a :meth:`sync` that succeeded (a commit follows one): every compaction copy is
        then covered by good fsyncs and trusted for good, so the originals are forgotten and their
        segments unlinked. A failed unlink warns; the segment stays counted and is tried again at
        the next checkpoint.
        """
        self._origins.clear()
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
            segment.pinned = segment.live > 0
        self._count()

    def close(self) -> None:
        """Close the segment files (the store is unusable afterwards; files stay on disk)."""
        for segment in [*self._segments.values(), *self._retired]:
            segment.close()
        self._active = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit ``os`` may already be gone
            self.close()

    def _count(self) -> None:
        self.total_bytes = self.inner.total_bytes + self._segment_total
