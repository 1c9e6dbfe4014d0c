"""When a packed store compacts: after a change, at a flush, under quota pressure, and on a full disk.

:class:`SegmentUpkeep` decides which segments are compacted and when; how a
segment is compacted, dropped or fallen back from is
:class:`~spillkit.compaction.Compactor`, which it inherits, and
:class:`~spillkit.packing.PackedRecords` inherits it. Separate so that each
stays small; everything here runs under the engine's lock.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

from .compaction import Compactor
from .errors import SpillWarning
from .holes import disk_full
from .segfiles import Segment

__all__ = ["SegmentUpkeep"]


class SegmentUpkeep(Compactor):
    """The compaction policy of a packed store (see :class:`~spillkit.compaction.Compactor` for the mechanics).

    * After a write or delete (:meth:`_maintain`): segments with nothing live
      are dropped, unpinned ones more than ``compact_ratio`` dead are compacted;
      the active segment too once it is mostly dead (it is sealed first, see
      ``_worth_sealing``), so that its dead records do not stay on disk while
      no further appends come to rotate it. A pinned active segment is only
      sealed, once the records appended to it since the last flush are mostly
      dead (``_piling_up``): later appends go to a new, unpinned segment.
    * At a flush (:meth:`_compact_pinned`): pinned segments mostly dead, and
      small sealed segments merged into the active one.
    * Under ``available_disk`` pressure (:meth:`_reclaim`): every unpinned
      segment holding dead records.
    * On a full disk a compaction cannot copy: holes are punched over the dead
      records instead (:meth:`_compact_in_room`; see :mod:`spillkit.holes`).

    None of these raises ``OSError``: a failed compaction warns (on a full
    disk too, holes or not), and the records stay where they were.
    """

    @contextlib.contextmanager
    def _compacting(self) -> Iterator[None]:
        # Around each of the three below: a failed compaction warns and leaves the records where they
        # are; the byte counts are brought up to date whatever happened.
        try:
            yield
        except OSError as error:  # stacklevel: past contextlib and the method, to the store's caller's caller
            warnings.warn(f"compaction failed, records stay where they are: {error!r}", SpillWarning, stacklevel=5)
        finally:
            self._count()

    def _maintain(self) -> None:
        """Drop segments with nothing live; compact unpinned ones that are mostly dead. Never raises OSError."""
        if not self._candidates:  # (after most appends: the counts only, without _compacting's generator)
            self._count()
            return
        with self._compacting():
            while self._candidates:
                name, segment = self._candidates.popitem()
                if self._segments.get(name) is not segment:
                    continue
                if not segment.live:
                    self._drop(segment)
                elif segment is self._active and self._piling_up(segment):
                    self._active = None  # sealed: compacted at the next flush if mostly dead, like any pinned one
                elif not segment.pinned and self._mostly_dead(segment):
                    if segment is self._active:
                        if not self._worth_sealing(segment):
                            continue
                        self._active = None  # sealed: appends go to a new segment, and it is compacted
                    self._compact_in_room(segment)

    def _compact_pinned(self) -> None:
        """Before a flush replaces the manifest: compact mostly dead segments it points into, merge small ones.

        A session on a re-opened path adopts the earlier sessions' segments (read-only, each holding
        a descriptor) and starts one of its own, so a path re-opened many times would gather a
        segment per session. Adopted segments with at most ``segment_bytes // 4`` live bytes are
        therefore copied into the active segment once two or more such segments (the active one
        counted, when it holds records) would be kept: such a flush copies at most about that many
        bytes per small segment, and the adopted segments left hold more than that each.
        """
        active = self._active
        if active is not None and active.pinned and active.live and self._worth_sealing(active):
            self._active = None  # compacted below like the others
        small = {s for s in self._segments.values() if s.adopted and 0 < s.live <= self.segment_bytes // 4}
        merge = len(small) + bool(self._active is not None and self._active.live) >= 2
        with self._compacting():
            for segment in list(self._segments.values()):
                if segment is self._active or not segment.live:
                    continue
                if (segment.pinned and self._mostly_dead(segment)) or (merge and segment in small):
                    self._compact_in_room(segment)

    def _reclaim(self) -> None:
        """Compact every unpinned segment holding dead records, the active one included (quota pressure)."""
        active = self._active
        if active is not None and not active.pinned and active.dead:
            self._active = None  # sealed, so that it can be compacted like the others
        with self._compacting():
            for segment in sorted(self._segments.values(), key=lambda s: -s.dead):
                if segment.pinned or not segment.dead or segment is self._active:
                    continue
                if segment.name in self._segments:
                    self._compact(segment)

    def _compact_in_room(self, segment: Segment) -> None:
        """Compact the segment; on a full disk, punch holes over dead records too, then raise (to be warned).

        A compaction needs room for the live bytes it copies, which a full disk lacks; holes give the
        dead bytes back in place, and a later change to the segment tries the compaction again.
        """
        try:
            self._compact(segment)
        except OSError as error:
            if disk_full(error):
                self._punch(segment)  # this one only: every delete on a full disk may come here again
                self._clear_spares()
            raise
