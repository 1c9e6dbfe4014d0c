"""A keyed digest of a record's large frames, for its HMAC to cover at the speed of a CRC.

The record's HMAC-SHA256 (:mod:`spillkit.spillfile`) covers its header and its codec's
signed frames (pickle's stream: the part that runs code when loaded). Array buffers after
them used to be covered by the header's CRC-32 only, which anyone who can write the file
can recompute: a changed buffer then loaded silently, and a changed index array (pandas'
categorical codes) made later indexing read out of bounds and crash the process. HMAC-SHA256
over every byte runs at 1.5 GB/s here, slower than writing them; GHASH, the universal hash
of AES-GCM, runs at 21 GB/s (OpenSSL with carry-less multiply): as fast as isal's CRC-32 on
data out of the CPU's caches, 2.6x slower on data in them (48 against 18 µs per MiB), which
a value just read or written is. Measured in ``bench_core``'s spill-then-load of 1 MiB arrays,
alternating runs of the commit before and after this module came in: about 10% more time (the
numbers are in the message of commit b6eeef9; ``benchmarks/README.md`` holds single runs).

:func:`body_digest` is GMAC (AES-GCM with no plaintext) of the frames under a key derived
from the directory's secret, with a constant nonce. That is safe here because the digest is
never stored nor shown: it only goes into the record's HMAC, so nothing reveals the hash key,
and changing the frames without it matches the digest with odds of about 2^-128 per try.

Thread-safe (no shared mutable state but a cache of derived keys, under a lock). Without the
``cryptography`` package, :data:`AVAILABLE` is False and records sign every byte with the
HMAC instead (as secure, slower).
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Sequence
from typing import Any

try:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError:  # pragma: no cover - cryptography is a dependency; without it every byte is HMAC'd
    AVAILABLE = False
else:
    AVAILABLE = True

__all__ = ["AVAILABLE", "DIGEST_FROM", "body_digest", "forget"]

DIGEST_FROM = 64 * 1024  # smaller remainders are HMAC'd as they are: a digest costs ~10 µs to set up
_NONCE = bytes(12)  # constant: the digest stays inside the HMAC (see the module's docstring)
_CALL_LIMIT = 1 << 30  # bytes given to cryptography at once: it refuses (or panics on) 2 GiB and more


# secret -> (derived key, its one-shot cipher): deriving costs ~10 µs per record otherwise. At most
# _KEEP, the oldest dropped first; a closed persistent Chest's secret is dropped at once (forget).
_keys: dict[bytes, tuple[bytes, Any]] = {}
_keys_lock = threading.Lock()
_KEEP = 64


def _derived(secret: bytes) -> tuple[bytes, Any]:
    found = _keys.get(secret)
    if found is None:
        key = hmac.digest(secret, b"spillkit record body digest, v3", "sha256")[:16]
        found = (key, AESGCM(key))
        with _keys_lock:
            while len(_keys) >= _KEEP:
                del _keys[next(iter(_keys))]
            _keys[secret] = found
    return found


def forget(secret: bytes) -> None:
    """Drop what was derived from ``secret`` (its Chest is closed): no copy of its key outlives it here."""
    with _keys_lock:
        _keys.pop(secret, None)


def body_digest(secret: bytes, frames: Sequence[Any]) -> bytes:
    """The 16-byte keyed digest of the concatenated ``frames`` (no copy).

    Frames may be any C-contiguous buffers (a memoryview of floats too: cryptography takes
    bytes only). Raises RuntimeError without the ``cryptography`` package (see :data:`AVAILABLE`).
    """
    if not AVAILABLE:
        raise RuntimeError("this record's array data is authenticated by a digest that needs the cryptography package")
    views = [_bytes_view(frame) for frame in frames]
    if len(views) == 1 and len(views[0]) <= _CALL_LIMIT:  # one call: a quarter cheaper than a stream
        return bytes(_derived(secret)[1].encrypt(_NONCE, b"", views[0]))
    state = Cipher(algorithms.AES(_derived(secret)[0]), modes.GCM(_NONCE)).encryptor()
    for view in views:
        for start in range(0, len(view), _CALL_LIMIT):  # (one call refuses 2 GiB or more)
            state.authenticate_additional_data(view[start : start + _CALL_LIMIT])
    state.finalize()
    return bytes(state.tag)


def _bytes_view(frame: Any) -> memoryview:
    view = memoryview(frame)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")
