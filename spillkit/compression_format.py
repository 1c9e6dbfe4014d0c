"""The layout of a compressed body: its frame table, and the parser that checks it.

A body :class:`~spillkit.compression.CompressedCodec` writes starts with a
frame table: a header (magic, version, frame count), then per frame its kind
(raw, lz4 or zstd), stored length and raw length, zero-padded to 64 bytes.
This module holds that layout, the limits of how far each algorithm can
expand a frame, and :func:`_read_table`, which parses a table and rejects a
malformed one; :mod:`spillkit.compression` writes and reads the frames.
"""

from __future__ import annotations

import struct

__all__: list[str] = []  # helpers of spillkit.compression

_KINDS = ("raw", "lz4", "zstd")  # frame kinds, by their number in the table

# magic, version, frame count; then per frame: kind, stored length, raw length;
# zero-padded to 64 bytes so that frames after it keep their alignment.
_HEAD = struct.Struct("<4sB3xI")
_ENTRY = struct.Struct("<BQQ")
_MAGIC = b"SPKZ"
_VERSION = 1
_ALIGN = 64
_LZ4_MAX_INPUT = 0x7E000000  # LZ4_MAX_INPUT_SIZE: lz4's block format refuses larger inputs
_LZ4_MAX_RATIO = 256  # an lz4 block cannot expand more than ~255x (one length byte per 255)
_ZSTD_MAX_RATIO = 1 << 15  # a zstd block of 128 KiB takes at least 4 bytes


def _read_table(data: memoryview) -> tuple[list[tuple[int, int, int]], int]:
    """Parse and check the frame table; return its entries and where the frames start."""
    if len(data) < _HEAD.size or bytes(data[:4]) != _MAGIC:
        raise ValueError("not a compressed spillkit body (no frame table); was it written without compression=?")
    _, version, count = _HEAD.unpack_from(data, 0)
    if version != _VERSION:
        raise ValueError(f"compressed body: frame table version {version} is not supported (expected {_VERSION})")
    start = _HEAD.size + count * _ENTRY.size
    start += -start % _ALIGN
    if start > len(data):
        raise ValueError(f"compressed body: a frame table of {count} frames is longer than the {len(data)} bytes")
    entries = []
    position = inner_offset = 0
    for index in range(count):
        kind, stored, raw = _ENTRY.unpack_from(data, _HEAD.size + index * _ENTRY.size)
        if kind >= len(_KINDS):
            raise ValueError(f"compressed body: frame {index} has unknown kind {kind}")
        if kind == 0 and stored != raw:
            raise ValueError(f"compressed body: raw frame {index} has stored length {stored} != raw length {raw}")
        limit = {1: _LZ4_MAX_RATIO, 2: _ZSTD_MAX_RATIO}.get(kind, 1) * stored + _ALIGN
        if kind and (raw > limit or (kind == 1 and raw > _LZ4_MAX_INPUT)):
            raise ValueError(
                f"compressed body: frame {index} claims {raw} bytes from {stored} {_KINDS[kind]} bytes, "
                "more than the algorithm can expand"
            )
        if kind == 0:
            position += (inner_offset - position) % _ALIGN
        position += stored
        inner_offset += raw
        entries.append((kind, stored, raw))
    if start + position != len(data):
        raise ValueError(
            f"compressed body: the frame table accounts for {start + position} bytes, the body has {len(data)}"
        )
    return entries, start


def stored_frame_ends(table: bytes | bytearray | memoryview) -> list[int]:
    """For each frame a table written by ``CompressedCodec.encode`` lists, how many output frames end with it.

    The output is the table, then each frame stored (raw or compressed), a raw one after
    the zero padding that keeps its alignment, when it needs any; so the ``i``-th frame ends
    the first ``ends[i]`` output frames. The table is one this process just made: unchecked.
    """
    _, _, count = _HEAD.unpack_from(table, 0)
    ends, index, position, inner_offset = [], 1, 0, 0
    for entry in range(count):
        kind, stored, raw = _ENTRY.unpack_from(table, _HEAD.size + entry * _ENTRY.size)
        if kind == 0 and (inner_offset - position) % _ALIGN:
            position += (inner_offset - position) % _ALIGN
            index += 1  # the padding, a frame of its own
        index += 1
        position += stored
        inner_offset += raw
        ends.append(index)
    return ends
