"""Exceptions and warnings raised by spillkit."""

from __future__ import annotations

import os
import sys
import warnings

from .keys import describe_key

__all__ = [
    "NOT_THE_VALUES_FAULT",
    "ChangedWhileWritten",
    "ChestLocked",
    "CorruptSpillFile",
    "DiskQuotaExceeded",
    "LoadFailed",
    "NameTaken",
    "SpillError",
    "SpillWarning",
    "WriterUnavailable",
]


class SpillError(Exception):
    """Base class of every error spillkit raises on its own account.

    Also raised as itself, with a message, where no subclass fits (e.g. a
    directory lock the file system cannot take). Takes the arguments of
    ``Exception``.

    Notes
    -----
    Thread-safety: spillkit's errors set their attributes once, in the
    constructor, and never change them.
    """


class DiskQuotaExceeded(SpillError):
    """Storing a value would push the bytes on disk past ``available_disk``.

    Raised by the disk store's quota check before a file is written, with a
    message naming the key and the byte counts; it has no attributes of its
    own. A put that would exceed the cap raises it
    (``Chest(available_disk=...)``).

    Notes
    -----
    The operation that raised stored nothing; every earlier value is intact.
    """


class ChangedWhileWritten(SpillError):
    """A value kept changing in place while it was written, on every attempt.

    Raised when a write's record tag, taken again after writing
    (``verify_writes``, on by default), differs three times in a row: by
    write-behind's writer thread, or by a synchronous write. It has a
    message only, no attributes of its own.

    Notes
    -----
    The write is abandoned and the value stays in memory (counted and warned
    about); the next eviction tries again.
    """


class LoadFailed(SpillError):
    """Decoding a key's value raised ``KeyError``: re-raised as this, from that error.

    A ``KeyError`` out of ``chest[key]`` means "no such key" to every mapping
    method (``get`` would answer its default, ``setdefault`` overwrite the
    stored value). Other errors of a decode pass through unchanged.

    Parameters
    ----------
    key : object
        The key whose value was being loaded.
    error : BaseException
        The ``KeyError`` the decode raised; named in the message (and the
        ``__cause__``, as raised by spillkit), not stored as an attribute.

    Attributes
    ----------
    key : object
        The key whose value failed to load.

    Notes
    -----
    The key and its file stay; the read counts in ``stats.load_failures``.
    """

    def __init__(self, key: object, error: BaseException) -> None:
        super().__init__(f"loading the value of key {describe_key(key)} raised {error!r}")
        self.key = key


class CorruptSpillFile(SpillError):
    """A spill file is truncated, damaged, or belongs to another key.

    Raised by a read of the key from disk when its file is missing, not a
    regular file, longer than what was written, or its record fails its
    check (damaged, moved or forged).

    Parameters
    ----------
    key : object
        The key whose file failed.
    path : str
        The file's path (for a packed value, its segment file's).
    reason : str
        What is wrong with it, in words.

    Attributes
    ----------
    key, path, reason
        The constructor's arguments.

    Notes
    -----
    The file is never unpickled. The key stays in the Chest so the caller can
    decide whether to delete or overwrite it.
    """

    def __init__(self, key: object, path: str, reason: str) -> None:
        super().__init__(f"spill file for key {describe_key(key)} at {path!r} is unreadable: {reason}")
        self.key = key
        self.path = path
        self.reason = reason


class ChestLocked(SpillError):
    """Another open Chest holds the directory, in this process or in another one.

    Raised by ``Chest(path=...)`` before anything in the directory was read or
    changed: the open Chest keeps every value.

    Parameters
    ----------
    path : str
        The directory.
    pid : int or None
        The holder's process id as it recorded it in the lock file, or None
        when that is unknown.
    holder : str or None, default None
        Words for the holder in the message; None: made from ``pid``.

    Attributes
    ----------
    path : str
        The directory.
    pid : int or None
        The holder's process id, or None.
    """

    def __init__(self, path: str, pid: int | None, holder: str | None = None) -> None:
        if holder is not None:
            pass
        elif pid is None:
            holder = "another open Chest (its process is unknown)"
        elif pid == os.getpid():
            holder = f"another open Chest in this process (pid {pid})"
        else:
            holder = f"an open Chest in process {pid}"
        super().__init__(
            f"the directory {path!r} is in use by {holder}; two Chests on one directory would "
            "destroy each other's files. Close that Chest first, or use another path"
        )
        self.path = path
        self.pid = pid


class SpillWarning(RuntimeWarning):
    """A value could not be spilled; it stays in memory and nothing is lost.

    A warning (``RuntimeWarning``), not an error: issued through
    :mod:`warnings`, so filters may silence it or turn it into an error.
    Also warns of other failures that lose nothing, e.g. a listener that
    raised, or a reserve file that could not be removed.
    """


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_caller(message: str) -> None:
    """Warn with a :class:`SpillWarning` that points at the first caller outside spillkit.

    A fixed ``stacklevel`` is right from one call path only (a put, a get, a settle reach the same
    warning through different depths); this walks the stack instead. (Python 3.12's
    ``skip_file_prefixes`` does the same; spillkit supports 3.11.)
    """
    frame = sys._getframe(1)
    level = 2
    while frame.f_back is not None and _inside(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    warnings.warn(message, SpillWarning, stacklevel=level)


def _inside(filename: str) -> bool:
    # spillkit's own frames, and the standard library's between the user and spillkit: the mapping
    # mixins (chest.get, chest.update: "<frozen _collections_abc>") and contextlib's wrappers.
    return filename.startswith(_PACKAGE) or "_collections_abc" in filename or filename.endswith("contextlib.py")


class NameTaken(OSError):
    """A file this Chest did not write has the name a key's new file was to take.

    Raised by the disk store's commit; the name is never chosen again, and the value goes
    under another (at once for a synchronous write, at the next try for a background one).
    An ``OSError`` with ``errno.EEXIST``, the message, and the file's path as ``filename``;
    no attributes of its own.
    """


class WriterUnavailable(SpillError):
    """A background write never made: no writer thread could start to make it (the value's file is not at fault).

    Each queued background write fails with it: its value is taken back into memory, counted in
    ``stats.writer_errors`` and warned about. A message only, no attributes; its ``__cause__`` is
    the error that stopped the thread starting.
    """


# What a write fails with for another reason than its value: the disk, the quota, a value that kept
# changing while written, no thread to write it. Anything else it raises is the value's own failure to
# serialize (a SpillError its pickling raised too, e.g. reading from a closed Chest: helper-88).
NOT_THE_VALUES_FAULT = (OSError, DiskQuotaExceeded, ChangedWhileWritten, WriterUnavailable)
