"""The key manifest written by ``Chest.flush()`` and read when a directory is re-opened."""

from __future__ import annotations

import contextlib
import hmac
import os
import pickle
import struct
import zlib
from collections.abc import Hashable
from dataclasses import dataclass

import cloudpickle

from .errors import SpillError
from .security import KEY_FILE_NAME, sign

__all__ = ["MANIFEST_NAME", "ManifestEntry", "read_manifest", "write_manifest"]

MANIFEST_NAME = ".spillkit-manifest"
# magic, body length, CRC-32 of the body, HMAC-SHA256 of the body with the directory's key:
# the body is a pickle, so it is never loaded unless this user's key signed it.
_HEADER = struct.Struct("<8sQI32s")
_MAGIC = b"SPKMAN02"


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


def write_manifest(path: str, entries: list[ManifestEntry], secret: bytes) -> None:
    """Atomically replace the manifest in ``path`` (signed with ``secret``); fsync it and the directory."""
    rows = [(e.key, e.name, e.file_bytes, e.nbytes, e.cost, e.tag, e.segment, e.offset) for e in entries]
    try:
        body = pickle.dumps(rows, protocol=5)
    except (pickle.PicklingError, AttributeError, TypeError):
        body = cloudpickle.dumps(rows, protocol=5)
    temp = os.path.join(path, f"{MANIFEST_NAME}.tmp-{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            os.write(fd, _HEADER.pack(_MAGIC, len(body), zlib.crc32(body), sign(secret, body)) + body)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, os.path.join(path, MANIFEST_NAME))
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_manifest(path: str, secret: bytes) -> list[ManifestEntry] | None:
    """Return the manifest's entries, ``None`` when there is none; raise on damage or forgery."""
    full = os.path.join(path, MANIFEST_NAME)
    try:
        with open(full, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return None
    if len(data) < _HEADER.size:
        raise SpillError(f"manifest {full!r} is truncated")
    magic, length, crc, tag = _HEADER.unpack_from(data, 0)
    body = data[_HEADER.size :]
    if magic != _MAGIC or len(body) != length or zlib.crc32(body) != crc:
        raise SpillError(f"manifest {full!r} is damaged; refusing to load it")
    if not hmac.compare_digest(tag, sign(secret, body)):
        raise SpillError(
            f"manifest {full!r} is not signed by this directory's key ({KEY_FILE_NAME}): "
            "it was tampered with or written elsewhere; refusing to load it"
        )
    try:
        rows = pickle.loads(body)
        return [ManifestEntry(*row) for row in rows]
    except Exception as error:  # a key class that no longer imports, or another format
        raise SpillError(f"manifest {full!r} cannot be decoded ({error!r}); refusing to load it") from error
