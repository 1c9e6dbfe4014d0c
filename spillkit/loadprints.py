"""Digests of values loaded from compressed records: the in-place check without compressing again.

Before the engine drops a resident value for its copy on disk, it asks the store whether
the copy still is that value: one changed in place by whoever holds it must be written
again, not lost (:func:`spillkit.spillfile.still_encodes`). That check encodes the value
again, and with compression on, that means compressing it again at every eviction of a
loaded value. Measured here (a scratch script in session 16: eight 4 MiB arrays of float64
counting up, through a 10 MiB Chest, each load evicting a loaded value): lz4 8-load rounds
took a median 76.6 ms with the check and 37.4 ms without; zstd 117 ms. With this module:
46.8 ms and 53 ms; ``benchmarks/bench_compression.py``'s loads of ``ints`` with lz4 went
from 137 ms (at 599304e) to 80 ms (at 5dbf5bf).

When a record with at least one compressed frame is loaded, the inner codec's frames it
is decoded from are exactly that record's content. A keyed digest of them
(:func:`spillkit.bodymac.body_digest`, about 48 µs per MiB) is kept with the record's tag;
the check then digests the value's inner encoding and compares: no compression. The entry
counts only while the key's current record has that tag (a new record, or a new value,
has another). A different digest leaves the answer to the usual check: the value changed,
or it encodes another way than the record's frames (a non-contiguous array's contiguous
copy read back; a set of strings, whose order changes with every unpickling), which the
usual check finds by reading the record back; when it answers "the same", the value's
digest is kept beside the record's, so the next eviction of that object is cheap again
(helper-94), and a value that never encodes the same way twice costs what it did before.
Records with nothing compressed are left to the usual check, whose compression attempt
stops after a sample of incompressible data. Off with
``check_in_place=False`` (nothing would ask), and for a subclass of
:class:`~spillkit.compression.CompressedCodec` that encodes or decodes its own way.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from . import bodymac
from .codecs import Codec
from .compression import CompressedCodec
from .frozen import cannot_change
from .spillfile import still_encodes

__all__ = ["LoadPrints"]


class LoadPrints:
    """Per store: each loaded key's record tag and digests of encodings known to be its value.

    Thread-safe as far as the stores need: :meth:`decode` runs in reads without the engine's
    lock (one dict assignment), the rest under it. A loaded key's entry lasts until the key is
    deleted (:meth:`forget`), a read without the lock finds its record replaced
    (:meth:`forget_record`), the store is cleared, or its record changes (found by
    :meth:`check`). Never raises beyond what decoding raises; without the ``cryptography``
    package (no digest), without compression or after :meth:`disable`, it only decodes, and
    :meth:`check` always leaves the answer to the usual check.
    """

    def __init__(self, codec: Codec, secret: bytes) -> None:
        self.codec = codec
        self._compressed = (
            codec if isinstance(codec, CompressedCodec) and _plain_compressed(codec) and bodymac.AVAILABLE else None
        )
        self._secret = secret
        # key -> (its record's tag, digests of encodings known to be that record's value: the frames, and
        # one the usual check confirmed)
        self._prints: dict[Hashable, tuple[bytes, tuple[bytes, ...]]] = {}

    def disable(self) -> None:
        """Keep no digests (``check_in_place=False``: nothing asks)."""
        self._compressed = None
        self._prints.clear()

    def decode(self, key: Hashable, tag: bytes | None, body: memoryview) -> Any:
        """Decode ``key``'s record ``body`` (checked, with HMAC ``tag``); keep its digest if it was compressed."""
        compressed = self._compressed
        if compressed is None or tag is None:
            return self.codec.decode(body)
        value, frames = compressed.decode_keeping_frames(body)
        if frames is not None:
            # Before the value reaches anyone who could change it: these are the record's bytes.
            known = self._prints.get(key)
            confirmed = known[1][1:] if known is not None and known[0] == tag else ()  # the same record read again
            self._prints[key] = (tag, (self._digest(frames), *confirmed))
        return value

    def holds(
        self, key: Hashable, name: str | None, tag: bytes | None, value: Any, read_back: Callable[[], Any]
    ) -> bool:
        """The store's in-place check: True when ``key``'s record (``name``, ``tag``) still stands for ``value``.

        A value of an immutable built-in type cannot have changed (:mod:`spillkit.frozen`): a
        signed record holds it. Otherwise a known digest answers, or else
        :func:`~spillkit.spillfile.still_encodes` does (and ``read_back()`` may read the record),
        and a "the same" from it is remembered.
        """
        if name is not None and tag is not None and cannot_change(value):
            return True  # (a record without a tag, of an old manifest, is written again, with one)
        known, digest = self.check(key, tag, value)
        if known:
            return True
        same = still_encodes(name, tag, value, self.codec, self._secret, read_back)
        if same:
            self.confirm(key, tag, digest)
        return same

    def check(self, key: Hashable, tag: bytes | None, value: Any) -> tuple[bool, bytes | None]:
        """``(True, _)`` when ``value`` encodes as a digest known for ``key``'s record with ``tag``.

        Otherwise ``(False, digest)``: ask the usual check, and if it finds the value the same,
        hand the digest to :meth:`confirm` (None: nothing to keep).
        """
        entry = self._prints.get(key)
        if entry is None or self._compressed is None:
            return False, None
        if tag is None or not hmac.compare_digest(entry[0], tag):
            self._prints.pop(key, None)  # another record since: its value was not loaded
            return False, None
        try:
            now = self._digest([memoryview(frame) for frame in self._compressed.inner.encode(value)])
        except Exception:
            return False, None  # the usual check meets the error too, and the value is written again
        return any(hmac.compare_digest(now, known) for known in entry[1]), now

    def confirm(self, key: Hashable, tag: bytes | None, digest: bytes | None) -> None:
        """The usual check found ``key``'s value the same as its record with ``tag``: keep its ``digest`` too."""
        entry = self._prints.get(key)
        if digest is not None and tag is not None and entry is not None and entry[0] == tag:
            self._prints[key] = (tag, (entry[1][0], digest))  # the frames' digest, and the latest confirmed

    def forget(self, key: Hashable) -> None:
        """The key is gone (deleted, or its record forgotten)."""
        self._prints.pop(key, None)

    def forget_record(self, key: Hashable, tag: bytes | None) -> None:
        """A read without the lock found the record with ``tag`` no longer ``key``'s: drop its digests."""
        entry = self._prints.get(key)
        if entry is not None and entry[0] == tag:
            self._prints.pop(key, None)

    def clear(self) -> None:
        """Every key is gone."""
        self._prints.clear()

    def __len__(self) -> int:
        return len(self._prints)

    def _digest(self, frames: Sequence[memoryview]) -> bytes:
        # The frames' lengths first: the same bytes split another way are another encoding.
        lengths = struct.pack(f"<{len(frames)}Q", *(frame.nbytes for frame in frames))
        return bodymac.body_digest(self._secret, [lengths, *frames])


def _plain_compressed(codec: CompressedCodec) -> bool:
    # A subclass that encodes or decodes its own way would be bypassed by decode_keeping_frames.
    kind = type(codec)
    return all(
        getattr(kind, name) is getattr(CompressedCodec, name) for name in ("encode", "decode", "decode_keeping_frames")
    )
