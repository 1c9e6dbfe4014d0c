"""The disk tier: one checksummed file per spilled value under a private directory.

:class:`DiskStore` writes, reads, fsyncs and removes the files; its state and
the bookkeeping that touches no file (the key to file-name index, name
reservations, the quota check) are :class:`~spillkit.fileindex.FileIndex`,
which it inherits.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from .errors import ChangedWhileWritten, NameTaken
from .filereads import OpenRead
from .filesync import FileSync
from .holes import disk_full
from .keys import describe_key
from .spillfile import encode_header
from .whole_writes import write_record

__all__ = ["DiskStore", "OpenRead", "PreparedWrite"]

_WRITE_TRIES = 3  # writes of a value that changes during each one, before it stays in memory


@dataclass(slots=True)
class PreparedWrite:
    """A value serialized into a temporary file, not yet visible under its key's name."""

    key: Hashable
    name: str
    temp: str
    size: int
    tag: bytes


def _write_all(fd: int, frames: list[Any]) -> None:
    views = [memoryview(frame).cast("B") for frame in frames]
    while views:
        written = os.writev(fd, views[:1024])  # one syscall for header, stream and buffers
        while views and written >= views[0].nbytes:
            written -= views[0].nbytes
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


class DiskStore(FileSync):
    """A mapping from keys to files in ``path``; values go through ``codec``.

    Each write goes to a hidden temporary file and is moved into place with
    ``os.replace``, so no reader ever sees half a file. Files are created 0600.
    The header holds the file's own name and an HMAC-SHA256 (keyed with
    ``secret``) of the header and every byte of the body (array buffers through
    a keyed digest, :mod:`spillkit.bodymac`), and a CRC-32 of the pickle stream:
    truncation, bit flips, a file swapped in from another key, an older file of
    the same key put back, and a file written by anyone without the secret all
    raise :class:`~spillkit.errors.CorruptSpillFile` naming the key, and the
    bytes are never handed to the codec.

    A write is two steps so that the slow one can run without the engine's
    lock: :meth:`prepare` serializes into a temporary file and touches no shared
    state; :meth:`commit` (under the lock) moves it into place, or
    :meth:`discard` drops it. :meth:`write` does both. fsync and the
    copy-on-write protection of committed files are :class:`~spillkit.filesync.FileSync`,
    its base.

    Not thread-safe except :meth:`prepare`: the engine that owns it holds the
    lock. On a failed write (serialization error, ``OSError``, quota) the
    previous file of the key, if any, is untouched and no temporary file is
    left behind. A file whose fsync failed is never fsynced again: see
    :meth:`sync` and :meth:`unsynced_keys`.

    Copy-on-write for crash consistency: files named by :meth:`protect` (those
    of the last committed manifest) are never replaced or unlinked. A new value
    for such a key goes to a fresh name; a deleted or superseded protected file
    stays on disk (and in ``total_bytes``) until the next :meth:`protect` call.

    Examples
    --------
    >>> import tempfile
    >>> from spillkit.codecs import PickleCodec
    >>> tmp = tempfile.TemporaryDirectory()
    >>> store = DiskStore(tmp.name, PickleCodec())
    >>> store.write("one", 1)
    81
    >>> store.read("one")
    1
    >>> tmp.cleanup()
    """

    def prepare(self, key: Hashable, value: Any, name: str, verify: bool = False) -> PreparedWrite:
        """Serialize ``value`` into a temporary file for the reserved ``name``.

        Touches no shared state, so it may run without the engine's lock. The
        quota is checked here against a possibly stale total and again at commit.
        With ``verify`` (write-behind, whose caller may change the value in place
        meanwhile), see :meth:`prepare_frames`.
        """
        return self.prepare_frames(key, list(self.codec.encode(value)), name, verify)  # errors before any I/O

    def prepare_frames(self, key: Hashable, frames: list[Any], name: str, verify: bool = False) -> PreparedWrite:
        """:meth:`prepare` for a value already encoded into ``frames`` (a packed store decides by size first).

        Out-of-band frames are views of the value, written without a copy. With
        ``verify``, the record's tag is taken again after the write: if the value changed
        in place between the header's tag and the copy into the file, the record
        would fail its own check, so it is written again (up to ``_WRITE_TRIES``
        times, then :class:`~spillkit.errors.ChangedWhileWritten`). Costs one more
        pass over the value (its keyed digest). On a full disk, the spare files (:mod:`spillkit.spares`) are
        removed and the write is made once more (warned about).
        """
        had_spares = len(self._spares) > 0  # (the attempt may use, and free, the only one)
        try:
            return self._prepare_once(key, frames, name, verify)
        except OSError as error:
            freed = self._spares.clear() if disk_full(error) else 0
            if not (freed or (had_spares and disk_full(error))):
                raise
            self._spares.note(f"disk full ({error!r}): removed the spare files ({freed} bytes); written again")
        return self._prepare_once(key, frames, name, verify)

    def _prepare_once(self, key: Hashable, frames: list[Any], name: str, verify: bool) -> PreparedWrite:
        header, body_len, tag = encode_header(name, frames, self.codec, self.secret)
        size = len(header) + body_len
        self._check_quota(key, size)
        temp, fd, reused = self._open_temp(size)
        try:
            try:
                _write_all(fd, [header, *frames])
                if reused > size:  # a spare longer than the record: its tail would read as appended bytes
                    os.ftruncate(fd, size)
                tries = 1
                while verify:
                    again = encode_header(name, frames, self.codec, self.secret)
                    if again[2] == tag:  # (the tag covers every byte: the value is what was written)
                        break
                    self.count_discarded(size)  # that attempt's bytes are written again, or given up
                    if tries == _WRITE_TRIES:
                        raise ChangedWhileWritten(f"the value changed while it was written, {tries} times")
                    header, body_len, tag = again
                    size = len(header) + body_len
                    os.ftruncate(fd, 0)
                    os.lseek(fd, 0, os.SEEK_SET)
                    _write_all(fd, [header, *frames])
                    tries += 1
            finally:
                os.close(fd)
        except BaseException:
            self._remove_temp(temp)  # the write's own error says what failed
            raise
        return PreparedWrite(key, name, temp, size, tag)

    def _open_temp(self, size: int) -> tuple[str, int, int]:
        """A temporary file to write a record of ``size`` bytes into: a spare to write over, or a new one.

        Returns its path, a descriptor and the spare's length (0 for a new file).
        """
        spare = self._spares.take(size) if size >= self._spares.min_size else None
        if spare is not None:
            fd = self._spares.open(spare)
            if fd is not None:
                return spare.path, fd, spare.size
            self._discard_temp(spare.path)  # not the file kept: gone, or replaced; not ours to write
        temp = os.path.join(self.path, f".tmp-{os.getpid()}-{next(self._temp_counter)}")
        return temp, os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), 0

    def commit(self, prepared: PreparedWrite) -> int:
        """Move a prepared file into place as its key's file; return its size.

        On failure (quota, ``OSError``) the temporary file is removed, the
        reservation released, and the key's previous file is untouched.
        """
        key, name = prepared.key, prepared.name
        full = os.path.join(self.path, name)
        try:
            self.release_unmapped()  # space that values freed since have given back
            self._check_quota(key, prepared.size)
            old = self._replaced_file(key)
            if (old is None or old[0] != name) and name not in self._orphans and os.path.lexists(full):
                # A name new to the key, taken by a file this Chest did not write (left in a directory
                # reopened, or planted): left alone, and never chosen again; the value goes under another.
                self._foreign.add(name.casefold())
                raise NameTaken(errno.EEXIST, "a file this Chest did not write has the name", full)
            # The key's old file of this name goes now; a loaded value may still map it (then it stays counted).
            mapped = self._mapped_id(full) if old is not None and old[0] == name else None
            os.replace(prepared.temp, full)
        except BaseException:
            self.discard(prepared)
            raise
        self.unreserve(name)
        freed = 0 if old is None else self._hold(mapped, old[1])
        old_name = self._names.get(key)
        if old_name is not None and old_name != name:  # copy-on-write: the committed file stays
            self._retained[old_name] = self._sizes[key]
            self._owners.pop(old_name.casefold(), None)
        self.total_bytes += prepared.size - freed
        self._names[key] = name
        self._sizes[key] = prepared.size
        self._tags[key] = prepared.tag
        self._owners[name.casefold()] = key
        self._dirty.add(name)
        self._unsynced.discard(name)  # a new inode under the name: its fsync is a fresh one
        return prepared.size

    def discard(self, prepared: PreparedWrite) -> None:
        """Drop a prepared write: remove its temporary file and release its name.

        A temporary file that cannot be removed is noted (warned once the
        engine's operation is whole: a background write dropped because its key
        changed raises into no one) and tried again at the next flush.
        """
        self.count_discarded(prepared.size)
        self._discard_temp(prepared.temp)
        self.unreserve(prepared.name)

    def _discard_temp(self, temp: str) -> None:
        """:meth:`_remove_temp`, noting a file that will not go (warned once the engine's operation is whole)."""
        error = self._remove_temp(temp)
        if error is not None:
            self._spares.note(f"could not remove the temporary file {temp!r}: {error!r}")

    def _remove_temp(self, temp: str) -> OSError | None:
        """Unlink a temporary file of ours; one that will not go is kept for the next flush to remove."""
        try:
            os.unlink(temp)
        except FileNotFoundError:
            return None
        except OSError as error:
            self._orphans.add(os.path.basename(temp))  # (a reopen sweeps it too)
            return error
        return None

    def write(self, key: Hashable, value: Any) -> int:
        """Serialize ``value`` into the key's file; return the bytes written."""
        return write_record(self, key, value, verify=False)

    def delete(self, key: Hashable, reuse: bool = True) -> None:
        """Remove the key's file if it has one (a missing file is not an error); ``reuse``: it may stay a spare."""
        name = self._names.pop(key, None)
        if name is None:
            return
        self._tags.pop(key, None)
        self.prints.forget(key)
        size = self._sizes.pop(key)
        del self._owners[name.casefold()]
        self._dirty.discard(name)
        self._unsynced.discard(name)
        if name.casefold() in self._protected:
            self._retained[name] = size  # the committed manifest's file: unlinked at the next protect()
            return
        error = self._drop_file(name, size, reuse=reuse)
        if error is not None:  # the key is gone either way; say that a file was left behind
            self._orphans.add(name)
            # Noted, not warned: a warning made an error would stop the caller's bookkeeping half-way
            # (the engine's delete would list a key it no longer has; a packed commit not place its record).
            self._spares.note(f"could not remove the spill file of {describe_key(key)}: {error!r}")
