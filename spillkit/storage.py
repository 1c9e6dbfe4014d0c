"""The disk tier: one checksummed file per spilled value under a private directory."""

from __future__ import annotations

import contextlib
import itertools
import os
import warnings
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .buffers import read_buffer
from .codecs import Codec
from .errors import CorruptSpillFile, DiskQuotaExceeded, SpillWarning
from .naming import candidate_name
from .security import process_secret
from .spillfile import HEADER_SIZE, RecordError, encode_header, names_record, open_record

__all__ = ["DiskStore", "PreparedWrite", "is_spill_file"]

_FREE: Any = object()


@dataclass(slots=True)
class PreparedWrite:
    """A value serialized into a temporary file, not yet visible under its key's name."""

    key: Hashable
    name: str
    temp: str
    size: int
    tag: bytes


def is_spill_file(full: str, name: str) -> bool:
    """True when ``full`` starts like a spill file written under ``name`` (used to clean up after a crash)."""
    try:
        with open(full, "rb") as file:
            head = file.read(HEADER_SIZE + len(name.encode("utf-8")))
    except OSError:
        return False
    return names_record(head, name)


def _write_all(fd: int, frames: list[Any]) -> None:
    views = [memoryview(frame).cast("B") for frame in frames]
    while views:
        written = os.writev(fd, views[:1024])  # one syscall for header, stream and buffers
        while views and written >= views[0].nbytes:
            written -= views[0].nbytes
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


class DiskStore:
    """A mapping from keys to files in ``path``; values go through ``codec``.

    Each write goes to a hidden temporary file and is moved into place with
    ``os.replace``, so no reader ever sees half a file. Files are created 0600.
    The header holds a CRC-32 of the body, the file's own name and an
    HMAC-SHA256 (keyed with ``secret``) of the header and the pickle stream:
    truncation, bit flips, a file swapped in from another key, an older file of
    the same key put back, and a file written by anyone without the secret all
    raise :class:`~spillkit.errors.CorruptSpillFile` naming the key, and the
    bytes are never handed to the codec.

    A write is two steps so that the slow one can run without the engine's
    lock: :meth:`prepare` serializes into a temporary file and touches no shared
    state; :meth:`commit` (under the lock) moves it into place, or
    :meth:`discard` drops it. :meth:`write` does both.

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
    >>> store = DiskStore(tempfile.mkdtemp(), PickleCodec())
    >>> store.write("one", 1)
    81
    >>> store.read("one")
    1
    """

    def __init__(self, path: str, codec: Codec, available_disk: int | None = None, secret: bytes | None = None) -> None:
        self.path = path
        self.codec = codec
        self.available_disk = available_disk
        self.secret = process_secret() if secret is None else secret
        self.total_bytes = 0
        self._names: dict[Hashable, str] = {}
        self._sizes: dict[Hashable, int] = {}
        self._tags: dict[Hashable, bytes] = {}  # the HMAC of each key's current file: an older file is refused
        self._owners: dict[str, Hashable] = {}  # casefolded name -> key: injective even on case-insensitive disks
        self._reserved: dict[str, list[Any]] = {}  # casefolded name -> [key, writes in progress]
        self._dirty: set[str] = set()  # names renamed into place since the last good fsync of the directory
        self._unsynced: set[str] = set()  # names whose fsync (or the directory's) failed: unknown until written anew
        self._temp_counter = itertools.count(1)  # next() is atomic: prepare runs in several threads
        # Crash consistency (see protect()): casefolded names the committed manifest references,
        # and the ones among them no key owns any more (name -> size), unlinked at the next protect().
        self._protected: set[str] = set()
        self._retained: dict[str, int] = {}
        self._orphans: set[str] = set()  # files of deleted keys that could not be unlinked: retried

    def __contains__(self, key: object) -> bool:
        return key in self._names

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[Hashable]:
        return iter(list(self._names))

    def file_bytes(self, key: Hashable) -> int:
        """Bytes the key's file takes on disk (header included)."""
        return self._sizes[key]

    def filename(self, key: Hashable) -> str:
        """Full path of the key's file (the key must be stored)."""
        return os.path.join(self.path, self._names[key])

    def tag(self, key: Hashable) -> bytes | None:
        """The HMAC of the key's current file (None for a file adopted without one)."""
        return self._tags.get(key)

    def _name_for(self, key: Hashable) -> str:
        name = self._names.get(key)
        if name is not None and name.casefold() not in self._protected:
            return name
        attempt = 0
        while True:
            name = candidate_name(key, attempt)
            folded = name.casefold()
            owner = self._owners.get(folded, _FREE)
            reserved = self._reserved.get(folded)
            if (
                (owner is _FREE or (owner == key and folded not in self._protected))
                and (reserved is None or reserved[0] == key)
                and folded not in self._protected
            ):
                return name
            attempt += 1

    def reserve(self, key: Hashable) -> str:
        """Choose the key's file name and hold it until :meth:`commit` or :meth:`discard`."""
        name = self._name_for(key)
        entry = self._reserved.setdefault(name.casefold(), [key, 0])
        entry[1] += 1
        return name

    def unreserve(self, name: str) -> None:
        """Release a name held by :meth:`reserve` when no write follows."""
        entry = self._reserved[name.casefold()]
        entry[1] -= 1
        if not entry[1]:
            del self._reserved[name.casefold()]

    def adopt(self, key: Hashable, name: str, size: int, tag: bytes | None = None) -> None:
        """Register a file that already exists (used when re-opening a directory)."""
        self._names[key] = name
        self._sizes[key] = size
        if tag is not None:
            self._tags[key] = tag
        self._owners[name.casefold()] = key
        self.total_bytes += size

    def _freed_by_replacing(self, key: Hashable) -> int:
        # Bytes a new file for the key frees: none when its old file is a committed manifest's.
        old = self._names.get(key)
        if old is None or old.casefold() in self._protected:
            return 0
        return self._sizes[key]

    def _check_quota(self, key: Hashable, size: int) -> None:
        if self.available_disk is None:
            return
        after = self.total_bytes - self._freed_by_replacing(key) + size
        if after > self.available_disk:
            raise DiskQuotaExceeded(
                f"storing {key!r} needs {size} bytes on disk; that would make {after} "
                f"bytes, over available_disk={self.available_disk}"
            )

    def prepare(self, key: Hashable, value: Any, name: str) -> PreparedWrite:
        """Serialize ``value`` into a temporary file for the reserved ``name``.

        Touches no shared state, so it may run without the engine's lock. The
        quota is checked here against a possibly stale total and again at commit.
        """
        return self.prepare_frames(key, list(self.codec.encode(value)), name)  # errors surface before any I/O

    def prepare_frames(self, key: Hashable, frames: list[Any], name: str) -> PreparedWrite:
        """:meth:`prepare` for a value already encoded into ``frames`` (a packed store decides by size first)."""
        header, body_len, tag = encode_header(name, frames, self.codec, self.secret)
        size = len(header) + body_len
        self._check_quota(key, size)
        temp = os.path.join(self.path, f".tmp-{os.getpid()}-{next(self._temp_counter)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                _write_all(fd, [header, *frames])
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return PreparedWrite(key, name, temp, size, tag)

    def commit(self, prepared: PreparedWrite) -> int:
        """Move a prepared file into place as its key's file; return its size.

        On failure (quota, ``OSError``) the temporary file is removed, the
        reservation released, and the key's previous file is untouched.
        """
        key, name = prepared.key, prepared.name
        try:
            self._check_quota(key, prepared.size)
            os.replace(prepared.temp, os.path.join(self.path, name))
        except BaseException:
            self.discard(prepared)
            raise
        self.unreserve(name)
        freed = self._freed_by_replacing(key)
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
        """Drop a prepared write: remove its temporary file and release its name."""
        with contextlib.suppress(OSError):
            os.unlink(prepared.temp)
        self.unreserve(prepared.name)

    def write(self, key: Hashable, value: Any) -> int:
        """Serialize ``value`` into the key's file; return the bytes written."""
        name = self.reserve(key)
        try:
            prepared = self.prepare(key, value, name)
        except BaseException:
            self.unreserve(name)
            raise
        return self.commit(prepared)

    def read(self, key: Hashable) -> Any:
        """Load the key's value; raise CorruptSpillFile if the file is damaged or forged."""
        name = self._names[key]
        full = os.path.join(self.path, name)
        try:
            with open(full, "rb", buffering=0) as file:
                size = self._sizes[key]  # known from the write: no fstat; a short file shows below
                view = read_buffer(size)
                got = 0
                while got < size:
                    n = file.readinto(view[got:])
                    if not n:
                        break
                    got += n
                grew = got == size and bool(file.read(1))  # bytes appended after the write
        except FileNotFoundError:
            raise CorruptSpillFile(key, full, "the file is missing") from None
        if grew:
            raise CorruptSpillFile(key, full, "the file is longer than what was written")
        try:
            body = open_record(view[:got], name, self.secret, self._tags.get(key))
        except RecordError as error:
            raise CorruptSpillFile(key, full, str(error)) from None
        return self.codec.decode(body)

    def delete(self, key: Hashable) -> None:
        """Remove the key's file if it has one (a missing file is not an error)."""
        name = self._names.pop(key, None)
        if name is None:
            return
        self._tags.pop(key, None)
        size = self._sizes.pop(key)
        del self._owners[name.casefold()]
        self._dirty.discard(name)
        self._unsynced.discard(name)
        if name.casefold() in self._protected:
            self._retained[name] = size  # the committed manifest's file: unlinked at the next protect()
            return
        self.total_bytes -= size
        try:
            os.unlink(os.path.join(self.path, name))
        except FileNotFoundError:
            pass
        except OSError as error:  # the key is gone either way; say that a file was left behind
            self._orphans.add(name)
            warnings.warn(f"could not remove the spill file of {key!r}: {error!r}", SpillWarning, stacklevel=3)

    def sync(self) -> None:
        """fsync every file renamed into place since the last sync, then the directory.

        Raises the ``OSError`` of the first failure, as :meth:`sync_files` and
        :meth:`sync_directory` say. Nothing whose fsync failed is fsynced again:
        Linux may drop the dirty pages of a failed writeback (marked clean, the
        error reported once), so a second fsync could succeed with the bytes,
        or names, never on disk.
        """
        self.sync_files()
        self.sync_directory()

    def sync_files(self) -> None:
        """fsync every file renamed into place since the last good directory fsync (:meth:`sync` without the directory).

        Raises the ``OSError`` of the first failed fsync; that file's key is
        then listed by :meth:`unsynced_keys` and the file never fsynced again.
        """
        for name in sorted(self._dirty):
            fd = os.open(os.path.join(self.path, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            except OSError:
                self._dirty.discard(name)
                self._unsynced.add(name)
                raise
            finally:
                os.close(fd)

    def sync_directory(self) -> None:
        """fsync the directory, so that the names renamed into place since its last good fsync are durable.

        Raises the ``OSError`` if it fails; the keys of the files renamed into
        place since the last good directory fsync are then listed by
        :meth:`unsynced_keys` (their names may be lost) until written anew.
        """
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError:
            self._unsynced |= self._dirty
            self._dirty.clear()
            raise
        finally:
            os.close(fd)
        self._dirty.clear()

    def has_copy(self, key: Hashable) -> bool:
        """True when the key has a file that can stand in for its value (not one :meth:`unsynced_keys` lists)."""
        name = self._names.get(key)
        return name is not None and name not in self._unsynced

    def unsynced_keys(self) -> list[Hashable]:
        """Keys whose file (or its name, by a failed fsync of the directory) failed an fsync, not written anew since."""
        if not self._unsynced:
            return []
        return [key for key, name in self._names.items() if name in self._unsynced]

    def protect(self, names: Iterable[str], *, add: bool = False) -> None:
        """Keep the files ``names`` (a committed manifest's) from now on; unlink those it no longer names.

        Called once a manifest is durable: the files the previous manifest needed
        and this one does not (superseded or deleted since) are removed. A file
        that cannot be removed is warned about; a re-open removes it later. With
        ``add=True`` the names are protected as well, and nothing is removed (for
        the moment before a commit, when either manifest may end up on disk).
        """
        if add:
            self._protected.update(name.casefold() for name in names)
            return
        self._protected = {name.casefold() for name in names}
        for name in list(self._orphans):  # left by a failed unlink: try again now
            if name.casefold() in self._owners or name.casefold() in self._protected:
                self._orphans.discard(name)  # the name was taken again: the file is a key's now
                continue
            try:
                os.unlink(os.path.join(self.path, name))
            except FileNotFoundError:
                pass
            except OSError:
                continue
            self._orphans.discard(name)
        for name, size in list(self._retained.items()):
            if name.casefold() in self._protected:
                continue
            del self._retained[name]
            self.total_bytes -= size
            try:
                os.unlink(os.path.join(self.path, name))
            except FileNotFoundError:
                pass
            except OSError as error:
                warnings.warn(f"could not remove the superseded file {name!r}: {error!r}", SpillWarning, stacklevel=3)

    @property
    def retained(self) -> frozenset[str]:
        """Files kept only because the last committed manifest names them (no key owns them now)."""
        return frozenset(self._retained)

    def names(self) -> dict[Hashable, str]:
        """A copy of the key to file-name index."""
        return dict(self._names)
