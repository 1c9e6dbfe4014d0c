"""The disk-tier protocols: what :class:`~spillkit.engine.SpillEngine` needs from a disk tier.

Two implementations exist: :class:`~spillkit.storage.DiskStore` (files on disk) and
replay's size-only tier. They live apart from the engine so that a tier can name
its contract without importing the engine.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Protocol

__all__ = ["DiskTier", "StagedDiskTier"]


class DiskTier(Protocol):
    """What the engine needs from a disk tier (a DiskStore, or a size-only tier in replay).

    The engine calls every method with its lock held. A tier's own locks are leaves (a counter, the
    spare files' list): under them it never takes the engine's.
    """

    total_bytes: int

    def __contains__(self, key: object) -> bool: ...
    def has_copy(self, key: Hashable) -> bool: ...  # a trusted record: evicting the key needs no write
    def holds(self, key: Hashable, value: Any) -> bool: ...  # and that record is this value (not changed since)
    def write(self, key: Hashable, value: Any) -> int: ...
    def read(self, key: Hashable) -> Any: ...
    def delete(self, key: Hashable) -> None: ...
    def file_bytes(self, key: Hashable) -> int: ...
    def sync(self) -> None: ...


class StagedDiskTier(DiskTier, Protocol):
    """A disk tier whose writes can be prepared without the engine's lock (for write-behind).

    ``prepare`` runs on the writer thread without the lock; every other method runs under it.
    With ``verify`` it makes sure the record it prepares passes its own checks even if
    the value changes in place meanwhile (its owner keeps it while write-behind writes).
    """

    def reserve(self, key: Hashable) -> str: ...
    def unreserve(self, name: str) -> None: ...
    def prepare(self, key: Hashable, value: Any, name: str, verify: bool = False) -> Any: ...
    def commit(self, prepared: Any) -> int: ...
    def discard(self, prepared: Any) -> None: ...
