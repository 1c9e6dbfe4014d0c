"""A whole write of a disk store: a name reserved, the value prepared under it, committed.

:class:`~spillkit.storage.DiskStore` and the packed store (:mod:`spillkit.packing`) write in
these steps so that the slow one (prepare) can run without the engine's lock; when both
are done in one go, :func:`write_record` does them, for both.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Protocol

from .errors import NameTaken

if TYPE_CHECKING:
    from .storage import PreparedWrite

__all__ = ["write_record"]


class _RecordWriter(Protocol):
    """A store that writes a record in steps: :class:`DiskStore`, and the packed store."""

    def reserve(self, key: Hashable) -> str: ...

    def unreserve(self, name: str) -> None: ...

    def prepare(self, key: Hashable, value: Any, name: str, verify: bool = False) -> PreparedWrite: ...

    def commit(self, prepared: PreparedWrite) -> int: ...


def write_record(store: _RecordWriter, key: Hashable, value: Any, verify: bool) -> int:
    """A whole write of ``store``'s: a name reserved, the value prepared under it, committed; the bytes written.

    A name a file this Chest did not write took (:class:`~spillkit.errors.NameTaken`, at the commit) is
    never chosen again: the write is made once more under another. That ends, since such files are few.
    """
    while True:
        name = store.reserve(key)
        try:
            prepared = store.prepare(key, value, name, verify)
        except BaseException:
            store.unreserve(name)
            raise
        try:
            return store.commit(prepared)
        except NameTaken:
            continue
