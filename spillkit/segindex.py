"""The segment index of a packed store: where each key's record lives, and the segment records are appended to.

:class:`SegmentIndex` holds the key -> :class:`Place` index and the segment
bookkeeping that placing, forgetting and appending records keep exact; the
active segment is rotated when full. On a full disk it punches holes over the
dead records no manifest names (:mod:`spillkit.holes`) and appends once more.
:class:`~spillkit.compaction.Compactor` inherits it, sets its attributes and
adds compaction, dropping segments and the fall-back to durable originals;
:class:`~spillkit.upkeep.SegmentUpkeep` decides when to compact. Separate so
that each stays small; everything here runs under the engine's lock.
:class:`Place` is re-exported by :mod:`spillkit.compaction`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable
from dataclasses import dataclass

from .errors import SpillWarning
from .holes import disk_full
from .segfiles import Segment, append, create_segment, punch_dead

__all__ = ["Place", "SegmentIndex"]

# A mostly dead active segment is sealed (and compacted) once this many bytes in it are dead: below, an
# overwrite-heavy workload would make and unlink a file every few records.
_SEAL_DEAD = 256 * 1024


@dataclass(slots=True)
class Place:
    """Where one key's record lives: segment, offset, length, HMAC tag and the name inside it."""

    segment: Segment
    offset: int
    length: int
    tag: bytes
    name: str

    @property
    def trusted(self) -> bool:
        """False when a failed fsync leaves the record's bytes on disk unknown (see ``Segment.trusts``)."""
        return self.segment.trusts(self.offset, self.length)


class SegmentIndex:
    """The key -> record index of a packed store and its segments (see :class:`~spillkit.compaction.Compactor`).

    Each key's record lives at a :class:`Place` in one segment; each segment
    counts its live bytes and keys, and a segment whose dead share grew is
    noted as a compaction candidate (the active one too, once mostly dead).
    New records go to the active segment, replaced by a new one when full,
    damaged or a forked parent's. A segment's dead records are those no key
    points at; those of an unpinned segment no manifest names, nor those of
    a pinned one while ``named_dead`` is unset (no record in it died since
    the last checkpoint): only these may be punched.
    :class:`~spillkit.compaction.Compactor` sets the attributes declared
    here. Not thread-safe.
    """

    path: str
    segment_bytes: int
    compact_ratio: float
    _places: dict[Hashable, Place]
    _segments: dict[str, Segment]
    _retired: list[Segment]
    _origins: dict[Hashable, Place]  # a compaction copy's durable original (see Compactor): _forget drops it
    _candidates: dict[str, Segment]
    _active: Segment | None
    _next_number: int
    _segment_total: int
    _live_bytes: int
    holes_held: bool  # no hole while set (Compactor sets it up; see there)

    # ---- the index ------------------------------------------------------------------------
    def _place(self, key: Hashable, place: Place) -> None:
        self._places[key] = place
        segment = place.segment
        segment.live += place.length
        segment.keys.add(key)
        self._live_bytes += place.length

    def _forget(self, key: Hashable) -> None:
        self._origins.pop(key, None)  # a new value, or gone: the old record must not come back
        place = self._places.pop(key, None)
        if place is None:
            return
        segment = place.segment
        segment.live -= place.length
        segment.keys.discard(key)
        self._live_bytes -= place.length
        segment.named_dead = segment.named_dead or segment.pinned
        if segment.pinned and place.offset >= segment.pinned_size:
            segment.dead_since_pin += place.length
        # An empty active segment goes too (no file left), and a mostly dead one is sealed and compacted:
        # nothing else would ever free its dead records while no more appends come to rotate it. A pinned
        # one is sealed once the records appended since the pin are (see _piling_up).
        if segment is not self._active or not segment.live or self._worth_sealing(segment) or self._piling_up(segment):
            self._candidates[segment.name] = segment

    def _mostly_dead(self, segment: Segment) -> bool:
        return segment.dead > self.compact_ratio * segment.size

    def _worth_sealing(self, active: Segment) -> bool:
        """True for an active segment mostly dead, with enough dead bytes that a new segment is worth a file."""
        return active.dead >= _SEAL_DEAD and self._mostly_dead(active)

    def _piling_up(self, active: Segment) -> bool:
        """True for a pinned active segment whose records appended since the pin are worth sealing (as above).

        No manifest names those records, but their segment cannot be compacted until the next flush,
        so further appends must not pile more of them up in it: they go to a new, unpinned segment,
        which compaction frees at any time. A commit alone seals nothing, so a flush after each small
        write makes no file each.
        """
        dead = active.dead_since_pin
        return active.pinned and dead >= _SEAL_DEAD and dead > self.compact_ratio * (active.size - active.pinned_size)

    # ---- appending ------------------------------------------------------------------------
    def _writable(self, size: int) -> Segment:
        """The active segment, or a new one when it is full, damaged or a forked parent's."""
        segment = self._active
        if segment is not None and (
            not segment.appendable
            or segment.pid != os.getpid()
            or (segment.size and segment.size + size > self.segment_bytes)
        ):
            self._active = None
            self._candidates[segment.name] = segment
            segment = None
        if segment is None:
            segment, self._next_number = create_segment(self.path, self._next_number)
            self._segments[segment.name] = self._active = segment
        return segment

    def _append(self, segment: Segment, data: bytes) -> int:
        before = segment.size
        try:
            return append(segment, data)
        finally:
            self._segment_total += segment.size - before

    def _append_record(self, record: bytes) -> tuple[Segment, int]:
        """Append one new record; on a full disk punch holes over dead records and, if that freed any, retry once.

        The recovery is warned about (a full disk is news to whoever runs it); a retry that fails raises.
        """
        try:
            segment = self._writable(len(record))
            return segment, self._append(segment, record)
        except OSError as error:
            punched, spared = (self._punch_all(), self._clear_spares()) if disk_full(error) else (0, 0)
            if not punched + spared:
                raise
            message = f"disk full ({error!r}): holes punched over {punched} bytes of dead records"
            message += f", {spared} bytes of spare files removed; writing again" if spared else "; writing again"
            warnings.warn(message, SpillWarning, stacklevel=3)
        segment = self._writable(len(record))
        return segment, self._append(segment, record)

    # ---- room on a full disk --------------------------------------------------------------
    def _clear_spares(self) -> int:
        """Remove the spare files of the store's own files (spillkit.spares); return the bytes freed."""
        return 0  # (a packed store has them: PackedRecords)

    def _punch(self, segment: Segment) -> int:
        """Punch holes over the segment's dead records that no manifest names; return the bytes freed.

        A segment the last manifest points into (pinned) is punched only while no record in it died
        since that manifest became durable: a dead record may still be one the manifest names.
        """
        if self.holes_held or segment.fd < 0 or (segment.pinned and segment.named_dead) or segment.pid != os.getpid():
            return 0  # ... and a forked child never touches its parent's files
        if segment.dead == segment.dead_punched:  # no record died since: a full disk's every put pays nothing
            return 0
        live = [(place.offset, place.length) for place in (self._places[key] for key in segment.keys)]
        freed = punch_dead(self.path, segment, live)
        segment.punched += freed
        segment.dead_punched = segment.dead
        return freed

    def _punch_all(self) -> int:
        """Punch holes over every segment's dead records that no manifest names; return the bytes freed."""
        return sum(self._punch(segment) for segment in list(self._segments.values()))

    @property
    def hole_bytes(self) -> int:
        """Bytes that holes punched into the segment files kept gave back (``total_bytes`` still counts them)."""
        return sum(segment.punched for segment in [*self._segments.values(), *self._retired])
