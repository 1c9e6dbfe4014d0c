"""The record side of a packed store: what is stored where, and writing, reading and deleting records.

:class:`PackedRecords` decides for each value whether it is packed (one
record appended to a segment) or gets a file of its own through the inner
:class:`~spillkit.storage.DiskStore`, checks the quota, and reads and deletes
records; the segments, the index and compaction come from
:class:`~spillkit.upkeep.SegmentUpkeep`, which it inherits.
:class:`~spillkit.segments.PackedStore` inherits it and adds construction,
fsyncs, manifests (protect, checkpoint, adopting records at a re-open) and
closing. :class:`PackedWrite` is re-exported by :mod:`spillkit.segments`.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Any

from .codecs import Codec
from .compaction import Place
from .errors import CorruptSpillFile, DiskQuotaExceeded
from .loadprints import LoadPrints
from .segfiles import read_at
from .spillfile import HEADER_SIZE, PAD, RecordError, encode_header, open_record
from .storage import DiskStore, OpenRead, PreparedWrite
from .upkeep import SegmentUpkeep
from .whole_writes import write_record

__all__ = ["PackedRecords", "PackedWrite"]


@dataclass(slots=True)
class PackedWrite(PreparedWrite):
    """A small value encoded into one record in memory, not yet appended (``temp`` is unused)."""

    record: bytes


class PackedRecords(SegmentUpkeep):
    """The index queries and record I/O of :class:`~spillkit.segments.PackedStore` (which sets the attributes).

    A value whose record is under ``pack_threshold`` bytes is encoded into
    one record in memory and appended to the active segment at
    :meth:`commit`; a larger one goes to ``inner``, a file of its own. The
    quota (``available_disk``) covers both. Reads fetch exactly the key's
    record and check it like a file.

    Not thread-safe except :meth:`prepare`, which encodes in memory and touches
    no shared state: the engine holds the lock. A failed :meth:`commit`
    (quota, ``OSError``) changes nothing: the key keeps its old record, and a
    failed append is cut off again. :meth:`read` raises
    :class:`~spillkit.errors.CorruptSpillFile` naming the key for a damaged,
    moved or forged record; :meth:`delete` of an absent key does nothing. A
    compaction set off by a write or a delete only warns when it fails (the
    records stay where they were).
    """

    inner: DiskStore
    codec: Codec
    secret: bytes
    prints: LoadPrints  # the inner store's: loaded compressed records' digests
    available_disk: int | None
    pack_threshold: int
    total_bytes: int
    spare_bytes: int
    verify_writes: bool  # synchronous writes check the tag again after writing (see prepare)

    def _clear_spares(self) -> int:
        return self.inner._spares.clear()

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

    def holds(self, key: Hashable, value: Any) -> bool:
        """True when the key's record, packed or not, is ``value`` serialized now (unchanged in place since)."""
        place = self._places.get(key)
        if place is None:
            return self.inner.holds(key, value)
        return self.prints.holds(key, place.name, place.tag, value, lambda: self.read(key))

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

    def prepare(self, key: Hashable, value: Any, name: str, verify: bool = False) -> PreparedWrite:
        """Encode ``value``: small ones into a record in memory, large ones into a temporary file.

        Touches no shared state, so it may run without the engine's lock. With
        ``verify`` (write-behind), a large value's file is checked after it is
        written (see :meth:`DiskStore.prepare_frames`), and a small record is made
        from copies of out-of-band frames taken before its tag, so that a change in
        place meanwhile cannot make it fail its own check.
        """
        frames = [memoryview(frame).cast("B") for frame in self.codec.encode(value)]
        head = HEADER_SIZE + len(name.encode("utf-8"))
        size = head + -head % PAD + sum(frame.nbytes for frame in frames)
        self._check_quota(key, size, self._live_bytes)  # as if compacted: the exact check is at commit
        if size >= self.pack_threshold:
            return self.inner.prepare_frames(key, frames, name, verify)
        if verify:  # copies (a small record: cheap), so that what the tag covers is what is joined
            frames = [memoryview(bytes(frame)) for frame in frames]
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
            try:  # on a full disk, holes punched over dead records may make room: see _append_record
                segment, offset = self._append_record(prepared.record)
            except BaseException:
                self._count()
                raise
            finally:
                self.inner.unreserve(prepared.name)
            # A file of the key from before (nothing if none). The quota check counted it as freed, so it
            # is kept as a spare only if the cap holds with it still on disk.
            cap = self.available_disk
            self.inner.delete(key, reuse=cap is None or self.inner.space_in_use() + self._segment_total <= cap)
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
        return write_record(self, key, value, self.verify_writes)

    def _check_quota(self, key: Hashable, size: int, on_disk: int) -> None:
        if self.available_disk is not None:
            self.inner.check_room(key, size, self.available_disk, elsewhere=on_disk)

    def _make_room(self, key: Hashable, size: int) -> None:
        """Check the quota against the files really on disk, compacting first if that helps."""
        self.inner.release_unmapped()  # space that values freed since have given back
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
        data = read_at(place.segment, place.offset, place.length)
        if len(data) < place.length:
            raise self._corrupt(key, place, "the segment is truncated")
        try:
            # A writable copy (a small record): pickle hands out-of-band buffers through as given,
            # so arrays decoded from the bytes pread returns would come back read-only.
            body = open_record(memoryview(bytearray(data)), place.name, self.secret, place.tag)
        except RecordError as error:
            raise self._corrupt(key, place, str(error)) from None
        return self.prints.decode(key, place.tag, body)

    def _corrupt(self, key: Hashable, place: Place, why: str) -> CorruptSpillFile:
        # (Built only on failure: joining the path cost about 4% of a small value's read, profiled.)
        return CorruptSpillFile(
            key, os.path.join(self.path, place.segment.name), f"record at offset {place.offset}: {why}"
        )

    def open_for_read(self, key: Hashable) -> OpenRead | None:
        """A value in a file of its own, opened to read without the lock; None for a packed one.

        Packed values are small: they are read under the lock, where compaction cannot move them.
        """
        return None if key in self._places else self.inner.open_for_read(key)

    def still_current(self, pending: OpenRead) -> bool:
        """True while ``pending``'s record is still its key's current one (under the caller's lock)."""
        return pending.key not in self._places and self.inner.still_current(pending)

    def finish_read(self, pending: OpenRead) -> Any:
        """Read an :meth:`open_for_read` value (see :meth:`DiskStore.finish_read`); needs no lock."""
        return self.inner.finish_read(pending)

    def delete(self, key: Hashable) -> None:
        """Forget the key's record (it becomes dead bytes) or remove its file; absent keys are fine."""
        if key in self._places:
            self._forget(key)
            self.prints.forget(key)
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
        self.prints.clear()  # also digests a read without the lock left for a key deleted meanwhile
        self._maintain()
