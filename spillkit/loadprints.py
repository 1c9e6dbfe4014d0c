"""Digests of values loaded from compressed records: the in-place check without compressing again.

Before the engine drops a resident value for its copy on disk, it asks the store whether
the copy still is that value: one changed in place by whoever holds it must be written
again, not lost (:func:`spillkit.spillfile.still_encodes`). That check encodes the value
again, and with compression on, that means compressing it again at every eviction of a
loaded value. Measured here (``/tmp/inplace.py`` in session 16: eight 4 MiB arrays of
float64 counting up, through a 10 MiB Chest, each load evicting a loaded value): lz4
8-load rounds took a median 76.6 ms with the check and 37.4 ms without; zstd 117 ms.

When a record with at least one compressed frame is loaded, the inner codec's frames it
is decoded from are exactly that record's content. A keyed digest of them
(:func:`spillkit.bodymac.body_digest`, about 48 µs per MiB) is kept with the record's tag;
the check then digests the value's inner encoding and compares: no compression. The entry
counts only while the key's current record has that tag (a new record, or a new value,
has another). A different digest means the value changed, or encodes another way than the
record's (a non-contiguous array's contiguous copy read back): either way it is written
again, which is always safe, and a value read back from that record then matches.
Records with nothing compressed are left to the usual check, whose compression attempt
stops after a sample of incompressible data.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Hashable, Sequence
from typing import Any

from . import bodymac
from .codecs import Codec
from .compression import CompressedCodec

__all__ = ["LoadPrints"]


class LoadPrints:
    """Per store: each loaded key's record tag and the digest of the inner frames it was decoded from.

    Thread-safe as far as the stores need: :meth:`decode` runs in reads without the engine's
    lock (one dict assignment), the rest under it. A loaded key's entry lasts until the key is
    deleted (:meth:`forget`) or its record changes (found by :meth:`holds`). Never raises
    beyond what decoding raises; without the ``cryptography`` package (no digest) or without
    compression it only decodes, and :meth:`holds` always answers None (ask the usual check).
    """

    def __init__(self, codec: Codec, secret: bytes) -> None:
        self.codec = codec
        self._compressed = codec if isinstance(codec, CompressedCodec) and bodymac.AVAILABLE else None
        self._secret = secret
        self._prints: dict[Hashable, tuple[bytes, bytes]] = {}

    def decode(self, key: Hashable, tag: bytes | None, body: memoryview) -> Any:
        """Decode ``key``'s record ``body`` (checked, with HMAC ``tag``); keep its digest if it was compressed."""
        compressed = self._compressed
        if compressed is None or tag is None:
            return self.codec.decode(body)
        value, frames = compressed.decode_keeping_frames(body)
        if frames is not None:
            # Before the value reaches anyone who could change it: these are the record's bytes.
            self._prints[key] = (tag, self._digest(frames))
        return value

    def holds(self, key: Hashable, tag: bytes | None, value: Any) -> bool | None:
        """Whether ``value`` encodes as the record with ``tag`` that ``key`` was loaded from; None: not known here."""
        entry = self._prints.get(key)
        if entry is None or self._compressed is None:
            return None
        if tag is None or not hmac.compare_digest(entry[0], tag):
            self._prints.pop(key, None)  # another record since: its value was not loaded
            return None
        try:
            frames = [memoryview(frame) for frame in self._compressed.inner.encode(value)]
            now = self._digest(frames)
        except Exception:
            return False  # written again, where the error is reported (as still_encodes does)
        return hmac.compare_digest(now, entry[1])

    def forget(self, key: Hashable) -> None:
        """The key is gone (deleted, or its record forgotten)."""
        self._prints.pop(key, None)

    def __len__(self) -> int:
        return len(self._prints)

    def _digest(self, frames: Sequence[memoryview]) -> bytes:
        # The frames' lengths first: the same bytes split another way are another encoding.
        lengths = struct.pack(f"<{len(frames)}Q", *(frame.nbytes for frame in frames))
        return bodymac.body_digest(self._secret, [lengths, *frames])
