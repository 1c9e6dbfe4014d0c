"""The segment index of a packed store: where each key's record lives, and the segment records are appended to.

:class:`SegmentIndex` holds the key -> :class:`Place` index and the segment
bookkeeping that placing, forgetting and appending records keep exact; the
active segment is rotated when full. :class:`~spillkit.compaction.Compactor`
inherits it, sets its attributes and adds compaction, dropping segments and
the fall-back to durable originals. Separate so that each stays small;
everything here runs under the engine's lock. :class:`Place` is re-exported by
:mod:`spillkit.compaction`.
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from dataclasses import dataclass

from .segfiles import Segment, append, create_segment

__all__ = ["Place", "SegmentIndex"]


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
    noted as a compaction candidate. New records go to the active segment,
    replaced by a new one when full, damaged or a forked parent's.
    :class:`~spillkit.compaction.Compactor` sets the attributes declared
    here. Not thread-safe.
    """

    path: str
    segment_bytes: int
    _places: dict[Hashable, Place]
    _segments: dict[str, Segment]
    _origins: dict[Hashable, Place]  # a compaction copy's durable original (see Compactor): _forget drops it
    _candidates: dict[str, Segment]
    _active: Segment | None
    _next_number: int
    _segment_total: int
    _live_bytes: int

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
        if segment is not self._active or not segment.live:  # an empty active segment goes too: no file left
            self._candidates[segment.name] = segment

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
