"""What a file-per-value store counts on disk: the quota, and files that loaded values still map.

A file deleted (or replaced) while a loaded value maps it (``map_loads``) loses its
name at once but keeps its blocks until the value is freed. :class:`DiskSpace` keeps
such a file's bytes counted (*held*) until :mod:`spillkit.mapped` reports no mapping
of it left, so that ``disk_bytes`` and the ``available_disk`` check see the space
really taken.
"""

from __future__ import annotations

import os
from collections.abc import Hashable

from .errors import DiskQuotaExceeded
from .filereads import FileReads
from .keys import describe_key
from .mapped import FileId, any_mapped, is_mapped

__all__ = ["DiskSpace"]


class DiskSpace(FileReads):
    """The quota check and held bytes of :class:`~spillkit.storage.DiskStore` (its base, above the read path).

    Not thread-safe, like the rest of the store (the engine holds the lock), except
    :meth:`_check_quota`, which ``prepare`` calls without the lock: it only reads, and
    against a total that may be stale (the commit checks again under the lock). It
    raises :class:`~spillkit.errors.DiskQuotaExceeded`; nothing here raises ``OSError``
    (a file that cannot be ``stat``-ed counts as not mapped).
    """

    def _mapped_id(self, full: str) -> FileId | None:
        """The id of the file ``full`` if a loaded value maps it (its blocks outlive its name), else None."""
        if not any_mapped():
            return None
        try:
            info = os.stat(full)
        except OSError:
            return None
        file_id = (info.st_dev, info.st_ino)
        return file_id if is_mapped(file_id) else None

    def _hold(self, file_id: FileId | None, size: int) -> int:
        """Keep ``size`` bytes counted until ``file_id``'s mappings go; return the bytes freed now."""
        if file_id is None:
            return size
        self._held[file_id] = self._held.get(file_id, 0) + size
        return 0

    def release_unmapped(self) -> None:
        """Stop counting the held files whose mappings have all gone (lock held)."""
        for file_id, size in list(self._held.items()):
            if not is_mapped(file_id):
                del self._held[file_id]
                self.total_bytes -= size

    def _releasable(self) -> int:
        # Held bytes whose mappings have gone, not yet released: read from a snapshot, so safe without the lock.
        return sum(size for file_id, size in tuple(self._held.items()) if not is_mapped(file_id))

    @property
    def held_bytes(self) -> int:
        """Bytes of deleted or replaced files that loaded values map (in ``total_bytes``; as of the last release)."""
        return sum(self._held.values())

    def space_in_use(self) -> int:
        """Bytes the store's files take on disk now, held ones and spares included (safe without the lock)."""
        return self.total_bytes - self._releasable() + self._spares.bytes

    def _replaced_file(self, key: Hashable) -> tuple[str, int] | None:
        """``(name, size)`` of the key's file, which a new file of the key replaces; None if a manifest keeps it."""
        name, size = self._names.get(key), self._sizes.get(key)  # .get: prepare may run while the key goes
        if name is None or size is None or name.casefold() in self._protected:
            return None
        return name, size

    def _freed_by_replacing(self, key: Hashable) -> int:
        """Bytes a new file of ``key`` frees: none if a manifest keeps the old file or a loaded value maps it."""
        replaced = self._replaced_file(key)
        if replaced is None or self._mapped_id(os.path.join(self.path, replaced[0])) is not None:
            return 0
        return replaced[1]

    def _check_quota(self, key: Hashable, size: int) -> None:
        if self.available_disk is not None:
            self.check_room(key, size, self.available_disk)

    def check_room(self, key: Hashable, size: int, limit: int, elsewhere: int = 0) -> None:
        """DiskQuotaExceeded unless writing ``size`` bytes for ``key`` keeps the disk use within ``limit``.

        ``elsewhere``: bytes on disk this store does not count (a packed store's segments). A file
        of the key is replaced or removed by the write (unless a manifest keeps it or a value maps
        it); the spare files (spillkit.spares) are removed before a write is refused.
        """
        after = self.space_in_use() + elsewhere - self._freed_by_replacing(key) + size
        if after > limit and self._spares.clear():
            after = self.space_in_use() + elsewhere - self._freed_by_replacing(key) + size
        if after > limit:
            raise DiskQuotaExceeded(
                f"storing {describe_key(key)} needs {size} bytes on disk; that would make {after} "
                f"bytes, over available_disk={limit}"
            )
