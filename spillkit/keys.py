"""Keys as JSON, and keys in messages. Pure helpers.

Tuples, floats, bytes and ints of any size survive the JSON round trip. Any
key, however hostile (a repr that raises, an int too long for ``str``, a
megabyte string), gets a short description for error messages.
"""

from __future__ import annotations

import reprlib
from collections.abc import Hashable
from typing import Any

__all__ = ["SpelledKey", "decode_key", "describe_key", "encode_key", "spell_key", "unfindable_key"]

# Python refuses str() of ints over 4,300 digits (about 14,000 bits); JSON readers elsewhere choke
# long before. Past this many bits an int key is written, described and hashed in hexadecimal.
BIG_INT_BITS = 1000


def encode_key(key: Hashable) -> Any:
    """JSON-able form of a key; :func:`decode_key` inverts it for str, int, float, bytes and tuples."""
    if isinstance(key, bool) or key is None:
        return {"r": repr(key)}
    if isinstance(key, int) and key.bit_length() > BIG_INT_BITS:
        return {"x": format(key, "x")}
    if isinstance(key, (str, int)):
        return key
    if isinstance(key, tuple):
        return {"t": [encode_key(k) for k in key]}
    if isinstance(key, float):
        return {"f": key}
    if isinstance(key, bytes):
        return {"b": key.hex()}
    return {"r": spell_key(key)}


def decode_key(data: Any) -> Hashable:
    """Rebuild a key from :func:`encode_key`'s output.

    ``None``, ``True`` and ``False`` come back as themselves; any other
    ``{"r": ...}`` (a key of another type) as a :class:`SpelledKey`, equal to no
    str (before, it came back as the string ``"<repr>"``, the same key as a str
    spelt so: helper-106).

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
        if tag == "x" and isinstance(inner, str):
            try:
                return int(inner, 16)  # hexadecimal has no length limit: the base is a power of two
            except ValueError:
                pass
        if tag == "r" and isinstance(inner, str):
            return _CONSTANTS[inner] if inner in _CONSTANTS else SpelledKey(inner)
    raise ValueError(f"not an encoded key: {reprlib.repr(data)}")  # reprlib: bounded, however hostile


_CONSTANTS: dict[str, Hashable] = {"None": None, "True": True, "False": False}


class SpelledKey:
    """A key read back from its spelling only (its type is not one a trace rebuilds).

    Equal only to a SpelledKey of the same spelling and ``occurrence``: a trace reader gives
    two keys spelt alike (a class with a constant ``__repr__``) different occurrences, so
    they stay two keys, as in the recorded run. ``repr`` is the spelling, so a trace written
    again spells it as before. Hashable.

    Parameters
    ----------
    spelling : str
        The key's ``repr`` as the trace wrote it.
    occurrence : int, default 0
        Which key of that spelling this is, counted by the trace reader.

    Attributes
    ----------
    spelling, occurrence
        The constructor's arguments.

    Notes
    -----
    Raises nothing of its own; compared with anything but a SpelledKey, ``==`` is
    ``NotImplemented`` (so False). Immutable by convention (spillkit never assigns its slots
    after the constructor; nothing stops a caller from doing so), so thread-safe to share.
    """

    __slots__ = ("occurrence", "spelling")

    def __init__(self, spelling: str, occurrence: int = 0) -> None:
        self.spelling, self.occurrence = spelling, occurrence

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SpelledKey):
            return NotImplemented
        return (self.spelling, self.occurrence) == (other.spelling, other.occurrence)

    def __hash__(self) -> int:
        return hash((SpelledKey, self.spelling, self.occurrence))

    def __repr__(self) -> str:
        return self.spelling


def spell_key(key: Hashable, _depth: int = 0) -> str:
    """``repr(key)``, or a spelling that does not raise when the repr does.

    An int too long for ``repr`` (anywhere in a tuple) is spelt in hexadecimal; a
    key whose ``__repr__`` raises, or a tuple nested too deep for ``repr``, is spelt
    by its type and id, which is unique while the key lives. Unbounded: for names
    and hashes, not for messages.
    """
    try:
        return repr(key)
    except Exception:  # any key a dict accepts must get a spelling (RecursionError included)
        pass
    if isinstance(key, int):
        return f"0x{key:x}" if key >= 0 else f"-0x{-key:x}"
    if isinstance(key, tuple) and _depth < _SPELL_DEPTH:
        return "(" + "".join(spell_key(item, _depth + 1) + ", " for item in key) + ")"
    return f"<{type(key).__module__}.{type(key).__qualname__} key at {id(key):#x} whose repr raised>"


_SPELL_DEPTH = 32


class _KeyRepr(reprlib.Repr):
    """reprlib, with long ints described by size instead of raising or printing thousands of digits."""

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > BIG_INT_BITS:
            return f"<int of {x.bit_length()} bits>"
        return super().repr_int(x, level)


_DESCRIBE = _KeyRepr()
_DESCRIBE.maxlevel, _DESCRIBE.maxtuple, _DESCRIBE.maxstring, _DESCRIBE.maxlong, _DESCRIBE.maxother = 4, 8, 120, 60, 120


def describe_key(key: Hashable) -> str:
    """A repr of ``key`` for messages: at most a few hundred characters, and never raising.

    >>> describe_key(("x", 0))
    "('x', 0)"
    >>> describe_key(10**5000)
    '<int of 16610 bits>'
    """
    try:
        return _DESCRIBE.repr(key)
    except Exception:
        return f"<{type(key).__qualname__} key whose repr raised>"


def unfindable_key() -> TypeError:
    """The error for a key the Chest's own tables no longer find (a mutable key changed after it was stored)."""
    return TypeError(
        "its key is no longer found by its own hash and ==: it changed after it was stored "
        "(a mutable key), so its value can be neither named nor deleted (and an eviction policy holding it "
        "may stop choosing victims, as a dict's lookups fail)"
    )
