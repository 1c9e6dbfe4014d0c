"""The key manifest written by ``Chest.flush()`` and read when a directory is re-opened.

Crash consistency rests on three rules kept by ``Chest`` and ``DiskStore``:
every file the manifest names is fsynced (with the directory) before the
manifest is replaced; a file the committed manifest names is never replaced or
unlinked until the next manifest is committed (copy-on-write, see
``DiskStore.protect``); and a re-open removes whatever a killed process left
behind (temporary files, spill files written after the last flush).
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import os
import pickle
import secrets
import struct
import zlib
from collections.abc import Hashable
from dataclasses import dataclass

import cloudpickle

from .errors import SpillError
from .regularfile import SAFE_OPEN, ensure_regular
from .security import KEY_FILE_NAME, sign

__all__ = [
    "MANIFEST_NAME",
    "ManifestEntry",
    "UnreadableKey",
    "is_plain",
    "pickle_key",
    "read_manifest",
    "remove_manifest",
    "write_manifest",
]

MANIFEST_NAME = ".spillkit-manifest"
# magic, body length, CRC-32 of the body, HMAC-SHA256 of the body with the directory's key:
# the body is a pickle, so it is never loaded unless this user's key signed it.
_HEADER = struct.Struct("<8sQI32s")
# Version 3 pickles each key that is not made of builtins (str, int, float, bytes, bool, None,
# tuples of them) on its own: a key that cannot be rebuilt (its class does not import in the
# reading process) costs that key alone, not the whole manifest. Plain keys stay inline, where
# pickle's memo shares the names dask keys repeat.
_MAGIC = b"SPKMAN03"
_INLINE_KEYS = b"SPKMAN02"  # rows hold the keys themselves: still read


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One key as the last flush left it: its file (or segment and offset), record size, memory size and cost.

    Rows of older manifests (without segment and offset) still load: they are files.
    """

    key: Hashable
    name: str
    file_bytes: int
    nbytes: int
    cost: float | None
    tag: bytes | None = None  # the HMAC of the file's header, so an older file of the key is refused
    segment: str | None = None  # a packed record: the segment file that holds it (``name`` is the record's)
    offset: int = 0  # ... and where in that file it starts
    key_blob: bytes | None = None  # the key's own pickle (:func:`pickle_key`); None only for a plain key


class UnreadableKey:
    """Stands in for a flushed key this process cannot unpickle (say, its class does not import here).

    The key's value stays on disk under this stand-in: it is listed, its value can be read and
    deleted, and the next flush writes the key's original pickle again, so a process that can
    import the key's class finds the key as it was. Equal to another stand-in for the same pickle.
    Raises nothing. Immutable by convention (spillkit never assigns its slots), so thread-safe.

    Parameters
    ----------
    blob : bytes
        The key's pickle as the manifest holds it (kept as the attribute ``blob``).
    error : str
        ``"ExceptionType: message"`` of what unpickling (or hashing) the key raised (``error``).
    """

    __slots__ = ("blob", "error")

    def __init__(self, blob: bytes, error: str) -> None:
        self.blob = blob
        self.error = error

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnreadableKey) and other.blob == self.blob

    def __hash__(self) -> int:
        return hash((UnreadableKey, self.blob))

    def __repr__(self) -> str:
        return f"<UnreadableKey: {self.error[:200]}>"


_PLAIN = frozenset({str, int, float, bytes, bool, type(None)})
_PLAIN_DEPTH = 32  # deeper tuples are pickled on their own: the body's pickle must never recurse too far


def is_plain(key: Hashable) -> bool:
    """True for keys of builtins only, which every process can unpickle: they stay inline."""
    stack = [(key, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is tuple and depth < _PLAIN_DEPTH:
            stack.extend((inner, depth + 1) for inner in item)  # type: ignore[attr-defined]
        elif kind not in _PLAIN:
            return False
    return True


def pickle_key(key: Hashable) -> bytes:
    """The key's pickle for the manifest (cloudpickle when pickle refuses); raises what both raise."""
    if isinstance(key, UnreadableKey):
        return key.blob
    try:
        return pickle.dumps(key, protocol=5)
    except Exception:  # a key's __reduce__ may raise anything; cloudpickle decides
        blob: bytes = cloudpickle.dumps(key, protocol=5)
        return blob


def _unpickle_key(blob: bytes) -> Hashable:
    try:
        key: Hashable = pickle.loads(blob)
        hash(key)
    except Exception as error:  # whatever the key's class does on load
        return UnreadableKey(blob, f"{type(error).__name__}: {error}")
    return key


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(path: str, entries: list[ManifestEntry], secret: bytes, *, sync_parent: bool = False) -> int:
    """Atomically replace the manifest in ``path`` (signed with ``secret``); fsync it and the directory.

    Returns the manifest's size in bytes (the reserve for the next one is planned after it).

    ``sync_parent`` also fsyncs the directory above ``path``, so that a directory
    created for this Chest is itself durable (done at a Chest's first flush).
    An entry's ``key_blob`` is None only for a plain key (:func:`is_plain`): such keys go
    inline, the others as their pickle.
    """
    inline, pickled, places = [], [], []  # places: where each pickled key goes among all, in order
    for place, e in enumerate(entries):
        row = (e.name, e.file_bytes, e.nbytes, e.cost, e.tag, e.segment, e.offset)
        if e.key_blob is None:  # a plain key: commit_manifest decided (is_plain) and pickled the others
            inline.append((e.key, *row))
        else:
            pickled.append((e.key_blob, *row))
            places.append(place)
    body = pickle.dumps((inline, pickled, places), protocol=5)  # builtins only: any process loads it
    # A new name, made here (O_EXCL): nothing planted under a guessable one is written through.
    temp = os.path.join(path, f"{MANIFEST_NAME}.tmp-{os.getpid()}-{secrets.token_hex(8)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | SAFE_OPEN, 0o600)
    try:
        try:
            data = _HEADER.pack(_MAGIC, len(body), zlib.crc32(body), sign(secret, body)) + body
            view = memoryview(data)
            while view:  # a filling disk writes what fits and says so; only the next write raises ENOSPC
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, os.path.join(path, MANIFEST_NAME))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_directory(path)
    if sync_parent:
        _fsync_directory(os.path.dirname(path) or ".")
    return len(data)


def read_manifest(path: str, secret: bytes) -> list[ManifestEntry] | None:
    """Return the manifest's entries, ``None`` when there is none; raise on damage or forgery."""
    full = os.path.join(path, MANIFEST_NAME)
    try:
        fd = ensure_regular(os.open(full, os.O_RDONLY | SAFE_OPEN), full)  # a planted FIFO must not block the reopen
    except FileNotFoundError:
        return None
    except OSError as error:  # a directory, FIFO, device or symbolic link in its place: damaged, as documented
        if error.errno not in (errno.EINVAL, errno.ELOOP):
            raise
        raise SpillError(f"manifest {full!r} is no regular file ({error.strerror}); refusing to load it") from None
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) < _HEADER.size:
        raise SpillError(f"manifest {full!r} is truncated")
    magic, length, crc, tag = _HEADER.unpack_from(data, 0)
    body = data[_HEADER.size :]
    if magic not in (_MAGIC, _INLINE_KEYS) or len(body) != length or zlib.crc32(body) != crc:
        raise SpillError(f"manifest {full!r} is damaged; refusing to load it")
    if not hmac.compare_digest(tag, sign(secret, body)):
        raise SpillError(
            f"manifest {full!r} is not signed by this directory's key ({KEY_FILE_NAME}): "
            "it was tampered with or written elsewhere; refusing to load it"
        )
    try:
        if magic == _INLINE_KEYS:
            return [ManifestEntry(*row) for row in pickle.loads(body)]
        inline, pickled, *places = pickle.loads(body)  # no places (older manifests): pickled keys go last
        entries = [ManifestEntry(*row) for row in inline]
        for index, (blob, name, file_bytes, nbytes, cost, tag, segment, offset) in enumerate(pickled):
            entry = ManifestEntry(_unpickle_key(blob), name, file_bytes, nbytes, cost, tag, segment, offset, blob)
            entries.insert(places[0][index] if places else len(entries), entry)  # the flushed Chest's order
        return entries
    except Exception as error:  # version 2: a key class that no longer imports; or another format
        raise SpillError(f"manifest {full!r} cannot be decoded ({error!r}); refusing to load it") from error


def remove_manifest(path: str) -> OSError | None:
    """Remove the manifest durably (a directory without one reopens empty).

    Raises the ``OSError`` of an unlink that failed: the directory then still
    reopens with the values of its last flush. Returns the error of a failed
    fsync of the directory (the removal may not survive a crash), for the
    caller to warn about once its own work is done.
    """
    try:
        os.unlink(os.path.join(path, MANIFEST_NAME))
    except FileNotFoundError:
        return None  # never flushed
    try:
        _fsync_directory(path)
    except OSError as error:
        return error
    return None
