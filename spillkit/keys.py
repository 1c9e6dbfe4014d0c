"""Keys as JSON: tuples, floats and bytes survive the round trip. Pure helpers."""

from __future__ import annotations

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
    """Rebuild a key from :func:`encode_key`'s output (``{"r": ...}`` stays a repr string)."""
    if isinstance(data, (str, int)):
        return data
    if "t" in data:
        return tuple(decode_key(k) for k in data["t"])
    if "f" in data:
        return float(data["f"])
    if "b" in data:
        return bytes.fromhex(data["b"])
    return f"<{data['r']}>"
