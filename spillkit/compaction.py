"""The segment bookkeeping of a packed store: compaction, dropping segments, falling back to durable originals.

Where each record lives and appending (with rotation) are
:class:`~spillkit.segindex.SegmentIndex`, which :class:`Compactor` inherits;
when to compact is :class:`~spillkit.upkeep.SegmentUpkeep`'s, which inherits it.
Separate from :mod:`spillkit.segments` (which encodes, checks and reads
records) so that each stays small. Everything here runs under the engine's
lock.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Hashable

from .errors import SpillWarning
from .segfiles import Segment, read_at
from .segindex import Place as Place  # re-exported: it was defined here
from .segindex import SegmentIndex

__all__ = ["Compactor", "Place"]

_WINDOW = 4 * 1024 * 1024  # compaction reads and writes live records in runs of about this many bytes


class Compactor(SegmentIndex):
    """Segments, the key -> record index, and the compaction that reclaims dead records.

    The index, and appending to the active segment, are the base class,
    :class:`~spillkit.segindex.SegmentIndex`, whose attributes the
    constructor sets.

    Compaction copies a segment's live records, unchanged (a record does not
    depend on where it lies), to the active segment, repoints the index, and
    drops the segment: unlinked at once when no manifest points into it,
    otherwise (pinned) kept until :meth:`checkpoint` says a newer manifest is
    durable. A segment whose fsync failed is not compacted while it holds a
    live untrusted record; after that it is compacted and dropped like any
    sealed segment (it is never appended to again). Not thread-safe.

    A copy is not durable until an fsync of its segment (and of the directory,
    for a new segment) succeeds, and a failed fsync leaves it untrusted for
    good. So for each copy of a durable record of a pinned segment, the
    original's place is remembered (``_origins``) until the next
    :meth:`checkpoint`; until then the original's segment stays on disk (and
    open). If the copy turns out untrusted, :meth:`_fall_back` points the key
    back at the original: the key stays trusted and committed, and its
    segment is no longer retired, so no checkpoint unlinks it while the key's
    only trusted record lies in it. A later flush compacts it again.
    """

    def __init__(self, segment_bytes: int, compact_ratio: float) -> None:
        self.segment_bytes = segment_bytes
        self.compact_ratio = compact_ratio
        self.compactions = 0  # segments compacted so far (for tests and benchmarks)
        self.compaction_read_bytes = 0  # bytes compaction read from segments (exported as a metric)
        self.compaction_written_bytes = 0  # bytes of records compaction appended to segments (likewise)
        self._places: dict[Hashable, Place] = {}
        self._segments: dict[str, Segment] = {}  # every segment with live records, and the active one
        self._retired: list[Segment] = []  # pinned segments with nothing live: unlinked at the next checkpoint
        # key -> its durable record in a pinned segment, while the key's record is a compaction copy of it
        # that no fsync has proven yet (or did, and no checkpoint came since): see _fall_back.
        self._origins: dict[Hashable, Place] = {}
        self._candidates: dict[str, Segment] = {}  # sealed segments whose dead share grew since last looked at
        self._active: Segment | None = None
        self._next_number = 1
        self._segment_total = 0  # bytes of every segment file kept, dead records and retired files included
        self._live_bytes = 0  # bytes of the records some key points at
        # The manifest on disk is not the one the index was last checkpointed for (a full-disk commit
        # let go of the previous manifest's records, then failed): no hole until a commit succeeds.
        self.holes_held = False
        if segment_bytes <= 0 or not 0 < compact_ratio < 1:
            raise ValueError(f"need segment_bytes > 0 and 0 < compact_ratio < 1, got {segment_bytes}, {compact_ratio}")

    def _count(self) -> None:
        raise NotImplementedError

    # ---- compaction -----------------------------------------------------------------------
    def _compact(self, segment: Segment) -> None:
        """Copy the segment's live records to the active segment, then drop it if nothing live is left."""
        if segment.unsynced and not all(self._places[key].trusted for key in segment.keys):
            # An untrusted record's bytes on disk are unknown after a failed fsync; copied unchecked,
            # it would look durable elsewhere. The flush writes each anew, from memory or a verified
            # read. Once none is left, the segment's records are durable ones: copied like any others.
            return
        order = sorted(segment.keys, key=lambda key: self._places[key].offset)
        start = 0
        while start < len(order):
            first = self._places[order[start]].offset
            stop = start + 1
            while stop < len(order):
                place = self._places[order[stop]]
                if place.offset + place.length - first > _WINDOW:
                    break
                stop += 1
            last = self._places[order[stop - 1]]
            data = memoryview(read_at(segment, first, last.offset + last.length - first))
            self.compaction_read_bytes += len(data)
            run = []
            for key in order[start:stop]:
                place = self._places[key]
                record = data[place.offset - first : place.offset - first + place.length]
                if len(record) == place.length:  # a record cut off by truncation stays (its read will say so)
                    run.append((key, record))
            self._move(run)
            start = stop
        self.compactions += 1
        if not segment.live:
            self._drop(segment)

    def _move(self, run: list[tuple[Hashable, memoryview]]) -> None:
        """Append records (in as few writes as fit each target segment) and repoint their keys."""
        index = 0
        while index < len(run):
            target = self._writable(len(run[index][1]))
            room = self.segment_bytes - target.size
            end, total = index + 1, len(run[index][1])
            while end < len(run) and total + len(run[end][1]) <= room:
                total += len(run[end][1])
                end += 1
            joined = b"".join(record for _, record in run[index:end])
            offset = self._append(target, joined)
            self.compaction_written_bytes += len(joined)  # counted once appended: a failed append is cut off
            for key, record in run[index:end]:
                old = self._places[key]
                origin = self._origins.get(key) or (old if _durable(old) else None)  # a copy of a copy: the first
                self._forget(key)
                self._place(key, Place(target, offset, old.length, old.tag, old.name))
                if origin is not None:
                    self._origins[key] = origin
                offset += len(record)
            index = end

    def _fall_back(self) -> None:
        """Point each key whose compaction copy is untrusted (a failed fsync) back at its durable original.

        Called by ``sync`` when an fsync failed. The original is the same record (compaction copies
        bytes unchanged), covered by a good fsync of its segment and of the directory, and still on
        disk: its segment was pinned when copied, so dropping it only retired it (kept, and kept
        open), and only :meth:`checkpoint` unlinks retired segments, which forgets every origin.
        The segment becomes a live one again: pinned, compacted by a later flush, and unlinked only
        after a manifest naming trusted copies is durable. A copy segment left with nothing live is
        dropped (a failed unlink only warns): never raises ``OSError``.
        """
        for key, origin in list(self._origins.items()):
            copy = self._places[key]
            if copy.trusted:
                continue
            segment = origin.segment
            if self._segments.get(segment.name) is not segment:
                self._retired.remove(segment)
                self._segments[segment.name] = segment
            self._forget(key)
            self._place(key, origin)
            if not copy.segment.live and self._segments.get(copy.segment.name) is copy.segment:
                self._drop(copy.segment)
        self._count()

    def _drop(self, segment: Segment) -> None:
        """Stop using a segment with nothing live: unlink it, or keep it until the next checkpoint if pinned."""
        if segment.pinned:  # kept open too: _fall_back may point keys back at its records
            self._retired.append(segment)
        elif segment.pid == os.getpid():  # a forked child leaves its parent's files alone
            try:
                os.unlink(os.path.join(self.path, segment.name))
            except FileNotFoundError:
                self._segment_total -= segment.size
            except OSError as error:
                # Raising would leave the empty segment indexed but never looked at again (a file
                # kept until reopen) and call a finished compaction failed. Retired instead, it
                # stays counted and the next checkpoint (flush) tries the unlink again.
                warnings.warn(f"could not remove segment {segment.name!r}: {error!r}", SpillWarning, stacklevel=4)
                self._retired.append(segment)
            else:
                self._segment_total -= segment.size
        else:
            self._segment_total -= segment.size
        del self._segments[segment.name]
        self._candidates.pop(segment.name, None)
        if segment is self._active:
            self._active = None
        if not segment.pinned:
            segment.close()


def _durable(place: Place) -> bool:
    """True for a record in a pinned segment that a good fsync of it and of the directory covered."""
    segment = place.segment
    return segment.pinned and segment.settled and place.offset + place.length <= segment.synced
