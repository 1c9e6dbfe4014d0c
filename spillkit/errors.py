"""Exceptions and warnings raised by spillkit."""

from __future__ import annotations

__all__ = [
    "CorruptSpillFile",
    "DiskQuotaExceeded",
    "SpillError",
    "SpillWarning",
]


class SpillError(Exception):
    """Base class of every error spillkit raises on its own account."""


class DiskQuotaExceeded(SpillError):
    """Storing a value would push the bytes on disk past ``available_disk``.

    The operation that raised stored nothing; every earlier value is intact.
    """


class CorruptSpillFile(SpillError):
    """A spill file is truncated, damaged, or belongs to another key.

    The file is never unpickled. The key stays in the Chest so the caller can
    decide whether to delete or overwrite it.
    """

    def __init__(self, key: object, path: str, reason: str) -> None:
        super().__init__(f"spill file for key {key!r} at {path!r} is unreadable: {reason}")
        self.key = key
        self.path = path
        self.reason = reason


class SpillWarning(RuntimeWarning):
    """A value could not be spilled; it stays in memory and nothing is lost."""
