"""The dict methods a ``MutableMapping`` gets wrong for a Chest shared between threads.

``MutableMapping`` builds ``setdefault``, ``popitem``, ``items()`` and ``values()``
out of separate calls (a lookup, then a store; a key list, then a read per key).
On a Chest that other threads change meanwhile, those calls interleave with
theirs: two ``setdefault`` calls both stored their default, ``popitem`` read a
value that another thread had just deleted, and ``dict(chest.items())`` raised
``KeyError`` for a key deleted while it ran. :class:`DictMethods` makes each
one whole, under the engine's lock, or tolerant of deletes made meanwhile.
``dict(chest)`` itself lists the keys and then reads each one (dict's own
code, which a Chest cannot change): a key another thread deletes in between
raises ``KeyError`` there, as it would from ``{k: chest[k] for k in chest}``.
"""

from __future__ import annotations

from collections.abc import Hashable, ItemsView, Iterable, Iterator, KeysView, Mapping, MutableMapping, ValuesView
from typing import TYPE_CHECKING, Any

from .unlocked import live_object

if TYPE_CHECKING:
    from .engine import SpillEngine

__all__ = ["DictMethods"]


def _as_it_is(engine: SpillEngine, key: Hashable) -> Any:
    """The key's value now, counted as no read (the lock held): resident, in flight, alive, or its file's."""
    if key in engine.memory:
        return engine.memory[key]
    writer = engine._writer
    if writer is not None and key in writer.pending:
        return writer.pending[key].value
    live = live_object(engine, key)
    if live is not None:
        return live
    value = engine.disk.read(key)
    engine._refs.remember(key, value)  # not kept, as a load over the budget: while held, it is the value
    return value


class _Keys(KeysView[Hashable]):
    """``chest.keys()``: a dict's view, reversible as a dict's is."""

    _mapping: Mapping[Hashable, Any]

    def __reversed__(self) -> Iterator[Hashable]:
        return reversed(self._mapping)


class _Items(ItemsView[Hashable, Any]):
    """``chest.items()``: keys listed once, each read when reached; a key deleted by then is skipped."""

    _mapping: Mapping[Hashable, Any]

    def __reversed__(self) -> Iterator[tuple[Hashable, Any]]:
        return _present(self._mapping, reversed(self._mapping))

    def __iter__(self) -> Iterator[tuple[Hashable, Any]]:
        return _present(self._mapping, iter(self._mapping))


def _present(mapping: Mapping[Hashable, Any], keys: Iterator[Hashable]) -> Iterator[tuple[Hashable, Any]]:
    """Each of ``keys`` (listed at once) with its value, read when reached; a key deleted by then is skipped."""
    for key in keys:
        try:
            yield key, mapping[key]
        except KeyError:  # deleted since the key list was taken (a LoadFailed is not a KeyError)
            continue


class _Values(ValuesView[Any]):
    """``chest.values()``: as :class:`_Items`, values only."""

    _mapping: Mapping[Hashable, Any]

    def __iter__(self) -> Iterator[Any]:
        for _, value in _Items(self._mapping):
            yield value

    def __reversed__(self) -> Iterator[Any]:
        for _, value in reversed(_Items(self._mapping)):
            yield value

    def __contains__(self, value: object) -> bool:
        return any(v is value or v == value for v in self)


class DictMethods:
    """Thread-safe ``setdefault``, ``popitem``, ``items``, ``values``, ``|=`` and ``reversed`` for a Chest.

    Thread-safety: ``popitem`` holds the engine's lock throughout;
    ``setdefault`` stores its default under it (a value it reads from disk is
    read without it, as a get's is); ``items()`` and ``values()`` list the keys at once (as
    ``iter(chest)`` does) and skip those deleted before they are reached,
    where a dict would raise ``RuntimeError``. Failures are those of the
    get, put or pop they are made of. A Chest cannot be copied or pickled:
    it owns a directory and its lock (``TypeError``).
    """

    _engine: SpillEngine

    if TYPE_CHECKING:  # the Chest's and MutableMapping's, later in the method order

        def __getitem__(self, key: Hashable) -> Any: ...

        def __setitem__(self, key: Hashable, value: Any) -> None: ...

    def setdefault(self, key: Hashable, default: Any = None) -> Any:
        """``chest[key]`` if present, else store and return ``default``: one read in the stats, as for a dict.

        A resident or absent key is read (and the default stored) in one step under the lock. A
        value on disk is read as a get reads it, without the lock, so other threads go on meanwhile;
        if another thread deleted the key first, the default is stored under the lock unless the key
        was stored again by then (then that value is read, and the miss is not counted twice).
        """
        engine = self._engine
        with engine.lock:
            if key in engine.memory or key not in engine:  # no disk read: one step, as before
                try:
                    return self[key]  # a hit or a miss in the stats
                except KeyError:  # absent (a value that fails to load raises LoadFailed, not this)
                    self[key] = default
                    return default
        try:
            return self[key]  # on disk: a load, without the lock
        except KeyError:  # deleted meanwhile: this read was a miss
            pass
        with engine.lock:
            if key not in engine:
                self[key] = default
                return default
            # Deleted and stored again meanwhile: the miss counted above is this call's one read
            # (counters only go up: no second one), and the value is taken as it is, uncounted.
            return _as_it_is(engine, key)

    def popitem(self) -> tuple[Hashable, Any]:
        """Remove and return the last key inserted and its value, as ``dict.popitem`` (not cached on the way)."""
        engine = self._engine
        with engine.lock:
            engine._check_open()  # (closed and empty: closed is what to say)
            try:
                key = next(reversed(engine._nbytes))
            except StopIteration:
                raise KeyError("popitem(): the Chest is empty") from None
            return key, engine.pop(key)

    def keys(self) -> KeysView[Hashable]:
        return _Keys(self)  # type: ignore[arg-type]

    def items(self) -> ItemsView[Hashable, Any]:
        return _Items(self)  # type: ignore[arg-type]

    def values(self) -> ValuesView[Any]:
        return _Values(self)  # type: ignore[arg-type]

    def __reversed__(self) -> Iterator[Hashable]:
        with self._engine.lock:
            return iter(list(reversed(self._engine._nbytes)))

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """As ``dict.update``; a mapping's items are taken from its ``items()``.

        So ``Chest(data=other_chest)`` and ``chest.update(other_chest)`` skip a key another thread
        deletes from ``other_chest`` meanwhile (MutableMapping's lists the keys, then reads each one).
        """
        MutableMapping.update(self, other.items() if isinstance(other, Mapping) else other, **kwargs)

    def __ior__(self, other: Mapping[Hashable, Any] | Iterable[tuple[Hashable, Any]]) -> DictMethods:
        self.update(other)
        return self

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError(
            "a Chest cannot be copied or pickled: it owns its directory and that directory's lock; "
            "use dict(chest.items()) for its contents, or Chest(data=chest) for a second Chest"
        )
