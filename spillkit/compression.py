"""Optional lz4 / zstd compression of spilled values, decided frame by frame.

``CompressedCodec`` wraps another codec (pickle by default). Each frame that
codec produces (the pickle stream, each out-of-band array buffer) is stored
raw or compressed on its own: small frames always raw, larger ones only when a
sample of them compresses well, so incompressible data costs one small trial.
The body starts with a frame table, so decoding never depends on settings.

Needs the ``compress`` extra (``pip install "spillkit[compress]"``): lz4 and
zstandard are imported when a codec that uses them is made, never by
``import spillkit``.

The frame table's layout and its parser live in
:mod:`spillkit.compression_format`; this module holds the codec (which frames
to compress, compressing and decompressing them) and :func:`make_compression`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from .codecs import Buffer, Codec, PickleCodec
from .compression_format import (
    _ALIGN,
    _ENTRY,
    _HEAD,
    _KINDS,
    _LZ4_MAX_INPUT,
    _MAGIC,
    _VERSION,
    ALGORITHMS,
    _decompress,
    _import,
    _read_table,  # tests/test_compression.py imports it from here
    stored_frame_ends,
)

__all__ = ["ALGORITHMS", "CompressedCodec", "make_compression"]

_DEFAULT_LEVEL = {"lz4": 0, "zstd": 1}


class CompressedCodec:
    """Compress the frames of another codec with lz4 or zstd, where it pays.

    Parameters
    ----------
    inner : Codec, optional
        The codec whose frames are compressed. Default: a new :class:`PickleCodec`.
    algorithm : {"lz4", "zstd"}
        lz4 is the fast one; zstd compresses more and costs more CPU.
    level : int, optional
        lz4: 0 (default) is the fast mode, 1-12 high-compression levels, negative
        values accelerate. zstd: -7 to 22, default 1.
    min_size : int
        Frames smaller than this are stored raw: they save too little to pay
        for a compressor call. Default 64 KiB.
    sample_size : int
        Bytes of a larger frame compressed first, taken from four spread-out
        places; the frame is compressed only if the sample shrinks to
        ``max_ratio`` or less. Default 64 KiB.
    max_ratio : float
        Compressed size over raw size above which a frame is stored raw
        (checked on the sample, then on the whole frame). Default 0.9.

    Notes
    -----
    Thread-safe: zstd contexts are kept per thread; nothing else is shared.
    Frames stored raw are written and read back without a copy (as views into
    the read buffer), in the position :class:`PickleCodec` aligned them to.
    ``encode`` raises what the inner codec raises. ``decode`` raises
    ``ValueError`` naming what is wrong when the body is not a compressed
    body, its frame table is malformed, or a frame does not decompress to its
    recorded length; it decodes any algorithm it finds in the table, whatever
    ``algorithm`` says. A body written by another codec is rejected, never
    guessed at.

    Examples
    --------
    >>> codec = CompressedCodec(algorithm="lz4")
    >>> frames = codec.encode(bytes(1 << 20))           # a MiB of zeros
    >>> sum(memoryview(f).nbytes for f in frames) < 10_000
    True
    >>> codec.decode(memoryview(b"".join(frames))) == bytes(1 << 20)
    True
    """

    def __init__(
        self,
        inner: Codec | None = None,
        algorithm: str = "lz4",
        level: int | None = None,
        min_size: int = 64 * 1024,
        sample_size: int = 64 * 1024,
        max_ratio: float = 0.9,
    ) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown compression {algorithm!r}; choose one of {sorted(ALGORITHMS)}")
        if not 0.0 < max_ratio <= 1.0:
            raise ValueError(f"max_ratio must be in (0, 1], got {max_ratio!r}")
        self.inner: Codec = PickleCodec() if inner is None else inner
        self.algorithm = algorithm
        self.level = _DEFAULT_LEVEL[algorithm] if level is None else int(level)
        self.min_size = max(int(min_size), 1)
        self.sample_size = max(int(sample_size), 4)
        self.max_ratio = max_ratio
        self.name = f"{algorithm}+{self.inner.name}"
        self._module = _import(algorithm)  # fail now, not at the first spill
        self._local = threading.local()
        try:  # and a level the library refuses: now, not as every value's failure to serialize
            self._compress(memoryview(b"spillkit"))
        except (ValueError, OverflowError, TypeError, RuntimeError) as error:
            raise ValueError(f"{algorithm} refuses compression level {self.level}: {error}") from error

    def __repr__(self) -> str:
        return f"CompressedCodec({self.inner!r}, algorithm={self.algorithm!r}, level={self.level})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its settings: a dask.distributed nanny pickles the worker's data= arguments.
        args = (self.inner, self.algorithm, self.level, self.min_size, self.sample_size, self.max_ratio)
        return (type(self), args)

    # ---- compressors ----------------------------------------------------------------
    def _compress(self, data: memoryview) -> bytes:
        if self.algorithm == "lz4":
            if self.level > 0:
                mode: dict[str, Any] = {"mode": "high_compression", "compression": self.level}
            else:
                mode = {"mode": "fast" if self.level < 0 else "default", "acceleration": max(1, -self.level)}
            return bytes(self._module.compress(data, store_size=False, **mode))
        compressor = getattr(self._local, "compressor", None)
        if compressor is None:  # zstd contexts are not thread-safe: one per thread
            compressor = self._local.compressor = self._module.ZstdCompressor(level=self.level)
        return bytes(compressor.compress(data))

    def _sample(self, frame: memoryview) -> memoryview:
        piece = self.sample_size // 4
        step = (len(frame) - piece) // 3
        return memoryview(b"".join(frame[i * step : i * step + piece] for i in range(4)))

    def _choose(self, frame: memoryview) -> bytes | None:
        """The compressed frame, or None to store it raw."""
        size = len(frame)
        if size < self.min_size or (self.algorithm == "lz4" and size > _LZ4_MAX_INPUT):
            return None
        if size > 2 * self.sample_size:
            sample = self._sample(frame)
            if len(self._compress(sample)) > self.max_ratio * len(sample):
                return None  # incompressible: one sample's worth of work, then raw
        packed = self._compress(frame)
        return packed if len(packed) <= self.max_ratio * size else None

    # ---- the codec ------------------------------------------------------------------
    def encode(self, obj: Any) -> list[Buffer]:
        frames = [memoryview(frame).cast("B") for frame in self.inner.encode(obj)]
        table = bytearray(_HEAD.pack(_MAGIC, _VERSION, len(frames)))
        out: list[Buffer] = [table]
        position = inner_offset = 0  # body offsets after the table, and in the inner codec's output
        for frame in frames:
            packed = self._choose(frame)
            if packed is None:
                pad = (inner_offset - position) % _ALIGN  # keep the inner codec's alignment
                if pad:
                    out.append(bytes(pad))
                out.append(frame)
                table += _ENTRY.pack(0, len(frame), len(frame))
                position += pad + len(frame)
            else:
                out.append(packed)
                table += _ENTRY.pack(_KINDS.index(self.algorithm), len(packed), len(frame))
                position += len(packed)
            inner_offset += len(frame)
        table += bytes(-len(table) % _ALIGN)
        return out

    def signed_frames(self, frames: Sequence[Buffer]) -> int:
        """How many leading frames the record's HMAC takes as they are: the table, and pickle's table and stream.

        Those are what decoding interprets (the stream runs code when unpickled), so a mapped
        load copies them into private pages before its check (:func:`spillkit.spillfile.privatize_prefix`);
        the array buffers after them are authenticated through a keyed digest
        (:mod:`spillkit.bodymac`). Only a :class:`PickleCodec` inside is known to decide by
        position (its first two frames); with any other inner codec every frame is taken as it is.
        """
        if not isinstance(self.inner, PickleCodec):
            return len(frames)
        ends = stored_frame_ends(frames[0])
        count = self.inner.signed_frames([frames[end - 1] for end in ends])
        return ends[count - 1] if 0 < count <= len(ends) else len(frames)

    def decode(self, data: memoryview) -> Any:
        return self.decode_keeping_frames(data)[0]

    def decode_keeping_frames(self, data: memoryview) -> tuple[Any, list[memoryview] | None]:
        """The value, and the inner codec's frames it was decoded from (None when no frame was compressed).

        The frames are what ``self.inner.encode`` gave when the body was written, compressed ones
        decompressed: :mod:`spillkit.loadprints` keeps a digest of them for the in-place check.
        """
        data = data.cast("B") if data.format != "B" else data
        entries, start = _read_table(data)
        if all(kind == 0 for kind, _, _ in entries):
            return self.inner.decode(data[start:]), None  # nothing compressed: the inner body as it was written
        frames: list[memoryview] = []
        position, inner_offset = start, 0
        for index, (kind, stored, raw) in enumerate(entries):
            if kind == 0:
                position += (inner_offset - (position - start)) % _ALIGN
                frames.append(data[position : position + stored])
            else:
                frames.append(memoryview(_decompress(_KINDS[kind], data[position : position + stored], raw, index)))
            position += stored
            inner_offset += raw
        decode_frames = getattr(self.inner, "decode_frames", None)
        if decode_frames is not None:
            return decode_frames(frames), frames  # raw frames stay views into ``data``
        return self.inner.decode(memoryview(bytearray().join(frames))), frames  # one body, as it was encoded


def make_compression(spec: str | CompressedCodec, inner: Codec | None = None) -> CompressedCodec:
    """Turn ``compression=`` into a codec: ``"lz4"``, ``"zstd"``, ``"zstd:3"`` (with a level), or a CompressedCodec.

    ``inner`` is the codec to wrap (default pickle); a ready CompressedCodec
    already names its own, so giving both is a ``TypeError``.
    """
    if isinstance(spec, CompressedCodec):
        if inner is not None:
            raise TypeError("a CompressedCodec already wraps its own codec: pass codec= to it, not to the Chest")
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"compression must be None, a string or a CompressedCodec, not {type(spec).__name__}")
    algorithm, _, level = spec.strip().lower().partition(":")
    if level and not level.lstrip("-").isdigit():
        raise ValueError(f"compression {spec!r}: the level after ':' must be an integer")
    return CompressedCodec(inner, algorithm, int(level) if level else None)
