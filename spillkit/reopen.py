"""Opening a Chest on a directory an earlier Chest flushed: adopt its manifest, remove what a crash left.

:func:`reopen` runs in the constructor (:func:`spillkit.chest_setup.setup_chest`),
before the Chest is shared, so it takes no lock. A damaged or forged manifest
raises before anything is removed; a key whose file is missing, or whose name
something that is no file of ours has taken, is skipped with a warning; any
other error raises with nothing removed. A function of the Chest, as in
:mod:`spillkit.persistence`, so that no helper holds a reference back to it.
"""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Iterable, Set
from typing import TYPE_CHECKING, Any

from .errors import SpillWarning
from .keys import describe_key
from .manifest import ManifestEntry, read_manifest
from .naming import is_own_temporary
from .segfiles import is_segment_name
from .spillfile import is_spill_file
from .tempdirs import warn_left

if TYPE_CHECKING:
    from .chest import Chest
    from .segments import PackedStore

__all__ = ["manifest_rows", "remove_leftovers", "remove_own", "remove_unreferenced_segments", "reopen"]


def reopen(chest: Chest) -> None:
    """Adopt the keys of the last flush's manifest in ``chest.path``; remove what a killed process left."""
    # The manifest first: if it is damaged, raise before anything is removed.
    manifest = read_manifest(chest._path, chest._secret)
    entries = manifest or []
    # Packed records are no files: a file under such a name is a leftover. Segments start with
    # a dot, so remove_leftovers leaves them to remove_unreferenced_segments below. The reserve's name
    # starts with a dot and is no segment's: it stays, for the next flush (see spillkit.reserve).
    remove_leftovers(chest._path, {entry.name for entry in entries if entry.segment is None})
    adopted = []
    foreign = set()  # segment names taken by no file of ours: left alone, not removed as leftovers
    for entry in entries:
        try:
            chest._store.adopt(entry.key, entry.name, entry.file_bytes, entry.tag, entry.segment, entry.offset)
        except OSError as error:
            # Missing, or replaced by no file of ours (a FIFO, a link, a directory): that key (or the
            # segment's keys) is lost, not the directory. Any other error (permissions, the disk, no
            # descriptors left) may pass: raised, with nothing removed and the manifest as it was.
            if not isinstance(error, FileNotFoundError) and error.errno not in (errno.EINVAL, errno.ELOOP):
                raise
            what = "is missing" if isinstance(error, FileNotFoundError) else f"is no regular file ({error!r})"
            if entry.segment is not None and not isinstance(error, FileNotFoundError):
                foreign.add(entry.segment)
            warnings.warn(  # stacklevel: this function, setup_chest, Chest.__init__, then the caller
                f"spill file for key {describe_key(entry.key)} {what}; the key is skipped",
                SpillWarning,
                stacklevel=4,
            )
            continue
        chest._engine.restore(entry.key, entry.nbytes, entry.cost)
        adopted.append(entry)
    chest._store.protect(file_names(adopted))
    if manifest is not None and len(adopted) == len(entries):  # it says what this Chest holds: no flush needs a new one
        chest._committed = manifest_rows(entries)
    remove_unreferenced_segments(chest._store, keep=foreign)  # segments a crash left after the last flush


def remove_unreferenced_segments(store: PackedStore, keep: Set[str] = frozenset()) -> None:
    """Unlink segment files no adopted record points into (left by a crash after the last flush).

    Call once, after adopting a manifest. The names in ``keep`` stay (names the manifest gives
    segments, taken by something that is no file of ours).
    """
    for name in os.listdir(store.path):
        if is_segment_name(name) and name not in store._segments and name not in keep:
            try:
                os.unlink(os.path.join(store.path, name))
            except FileNotFoundError:
                continue
            except OSError as error:
                # As remove_leftovers does for files: garbage that cannot be removed now must not
                # make the committed keys unreachable; the next reopen tries again.
                message = f"could not remove the leftover segment {name!r}: {error!r}"
                warnings.warn(message, SpillWarning, stacklevel=5)  # reopen, setup_chest, Chest(), its caller


def file_names(entries: Iterable[ManifestEntry]) -> list[str]:
    """The names of the entries with a file of their own: what ``protect()`` keeps for a manifest.

    Packed records are kept by their pinned segments instead; their names, among the files'
    protected ones, would keep a file whose name differs from one only in case (helper-61).
    """
    return [entry.name for entry in entries if entry.segment is None]


def manifest_rows(entries: list[ManifestEntry]) -> list[tuple[Any, ...]]:
    """What a manifest says of each key, in order, to tell whether a flush would change it.

    The key's pickle is left out: pickling one key twice need not give the same bytes.
    """
    return [(e.key, e.name, e.file_bytes, e.nbytes, e.cost, e.tag, e.segment, e.offset) for e in entries]


def remove_leftovers(path: str, keep: Set[str]) -> list[str]:
    """Remove what a killed process left in ``path``; return the names removed.

    That is: temporary files of spill and manifest writes that never completed,
    and spill files (recognised by their header, which names the file) that the
    committed manifest does not list, i.e. written after the last flush or
    superseded by it. Other files, and the names in ``keep``, are left alone.
    Call it only after the manifest was read successfully: with a damaged
    manifest nothing can be known to be garbage.
    """
    removed = []
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if is_own_temporary(name):
            leftover = True
        elif name.startswith(".") or name in keep:
            leftover = False
        else:
            try:
                leftover = os.path.isfile(full) and not os.path.islink(full) and is_spill_file(full, name)
            except OSError as error:  # left alone: it may be no file of ours
                message = f"could not read {full!r} to see if it is a leftover: {error!r}"
                warnings.warn(message, SpillWarning, stacklevel=5)  # reopen, setup_chest, Chest(), its caller
                continue
        if not leftover:
            continue
        try:
            os.unlink(full)
        except FileNotFoundError:
            continue
        except OSError as error:
            warnings.warn(f"could not remove the leftover file {full!r}: {error!r}", SpillWarning, stacklevel=5)
            continue
        removed.append(name)
    return removed


def remove_own(path: str) -> None:
    """Remove what spillkit wrote in ``path`` (:meth:`~spillkit.chest.Chest.drop`), then the directory if it is empty.

    Spillkit's own files are its metadata (``.spillkit-*``: lock, key, manifest,
    segments, reserve), its temporary files (:func:`~spillkit.naming.is_own_temporary`)
    and spill files (recognised by their header, which names the file). Anything
    else (a user's files, subdirectories) is left, and so is the directory that
    holds them. What cannot be removed is left and warned about
    (:func:`~spillkit.tempdirs.warn_left`).
    """
    failed: list[tuple[str, BaseException]] = []
    with os.scandir(path) as entries:
        names = [entry.name for entry in entries]
    for name in names:
        full = os.path.join(path, name)
        try:
            ours = name.startswith(".spillkit-") or is_own_temporary(name)
            ours = ours or (not name.startswith(".") and is_spill_file(full, name))
            if ours:
                os.unlink(full)
        except FileNotFoundError:
            continue
        except OSError as error:
            failed.append((full, error))
    try:
        os.rmdir(path)
    except OSError as error:  # not empty: what others put there stays, and the directory with it
        # ENOTDIR: the path is a symbolic link someone made to a directory; both stay.
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.ENOTDIR):
            failed.append((path, error))
    warn_left(path, failed)
