"""Codecs turn a value into byte frames and back; the engine never pickles by hand.

A codec has two methods: ``encode(obj) -> list of buffers`` and
``decode(memoryview) -> obj``. Encoding to frames (instead of writing to a file)
keeps serialization errors apart from disk errors and lets large array buffers
go to the file without a copy.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Callable, Sequence
from typing import IO, Any, Protocol, runtime_checkable

from .picklers import cloud_dumps, dumps

__all__ = ["Codec", "FuncCodec", "PickleCodec"]

Buffer = bytes | bytearray | memoryview


@runtime_checkable
class Codec(Protocol):
    """What the disk tier needs from a serializer. Codecs must be stateless.

    A structural protocol (``isinstance`` checks the three names, not signatures). Failures: what
    ``encode`` raises keeps the value in memory (a put of a value over the whole budget raises it);
    what ``decode`` raises reaches the reader, the key and its file stay (a ``KeyError`` comes as
    :class:`~spillkit.errors.LoadFailed`). Thread-safety: with write-behind, ``encode`` runs on the
    writer thread without the engine's lock while other threads ``decode``.
    """

    name: str

    def encode(self, obj: Any) -> Sequence[Buffer]:
        """Return the frames that, concatenated, are the serialized value."""
        ...

    def decode(self, data: memoryview) -> Any:
        """Rebuild a value from the concatenated frames."""
        ...


_COUNT = struct.Struct("<I")
_LENGTH = struct.Struct("<Q")
_ALIGN = 64  # out-of-band buffers start on 64-byte boundaries, good for SIMD reads


class PickleCodec:
    """Pickle protocol 5 with out-of-band buffers, falling back to cloudpickle.

    Contiguous buffers of at least ``out_of_band_threshold`` bytes (numpy
    arrays, pandas blocks) are written after the pickle stream, unchanged and
    unaligned-copy free; on load they become views into one read buffer.
    Lambdas, closures and interactively defined classes go through cloudpickle,
    whose output plain ``pickle`` loads. Broadcast numpy arrays pickle as the
    elements they hold and load back broadcast (:mod:`spillkit.broadcasts`).
    Thread-safe (stateless): nothing is kept between calls, so an error leaves nothing behind.

    Parameters
    ----------
    out_of_band_threshold : int, default 65536
        Buffers of at least this many bytes go out of band (kept as the attribute of that name).

    Raises
    ------
    Exception
        ``encode``: what pickle raises for values that cannot be serialized (after a
        ``PicklingError``, ``AttributeError`` or ``TypeError`` the value is tried again with
        cloudpickle, whose error propagates). ``decode``: what ``pickle.loads`` raises for a
        damaged stream or a value whose class does not import here.
    ValueError
        ``decode``: ``data`` is too short for its frame count, or the frame lengths it starts
        with do not fit in it (another codec's body, or compressed); ``decode_frames``: the
        frames do not match their header.

    Examples
    --------
    >>> codec = PickleCodec()
    >>> frames = codec.encode({"a": 1})
    >>> codec.decode(memoryview(b"".join(bytes(f) for f in frames)))
    {'a': 1}
    """

    name = "pickle"

    def __init__(self, out_of_band_threshold: int = 64 * 1024) -> None:
        self.out_of_band_threshold = out_of_band_threshold

    def encode(self, obj: Any) -> list[Buffer]:
        buffers: list[memoryview] = []

        def keep(buffer: pickle.PickleBuffer) -> bool:
            view = buffer.raw()
            if view.nbytes < self.out_of_band_threshold:
                return True  # in-band: small buffers are cheaper inside the stream
            buffers.append(view)
            return False

        try:
            stream = dumps(obj, keep)
        except (pickle.PicklingError, AttributeError, TypeError):
            buffers.clear()
            stream = cloud_dumps(obj, keep)
        header = bytearray(_COUNT.pack(len(buffers)))
        header += _LENGTH.pack(len(stream))
        for view in buffers:
            header += _LENGTH.pack(view.nbytes)
        frames: list[Buffer] = [header, stream]
        offset = len(header) + len(stream)
        for view in buffers:
            pad = -offset % _ALIGN
            if pad:
                frames.append(bytes(pad))
            frames.append(view)
            offset += pad + view.nbytes
        return frames

    def signed_frames(self, frames: Sequence[Buffer]) -> int:
        """How many leading frames the disk tier takes as they are: the table and the stream.

        The stream is what runs code when unpickled: the record's HMAC takes it as
        it is, and a mapped load copies it before the check. The out-of-band buffers
        after it are authenticated through a keyed digest (:mod:`spillkit.bodymac`).
        """
        return 2

    def decode(self, data: memoryview) -> Any:
        if len(data) < _COUNT.size:  # (was struct.error, helper-132)
            raise ValueError(f"not a body of this codec: {len(data)} bytes cannot hold its frame count")
        (count,) = _COUNT.unpack_from(data, 0)
        position = _COUNT.size
        if position + (count + 1) * _LENGTH.size > len(data):  # checked first: the loop below would run `count` times
            raise ValueError(
                f"not a body of this codec: its {len(data)} bytes cannot hold the {count + 1} frame lengths "
                "it starts with (written with compression= on, or by another codec?)"
            )
        lengths = []
        for _ in range(count + 1):
            lengths.append(_LENGTH.unpack_from(data, position)[0])
            position += _LENGTH.size
        stream = data[position : position + lengths[0]]
        position += lengths[0]
        buffers = []
        for length in lengths[1:]:
            position += -position % _ALIGN
            buffers.append(data[position : position + length])
            position += length
        if position > len(data):
            raise ValueError("pickle frame lengths exceed the data")
        return pickle.loads(stream, buffers=buffers)

    def stream_span(self, data: memoryview) -> tuple[int, int] | None:
        """Where the pickle stream of ``data`` (a body :meth:`encode` made) lies, if out-of-band buffers follow it.

        ``None`` for a body without such buffers (nothing outlives the decode but the value) or
        one that does not parse. See :func:`spillkit.buffers.release_pages`.
        """
        if len(data) < _COUNT.size:
            return None
        (count,) = _COUNT.unpack_from(data, 0)
        start = _COUNT.size + (count + 1) * _LENGTH.size
        if not count or start > len(data):
            return None
        (length,) = _LENGTH.unpack_from(data, _COUNT.size)
        return (start, start + length) if start + length <= len(data) else None

    def decode_frames(self, frames: Sequence[memoryview]) -> Any:
        """Rebuild a value from the frames ``encode`` returned, each a separate buffer.

        Lets a wrapper that rebuilt some frames (e.g. decompressed them) hand the
        others over as views into its own buffer, so no buffer is copied to join them.
        """
        if len(frames) < 2:
            raise ValueError(f"pickle frames: expected at least 2, got {len(frames)}")
        header, stream = frames[0], frames[1]
        (count,) = _COUNT.unpack_from(header, 0)
        if len(header) != _COUNT.size + (count + 1) * _LENGTH.size:
            raise ValueError("pickle frames: the header frame does not match its buffer count")
        lengths = [_LENGTH.unpack_from(header, _COUNT.size + i * _LENGTH.size)[0] for i in range(count + 1)]
        if len(stream) != lengths[0]:
            raise ValueError("pickle frames: the stream frame does not match the header")
        buffers = []
        index, offset = 2, len(header) + len(stream)
        for length in lengths[1:]:
            pad = -offset % _ALIGN
            index += 1 if pad else 0  # encode put a padding frame here
            if index >= len(frames) or len(frames[index]) != length:
                raise ValueError("pickle frames: a buffer frame does not match the header")
            buffers.append(frames[index])
            index += 1
            offset += pad + length
        if index != len(frames):
            raise ValueError(f"pickle frames: expected {index}, got {len(frames)}")
        return pickle.loads(stream, buffers=buffers)


class _TextOrBytesWriter(io.RawIOBase):
    """A binary sink that also accepts ``str`` (encoded as UTF-8), so text dumpers work."""

    def __init__(self) -> None:
        self.sink = io.BytesIO()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if isinstance(data, str):
            data = data.encode("utf-8")
        return self.sink.write(data)


class FuncCodec:
    """Adapt any ``dump(obj, file)`` / ``load(file)`` pair, as the original chest did.

    The file passed to ``dump`` accepts bytes and str, so ``json.dump`` works
    as well as ``pickle.dump``; ``load`` receives a binary file (``json.load``
    accepts one). ``encode`` raises what ``dump`` raises, ``decode`` what ``load`` raises, unchanged.
    Thread-safe if the functions are: each ``encode`` writes to its own buffer.

    Parameters
    ----------
    dump : callable
        ``dump(obj, file)``, kept as ``self.dump``; ``name`` is its module and name (``json.dump``).
    load : callable
        ``load(file)`` on a binary file, kept as ``self.load``.

    Examples
    --------
    >>> import json
    >>> codec = FuncCodec(json.dump, json.load)
    >>> codec.decode(memoryview(b"".join(codec.encode([1, 2]))))
    [1, 2]
    """

    name = "custom"

    def __init__(self, dump: Callable[[Any, IO[Any]], Any], load: Callable[[IO[bytes]], Any]) -> None:
        self.dump = dump
        self.load = load
        self.name = f"{getattr(dump, '__module__', '') or ''}.{getattr(dump, '__name__', 'dump')}".lstrip(".")

    def encode(self, obj: Any) -> list[Buffer]:
        writer = _TextOrBytesWriter()
        self.dump(obj, writer)  # type: ignore[arg-type]
        return [writer.sink.getbuffer()]

    def decode(self, data: memoryview) -> Any:
        return self.load(io.BytesIO(data))
