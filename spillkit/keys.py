"""Keys as JSON: tuples, floats and bytes survive the round trip. Pure helpers."""

from __future__ import annotations

import reprlib
from collections.abc import Hashable
from typing import Any

__all__ = ["decode_key", "encode_key"]


def encode_key(key: Hashable) -> Any:
    """JSON-able form of a key; :func:`decode_key` inverts it for str, int, float, bytes and tuples."""
    if isinstance(key, bool) or key is None:
        return {"r": repr(key)}
    if isinstance(key, (str, int)):
        return key
    if isinstance(key, tuple):
        return {"t": [encode_key(k) for k in key]}
    if isinstance(key, float):
        return {"f": key}
    if isinstance(key, bytes):
        return {"b": key.hex()}
    return {"r": repr(key)}


def decode_key(data: Any) -> Hashable:
    """Rebuild a key from :func:`encode_key`'s output.

    ``None``, ``True`` and ``False`` come back as themselves; any other
    ``{"r": ...}`` (a key of another type) as the string ``"<repr>"``.

    Raises ``ValueError`` for anything :func:`encode_key` cannot have written.
    """
    if isinstance(data, (str, int)) and not isinstance(data, bool):
        return data
    if isinstance(data, dict) and len(data) == 1:
        ((tag, inner),) = data.items()
        if tag == "t" and isinstance(inner, list):
            return tuple(decode_key(k) for k in inner)
        if tag == "f" and isinstance(inner, (int, float)) and not isinstance(inner, bool):
            return float(inner)
        if tag == "b" and isinstance(inner, str):
            try:
                return bytes.fromhex(inner)
            except ValueError:
                pass
        if tag == "r" and isinstance(inner, str):
            return _CONSTANTS.get(inner, f"<{inner}>")
    raise ValueError(f"not an encoded key: {reprlib.repr(data)}")  # reprlib: bounded, however hostile


_CONSTANTS: dict[str, Hashable] = {"None": None, "True": True, "False": False}
