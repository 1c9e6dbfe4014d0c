"""The layout of a compressed body: its frame table, and the parser that checks it.

A body :class:`~spillkit.compression.CompressedCodec` writes starts with a
frame table: a header (magic, version, frame count), then per frame its kind
(raw, lz4 or zstd), stored length and raw length, zero-padded to 64 bytes.
This module holds that layout, the limits of how far each algorithm can
expand a frame, :func:`_read_table`, which parses a table and rejects a
malformed one, and :func:`_decompress`, which turns one frame back into its raw
bytes or says why it cannot; :mod:`spillkit.compression` chooses, writes and
reads the frames.
"""

from __future__ import annotations

import importlib
import struct
from types import ModuleType

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


ALGORITHMS = {"lz4": "lz4.block", "zstd": "zstandard"}  # algorithm -> the module it needs


def _import(algorithm: str) -> ModuleType:
    try:
        return importlib.import_module(ALGORITHMS[algorithm])
    except ImportError as error:
        raise ImportError(
            f'compression="{algorithm}" needs the {ALGORITHMS[algorithm].split(".")[0]} package, '
            'which the compress extra installs: pip install "spillkit[compress]"'
        ) from error


def _decompress(algorithm: str, packed: memoryview, raw: int, index: int) -> bytearray:
    """Decompress one frame into a new writable buffer of exactly ``raw`` bytes."""
    module = _import(algorithm)
    try:
        if algorithm == "lz4":
            out: bytearray = module.decompress(packed, uncompressed_size=raw, return_bytearray=True)
        else:
            if module.frame_content_size(packed) != raw:
                raise ValueError("the zstd frame header gives another length")
            out = bytearray(raw)
            with module.ZstdDecompressor().stream_reader(packed, read_across_frames=False) as reader:
                view, got = memoryview(out), 0
                while got < raw and (n := reader.readinto(view[got:])):
                    got += n
                if got != raw or reader.read(1):
                    raise ValueError(f"decompressed to {got} bytes or more")
    except Exception as error:  # the libraries raise their own error types; report them uniformly
        raise ValueError(
            f"compressed body: frame {index} ({algorithm}, {len(packed)} bytes) does not decompress "
            f"to {raw} bytes: {error}"
        ) from error
    if len(out) != raw:
        raise ValueError(f"compressed body: frame {index} ({algorithm}) decompressed to {len(out)} bytes, not {raw}")
    return out
