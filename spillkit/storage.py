"""The disk tier: one checksummed file per spilled value under a private directory."""

from __future__ import annotations

import contextlib
import os
import struct
import warnings
from collections.abc import Hashable, Iterable, Iterator
from typing import Any

from .codecs import Codec
from .errors import CorruptSpillFile, DiskQuotaExceeded, SpillWarning
from .naming import candidate_name

try:  # the same CRC-32 as zlib's (files are interchangeable), about 13x faster
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - depends on the optional "fast" extra
    from zlib import crc32

__all__ = ["DiskStore", "is_spill_file"]

# magic, version, name length, body length, crc32 of body; then the file name
# (so a file moved into another key's place is recognised), padded to 64 bytes
# so that out-of-band array buffers stay aligned.
_HEADER = struct.Struct("<4sBxHQI")
_MAGIC = b"SPK\x00"
_VERSION = 1
_PAD = 64


def _header(name: bytes, body_len: int, crc: int) -> bytes:
    raw = _HEADER.pack(_MAGIC, _VERSION, len(name), body_len, crc) + name
    return raw + bytes(-len(raw) % _PAD)


def is_spill_file(full: str, name: str) -> bool:
    """True when ``full`` starts like a spill file written under ``name`` (used to clean up after a crash)."""
    try:
        with open(full, "rb") as file:
            head = file.read(_HEADER.size + len(name.encode("utf-8")))
    except OSError:
        return False
    if len(head) < _HEADER.size:
        return False
    magic, _version, name_len, _body, _crc = _HEADER.unpack_from(head, 0)
    return bool(magic == _MAGIC and head[_HEADER.size : _HEADER.size + name_len] == name.encode("utf-8"))


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
    The header holds a CRC32 of the body and the file's own name: truncation,
    bit flips and a file swapped in from another key raise
    :class:`~spillkit.errors.CorruptSpillFile` naming the key, and the bytes are
    never handed to the codec.

    Not thread-safe: the engine that owns it holds the lock. On a failed write
    (serialization error, ``OSError``, quota) the previous file of the key, if
    any, is untouched and no temporary file is left behind.

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

    def __init__(self, path: str, codec: Codec, available_disk: int | None = None) -> None:
        self.path = path
        self.codec = codec
        self.available_disk = available_disk
        self.total_bytes = 0
        self._names: dict[Hashable, str] = {}
        self._sizes: dict[Hashable, int] = {}
        self._owners: dict[str, Hashable] = {}  # casefolded name -> key: injective even on case-insensitive disks
        self._dirty: set[str] = set()  # names written since the last sync()
        self._temp_counter = 0
        # Crash consistency (see protect()): casefolded names the committed manifest references,
        # and the ones among them no key owns any more (name -> size), unlinked at the next protect().
        self._protected: set[str] = set()
        self._retained: dict[str, int] = {}

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

    def _name_for(self, key: Hashable) -> str:
        name = self._names.get(key)
        if name is not None and name.casefold() not in self._protected:
            return name
        attempt = 0
        while True:
            name = candidate_name(key, attempt)
            folded = name.casefold()
            if folded not in self._owners and folded not in self._protected:
                return name
            attempt += 1

    def adopt(self, key: Hashable, name: str, size: int) -> None:
        """Register a file that already exists (used when re-opening a directory)."""
        self._names[key] = name
        self._sizes[key] = size
        self._owners[name.casefold()] = key
        self.total_bytes += size

    def write(self, key: Hashable, value: Any) -> int:
        """Serialize ``value`` into the key's file; return the bytes written."""
        frames = list(self.codec.encode(value))  # serialization errors surface here, before any I/O
        body_len = 0
        crc = 0
        for frame in frames:
            crc = crc32(frame, crc)
            body_len += memoryview(frame).nbytes
        old = self._names.get(key)
        keep_old = old is not None and old.casefold() in self._protected  # copy-on-write: a fresh name
        name = self._name_for(key)
        header = _header(name.encode("utf-8"), body_len, crc)
        size = len(header) + body_len
        freed = 0 if keep_old else self._sizes.get(key, 0)
        if self.available_disk is not None:
            after = self.total_bytes - freed + size
            if after > self.available_disk:
                raise DiskQuotaExceeded(
                    f"storing {key!r} needs {size} bytes on disk; that would make {after} "
                    f"bytes, over available_disk={self.available_disk}"
                )
        self._temp_counter += 1
        temp = os.path.join(self.path, f".tmp-{os.getpid()}-{self._temp_counter}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                _write_all(fd, [header, *frames])
            finally:
                os.close(fd)
            os.replace(temp, os.path.join(self.path, name))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        if keep_old and old is not None:
            self._retained[old] = self._sizes[key]
            del self._owners[old.casefold()]
        self.total_bytes += size - freed
        self._names[key] = name
        self._sizes[key] = size
        self._owners[name.casefold()] = key
        self._dirty.add(name)
        return size

    def read(self, key: Hashable) -> Any:
        """Load the key's value; raise CorruptSpillFile if the file is damaged."""
        name = self._names[key]
        full = os.path.join(self.path, name)
        try:
            with open(full, "rb", buffering=0) as file:
                size = self._sizes[key]  # known from the write: no fstat; a short file shows below
                data = bytearray(size)
                view = memoryview(data)
                got = 0
                while got < size:
                    n = file.readinto(view[got:])
                    if not n:
                        break
                    got += n
                grew = got == size and bool(file.read(1))  # bytes appended after the write
        except FileNotFoundError:
            raise CorruptSpillFile(key, full, "the file is missing") from None
        if got < _HEADER.size:
            raise CorruptSpillFile(key, full, "the file is truncated")
        if grew:
            raise CorruptSpillFile(key, full, "the file is longer than what was written")
        magic, version, name_len, body_len, crc = _HEADER.unpack_from(data, 0)
        if magic != _MAGIC or version != _VERSION:
            raise CorruptSpillFile(key, full, "not a spillkit spill file")
        stored_name = bytes(data[_HEADER.size : _HEADER.size + name_len])
        if stored_name != name.encode("utf-8"):
            raise CorruptSpillFile(key, full, f"the file belongs to {stored_name.decode('utf-8', 'replace')!r}")
        start = _HEADER.size + name_len
        start += -start % _PAD
        if got != start + body_len:
            raise CorruptSpillFile(key, full, f"expected {start + body_len} bytes, found {got}")
        body = view[start:]
        if crc32(body) != crc:
            raise CorruptSpillFile(key, full, "checksum mismatch")
        return self.codec.decode(body)

    def delete(self, key: Hashable) -> None:
        """Remove the key's file if it has one (a missing file is not an error)."""
        name = self._names.pop(key, None)
        if name is None:
            return
        size = self._sizes.pop(key)
        del self._owners[name.casefold()]
        self._dirty.discard(name)
        if name.casefold() in self._protected:
            self._retained[name] = size  # the committed manifest's file: unlinked at the next protect()
            return
        self.total_bytes -= size
        try:
            os.unlink(os.path.join(self.path, name))
        except FileNotFoundError:
            pass
        except OSError as error:  # the key is gone either way; say that a file was left behind
            warnings.warn(f"could not remove the spill file of {key!r}: {error!r}", SpillWarning, stacklevel=3)

    def sync(self) -> None:
        """fsync every file written since the last sync, then the directory."""
        for name in sorted(self._dirty):
            fd = os.open(os.path.join(self.path, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._dirty.clear()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

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
