"""The reserve: disk space a Chest holds in its directory for its next manifest.

A flush on a full disk may find no room for its new manifest. Before the
reserve, the only room was the files the previous flush's manifest still
needs, and freeing them opened a window in which a crash lost those keys' old
values. Now a Chest with a ``path`` keeps a preallocated file,
:data:`RESERVE_NAME`, sized for the next manifest with a margin
(:func:`planned_size`: twice the last manifest, at least
:data:`MIN_RESERVE_BYTES`). On a full disk the commit removes it (its blocks
and its inode) and writes the manifest into that room; nothing the previous
manifest needs has been freed yet. See :func:`spillkit.persistence.commit_manifest`
and docs/durability.md.

The reserve is made at a Chest's first flush (a Chest that never flushes
never pays for it; temporary Chests, which promise nothing across a crash,
have none), kept the right size after every commit, left in place by
``close()`` (the next Chest on the path finds its room still held) and removed
with the directory by ``drop()``. Its name starts with a dot, so a re-open
neither removes it as a leftover nor takes it for a segment. It holds no data
and is never fsynced: a crash may leave it short or lose it, and the next
flush makes it whole again. It is not counted in ``disk_bytes`` or against
``available_disk``.

Thread-safety: a :class:`Reserve` is not locked; its Chest calls it under the
engine's lock (from the flush). Failure behaviour: :meth:`Reserve.ensure`
raises the ``OSError``; :func:`keep`, which the flush calls, counts it in
``stats.reserve_failures`` and turns it into a
:class:`~spillkit.errors.SpillWarning` (or a note on the error a failed flush
raises anyway), never raising it; :meth:`Reserve.release` never
raises either (a reserve it cannot remove is warned about and frees nothing).
"""

from __future__ import annotations

import errno
import os
import warnings

from .errors import SpillWarning
from .regularfile import SAFE_OPEN, ensure_regular
from .stats import Stats

__all__ = ["MIN_RESERVE_BYTES", "RESERVE_NAME", "Reserve", "keep", "planned_size"]

RESERVE_NAME = ".spillkit-reserve"  # hidden: a key's file name never starts with a dot (naming.is_reserved)
MIN_RESERVE_BYTES = 64 * 1024  # a manifest row is about 100-200 bytes: room for some hundreds of keys
_ZEROS = bytes(64 * 1024)
# posix_fallocate's answers on a file system that cannot preallocate: write zeros instead.
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)


def planned_size(manifest_bytes: int) -> int:
    """The reserve's size after a manifest of ``manifest_bytes``: twice that, at least :data:`MIN_RESERVE_BYTES`.

    >>> planned_size(100), planned_size(100_000)
    (65536, 200000)
    """
    return max(MIN_RESERVE_BYTES, 2 * manifest_bytes)


class Reserve:
    """The reserve file of the Chest directory ``directory`` (nothing is done on disk until :meth:`ensure`).

    ``target`` is the size it should have; ``allocated`` the bytes known to be allocated to it
    (``None``: unknown, e.g. left by an earlier process, so the next :meth:`ensure` looks).
    """

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, RESERVE_NAME)
        self.target = MIN_RESERVE_BYTES
        self.allocated: int | None = None
        self.failed = False  # the last ensure() raised: a flush with nothing to commit tries again anyway

    def ensure(self, manifest_bytes: int | None = None) -> None:
        """Make the reserve ``target`` bytes, allocated (``manifest_bytes``: plan it after that manifest first).

        Grows it with ``posix_fallocate`` (zeros written where that is missing or unsupported),
        and cuts it back to ``target`` once it is more than twice that. Raises ``OSError`` (the
        reserve may then be short; the next call tries again).
        """
        if manifest_bytes is not None:
            self.target = planned_size(manifest_bytes)
        if self.allocated is not None and self.target <= self.allocated <= 2 * self.target:
            return
        self.allocated = None
        self.failed = True  # until the file is whole: an exception in between leaves it marked failed
        # A planted FIFO must not block the flush, nor a link send the zeros elsewhere.
        fd = ensure_regular(os.open(self.path, os.O_WRONLY | os.O_CREAT | SAFE_OPEN, 0o600), self.path)
        try:
            info = os.fstat(fd)
            have = min(info.st_size, info.st_blocks * 512)  # a sparse file holds no room
            if have > 2 * self.target:
                os.ftruncate(fd, self.target)
            elif have < self.target:
                _allocate(fd, self.target)
        finally:
            os.close(fd)
        self.allocated = self.target
        self.failed = False

    def release(self) -> int:
        """Remove the reserve file; return the bytes that freed (0: there was none, or it stays)."""
        self.allocated = 0
        try:
            info = os.stat(self.path, follow_symlinks=False)
            os.unlink(self.path)
        except FileNotFoundError:
            return 0
        except OSError as error:
            self.allocated = None
            warnings.warn(f"could not remove the reserve {self.path!r}: {error!r}", SpillWarning, stacklevel=2)
            return 0
        return max(info.st_size, info.st_blocks * 512)


def _allocate(fd: int, size: int) -> None:
    """Give the first ``size`` bytes of ``fd`` real blocks: ``posix_fallocate``, else zeros written."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is not None:
        try:
            fallocate(fd, 0, size)
            return
        except OSError as error:
            if error.errno not in _UNSUPPORTED:
                raise
    offset = 0
    while offset < size:
        offset += os.pwrite(fd, memoryview(_ZEROS)[: size - offset], offset)


def keep(reserve: Reserve | None, size: int | None, stats: Stats, failed: BaseException | None = None) -> None:
    """Best effort: :meth:`Reserve.ensure` after a manifest of ``size`` bytes (``None``: as planned before).

    A failure is counted in ``stats.reserve_failures`` and never raised: it is warned about, or,
    when the flush is raising ``failed`` anyway, noted on that error.
    """
    if reserve is None:
        return
    try:
        reserve.ensure(size)
    except OSError as error:
        stats.reserve_failures += 1
        message = (
            f"could not make the reserve {reserve.path!r} {reserve.target} bytes: {error!r}; "
            "a flush that then finds the disk full may have to free the previous flush's files "
            "before its manifest is committed (the next flush tries again)"
        )
        if failed is not None:
            failed.add_note(f"spillkit: {message}")
        else:
            warnings.warn(message, SpillWarning, stacklevel=5)  # keep, commit_manifest, flush, Chest.flush
