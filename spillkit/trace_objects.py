"""Tokens for the objects a traced Chest holds, so a replay tells an alias from a copy.

A trace names each object resident keys hold with a small integer (a token), in
``put`` and ``get`` lines: two keys with one token held the same object (a later
put of an object read back under another key is an alias, which a replay keeps
once in memory). A token lasts while some resident key holds its object; ids
of objects no key holds any longer may be reused by Python, so such an object's
next entry gets a new token.
"""

from __future__ import annotations

from collections.abc import Hashable

__all__ = ["ObjectTokens"]


class ObjectTokens:
    """Which token each resident key's object has; O(1) per entry and departure.

    Not thread-safe: the :class:`~spillkit.recorder.TraceRecorder` calls it under its lock. Never raises.

    >>> tokens = ObjectTokens()
    >>> value = object()
    >>> tokens.enter("a", id(value)), tokens.enter("b", id(value))  # one object under two keys
    (1, 1)
    >>> tokens.leave("a"); tokens.leave("b"); tokens.leave("never held")
    >>> tokens.enter("c", id(value))  # no key held it meanwhile: a new token
    2
    """

    def __init__(self) -> None:
        self._token_of_key: dict[Hashable, int] = {}  # resident key -> its object's token
        self._held: dict[int, list[int]] = {}  # id(object) -> [token, resident keys holding it]
        self._object_of_token: dict[int, int] = {}  # token -> id(object), while some key holds it
        self._issued = 0

    def enter(self, key: Hashable, object_id: int) -> int:
        """``key`` now holds the object ``object_id`` in memory; its token."""
        entry = self._held.get(object_id)
        if entry is None:
            self._issued += 1
            entry = self._held[object_id] = [self._issued, 0]
            self._object_of_token[self._issued] = object_id
        entry[1] += 1
        self._token_of_key[key] = entry[0]
        return entry[0]

    def leave(self, key: Hashable) -> None:
        """``key`` no longer holds an object in memory (spilled, deleted, overwritten); a no-op if it held none."""
        token = self._token_of_key.pop(key, None)
        if token is None:
            return
        object_id = self._object_of_token[token]
        entry = self._held[object_id]
        entry[1] -= 1
        if not entry[1]:
            del self._held[object_id]
            del self._object_of_token[token]
