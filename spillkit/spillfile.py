"""The spill record format: a header that checks and authenticates one serialized value.

Pure helpers shared by the one-file-per-value store and packed segments; they
know nothing of keys' bookkeeping. Layout::

    magic "SPK\\0" | version | name length | body length | CRC-32 of the signed prefix
    | length of the body's signed prefix | HMAC-SHA256 | name | zero padding to 64 | body

The name (the file's, or the record's in a segment) makes a record moved into
another key's place recognisable. The HMAC covers the fixed fields, the name
and every byte of the body: the signed prefix (for pickles, the stream, the
part that runs code when loaded) as it is, and the rest (out-of-band array
buffers) through a keyed digest (:mod:`spillkit.bodymac`: GHASH, 14x the speed of
HMAC-SHA256, which over every byte would cost more than writing them),
so that a file changed without the directory's key is refused, whatever part
changed (an array buffer too: its CRC alone could be kept by anyone). The
CRC-32 of the signed prefix tells damage there from forgery when the HMAC refuses
a record, and is taken only then on a load; a write that checks the value did not
change meanwhile (``verify``) compares the whole tag. Padding keeps out-of-band
buffers 64-byte aligned.
"""

from __future__ import annotations

import errno
import hmac
import mmap
import os
import struct
from collections.abc import Callable, Sequence
from typing import Any

from .bodymac import AVAILABLE, DIGEST_FROM, body_digest
from .codecs import Codec
from .regularfile import SAFE_OPEN, ensure_regular
from .security import sign

try:  # the same CRC-32 as zlib's (files are interchangeable), about 13x faster
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - depends on the optional "fast" extra
    from zlib import crc32

__all__ = [
    "HEADER_SIZE",
    "PAD",
    "RecordError",
    "body_crc",
    "claimed_crc",
    "crc32",
    "encode_header",
    "is_spill_file",
    "names_record",
    "open_record",
    "privatize_prefix",
    "still_encodes",
]

_FIXED = struct.Struct("<4sBxHQIQ")
_MAC_BYTES = 32
HEADER_SIZE = _FIXED.size + _MAC_BYTES  # before the name
_MAGIC = b"SPK\x00"
_VERSION = 3  # 3: the HMAC covers every byte of the body, large frames through a digest (spillkit.bodymac)
PAD = 64


class RecordError(ValueError):
    """A record failed a check; the message says which (the caller adds the key and place)."""


def body_crc(frames: Sequence[Any]) -> int:
    """The CRC-32 of the body made of ``frames``, as a header records it."""
    crc = 0
    for frame in frames:
        crc = crc32(frame, crc)
    return crc


def claimed_crc(header: bytes) -> int:
    """The body CRC that a header made by :func:`encode_header` records."""
    return int(_FIXED.unpack_from(header, 0)[4])


def encode_header(name: str, frames: Sequence[Any], codec: Codec, secret: bytes) -> tuple[bytes, int, bytes]:
    """Return ``(header, body length, tag)`` for the body made of ``frames``."""
    signed_frames = getattr(codec, "signed_frames", None)
    signed_count = len(frames) if signed_frames is None else signed_frames(frames)
    sizes = [memoryview(frame).nbytes for frame in frames]
    while signed_count < len(frames) and sizes[signed_count] < PAD:  # the padding before an array buffer too:
        signed_count += 1  # the digest then takes a lone buffer in one call
    body_len = sum(sizes)
    signed_len = sum(sizes[:signed_count])
    if not AVAILABLE or body_len - signed_len < DIGEST_FROM:
        signed_count, signed_len = len(frames), body_len  # all under the HMAC: cheaper than a digest, or no digest
    crc = body_crc(frames[:signed_count])  # the signed prefix's: the digest covers the rest, at the CRC's speed
    encoded_name = name.encode("utf-8")
    fixed = _FIXED.pack(_MAGIC, _VERSION, len(encoded_name), body_len, crc, signed_len)
    rest = [body_digest(secret, frames[signed_count:])] if signed_len < body_len else []
    tag = sign(secret, fixed, encoded_name, *frames[:signed_count], *rest)
    header = fixed + tag + encoded_name
    return header + bytes(-len(header) % PAD), body_len, tag


def still_encodes(
    name: str | None, tag: bytes | None, value: Any, codec: Codec, secret: bytes, read_back: Callable[[], Any]
) -> bool:
    """True when the record named ``name`` with HMAC ``tag`` still stands for ``value`` (not changed in place since).

    ``value`` is encoded again: the same tag means the same bytes. Otherwise the record
    may still hold this value, written from an object that pickles another way than its
    copies read back (numpy pickles a non-contiguous array in-band, its contiguous copy
    out of band): the record is read back (``read_back()``) and encoded again to compare.
    Costs an encode and a pass of the keyed digest over the value, and that read only when the first comparison
    fails; never raises. A record without a name or tag, a value that no longer encodes,
    or a record that cannot be read back (damaged: writing the value again heals it)
    does not stand for it, and the caller writes the value again.
    """
    if name is None or tag is None:
        return False
    try:
        now = encode_header(name, list(codec.encode(value)), codec, secret)[2]
        if hmac.compare_digest(now, tag):
            return True
        stored = encode_header(name, list(codec.encode(read_back())), codec, secret)[2]
    except Exception:
        return False
    return hmac.compare_digest(now, stored)


def names_record(head: bytes, name: str) -> bool:
    """True when ``head`` (the start of a file) is a record header written under ``name``."""
    if len(head) < HEADER_SIZE:
        return False
    magic, _version, name_len, _body, _crc, _signed = _FIXED.unpack_from(head, 0)
    encoded = name.encode("utf-8")
    return bool(magic == _MAGIC and name_len == len(encoded) and head[HEADER_SIZE : HEADER_SIZE + name_len] == encoded)


def open_record(data: memoryview, name: str, secret: bytes, expected_tag: bytes | None) -> memoryview:
    """Check the record that fills ``data`` exactly and return a view of its body.

    Raises RecordError, in this order: not a record (or of another format version), someone
    else's record, wrong length, damaged (CRC) or not signed with ``secret`` (the HMAC covers
    every byte; the CRC is taken only when it refuses, to say which), an older version of the record.
    """
    if len(data) < HEADER_SIZE:
        raise RecordError("the file is truncated")
    magic, version, name_len, body_len, crc, signed_len = _FIXED.unpack_from(data, 0)
    if magic == _MAGIC and version == 2:
        # Array data of format 2 had the CRC only, which anyone who can write the file keeps: not read
        # (helper-87: read, such records stayed so for good, and a manifest put back restored them).
        raise RecordError(
            "a spill file of format 2 (spillkit before 2026-11-27): its array data cannot be authenticated"
        )
    if magic != _MAGIC or version != _VERSION:
        raise RecordError("not a spillkit spill file of this version")
    expected_name = name.encode("utf-8")
    if name_len != len(expected_name):  # (a damaged length would quote the body as a name)
        raise RecordError(f"the header names a key file of {name_len} bytes, not this one's {len(expected_name)}")
    encoded_name = bytes(data[HEADER_SIZE : HEADER_SIZE + name_len])
    if encoded_name != expected_name:
        shown = encoded_name.decode("utf-8", "replace")
        raise RecordError(f"the file belongs to {shown[:100]!r}{'...' if len(shown) > 100 else ''}")
    start = HEADER_SIZE + name_len
    start += -start % PAD
    if len(data) != start + body_len or signed_len > body_len:
        raise RecordError(f"expected {start + body_len} bytes, found {len(data)}")
    body = data[start:]
    tag = bytes(data[_FIXED.size : HEADER_SIZE])
    if signed_len < body_len and not AVAILABLE:
        raise RecordError("its array data is authenticated by a digest that needs the cryptography package")
    rest = [body_digest(secret, [body[signed_len:]])] if signed_len < body_len else []
    if not hmac.compare_digest(tag, sign(secret, data[: _FIXED.size], encoded_name, body[:signed_len], *rest)):
        if crc32(body[:signed_len]) != crc:  # (taken only now: it tells damage to the prefix from forgery)
            raise RecordError("checksum mismatch")
        raise RecordError(
            "authentication failed: the file is damaged, or was not written by this Chest (tampered or foreign)"
        )
    if expected_tag is not None and not hmac.compare_digest(tag, expected_tag):
        raise RecordError("the file is an older or other version of this key's value")
    return body


def privatize_prefix(data: memoryview) -> None:
    """Give a copy-on-write mapping of a record its own copy of the header and signed prefix.

    Until the process writes to a page of a ``MAP_PRIVATE`` mapping, the page is the
    file's, and whoever writes the file changes it: between the HMAC's check and the
    unpickling, a pickle stream could be swapped for one that runs code (helper-84 did,
    with a second process). Writing one byte of each page back copies it. The body after
    the prefix (array data) stays shared: see :mod:`spillkit.mapped`. A record too short
    to parse is left as it is (:func:`open_record` refuses it).
    """
    if len(data) < _FIXED.size:
        return
    data[0] = data[0]  # the first page (the lengths below) copied first: read from the file's, they could change
    _magic, _version, name_len, _body, _crc, signed_len = _FIXED.unpack_from(data, 0)
    start = HEADER_SIZE + name_len
    end = min(len(data), start + (-start % PAD) + signed_len)
    for offset in range(0, end, mmap.PAGESIZE):  # (a mapping starts on a page: each page below end)
        data[offset] = data[offset]  # the first write to a page copies it


def is_spill_file(full: str, name: str) -> bool:
    """True when ``full`` starts like a spill file written under ``name`` (used to clean up after a crash).

    Raises the ``OSError`` of a file that is there but cannot be read (the disk,
    permissions): whether it is a leftover is then unknown.
    """
    try:
        length = HEADER_SIZE + len(name.encode("utf-8"))
    except UnicodeEncodeError:  # a name os.listdir could only surrogate-escape: no spill file's (they are ASCII)
        return False
    try:
        fd = ensure_regular(os.open(full, os.O_RDONLY | SAFE_OPEN), full)
    except OSError as error:  # gone, a link, or no regular file: not a spill file
        if isinstance(error, FileNotFoundError) or error.errno in (errno.ELOOP, errno.EINVAL):
            return False
        raise
    try:
        head = os.pread(fd, length, 0)
    finally:
        os.close(fd)
    return names_record(head, name)
