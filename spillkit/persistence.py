"""A Chest's durability path: flush and manifest commit.

:func:`flush` writes every value and commits a signed key manifest (the
rewrite of records a failed fsync left untrusted, and the commit on a full
disk into the room of :mod:`spillkit.reserve`, included);
:mod:`spillkit.closing` ends a Chest with a last flush, and
:mod:`spillkit.reopen` adopts the manifest of an earlier flush when a Chest
opens its ``path``. :class:`~spillkit.chest.Chest` keeps the public
methods and their documentation and calls these. The guarantees are in
docs/durability.md.

These are functions of the Chest, not methods of an object the Chest owns, on
purpose (as in :mod:`spillkit.transfers`): a helper holding a reference back
to its Chest would make every Chest a reference cycle, so a dropped Chest's
values and its directory lock would stay until the cyclic garbage collector
ran instead of being freed at once.

Thread-safety: :func:`flush` takes the engine's lock;
:func:`commit_manifest`, :func:`rewrite_unsynced` and
:func:`drop_unsynced_in_memory` expect it held.
"""

from __future__ import annotations

import os
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from .errors import SpillError
from .holes import disk_full
from .keys import describe_key, unfindable_key
from .manifest import ManifestEntry, is_plain, pickle_key, write_manifest
from .reopen import file_names, manifest_rows
from .reserve import keep

if TYPE_CHECKING:
    from .chest import Chest

__all__ = ["commit_manifest", "drop_unsynced_in_memory", "flush", "rewrite_unsynced"]


def flush(chest: Chest, closing: bool = False) -> None:
    """Write every value to disk plus an atomic key manifest: :meth:`~spillkit.chest.Chest.flush`.

    ``closing``: called by :func:`close`, which has marked the engine closed already.
    """
    if not closing:
        chest._check_open()
    if os.getpid() != chest._owner_pid:
        # A forked child's copy shares its parent's directory but not its parent's state: a manifest
        # committed from here would name the child's keys and drop files the parent still needs.
        raise SpillError(
            f"this Chest at {chest._path!r} belongs to process {chest._owner_pid}, which forked this one; "
            "a forked child cannot flush it (open a Chest of its own on another path instead)"
        )
    committed_without: list[tuple[Hashable, BaseException]] | None = None  # by an early commit, the keys left out
    with chest._engine.lock:
        if not closing:
            chest._check_open()  # again: closed while this thread waited for the lock (then the path may be another's)
        try:
            chest._engine.wait_for_writes()  # a write in flight may replace an unsynced record
            if not closing:
                chest._check_open()  # and again: the wait lets go of the lock
            chest._store.inner._spares.clear()  # their room first: a flush may need every byte of the disk
            failures = rewrite_unsynced(chest)
            failures += chest._engine.write_all()  # values only in memory too: a flush must hold every key
            if chest._store.held_for_manifest and any(disk_full(error) for _, error in failures):
                # The files and records kept for the previous flush may be what fills the disk: commit
                # what is written (which frees them), then write the rest.
                failures += commit_manifest(chest)
                committed_without = failures
                failures = rewrite_unsynced(chest)
                failures += chest._engine.write_all()
            failures += commit_manifest(chest)
        except OSError as error:
            # If an fsync failed, values still in memory let go of their untrusted records now:
            # an eviction before the next flush then writes them anew instead of dropping the
            # only copy known to be right.
            drop_unsynced_in_memory(chest)
            if committed_without is None:
                raise  # before any commit: the previous committed state is intact
            # After the early commit, that state is the committed one now, and the keys it left out are
            # not in it: as when the flush ends with values it could not write (below), not "intact".
            error.add_note("spillkit: raised after the flush had committed every value written before the disk filled")
            failures = [(key, error) for key, _ in committed_without]
    chest._flush_failures = tuple(failures)
    if failures:
        keys = ", ".join(describe_key(k) for k, _ in failures[:5])
        first = failures[0][1]
        raise SpillError(f"flush could not write {len(failures)} value(s), keys {keys} (first: {first})") from first
    if chest._engine.notes.waiting:  # what the disk tier noted (spillkit.notes), the flush done
        chest._engine.notes.report()


def rewrite_unsynced(chest: Chest) -> list[tuple[Hashable, BaseException]]:
    """Give every record a failed fsync left untrusted a new copy; return the keys that could not get one.

    A failed fsync may have dropped the dirty pages (Linux marks them clean and reports the
    error once), so the bytes on disk are unknown and a retried fsync proves nothing. A value
    still in memory loses its record (here, or already when the fsync failed) and ``write_all``
    writes it again from memory; one only on disk is read back with its CRC and HMAC checked
    (the page cache usually still holds the right bytes) and written to a new file or the
    active segment, fsynced by the flush. A key that fails (its copy fails the checks, or the
    disk refuses) stays listed by ``unsynced_keys``, out of the manifest, and is tried again
    by the next flush.
    """
    store = chest._store
    drop_unsynced_in_memory(chest)
    failures: list[tuple[Hashable, BaseException]] = []
    for key in store.unsynced_keys():
        try:
            store.write(key, store.read(key))
        except Exception as error:
            failures.append((key, error))
    return failures


def drop_unsynced_in_memory(chest: Chest) -> None:
    """Drop the untrusted record of each value in memory: ``write_all`` or an eviction writes it anew."""
    for key in chest._store.unsynced_keys():
        if key in chest._engine.memory:
            chest._store.delete(key)


def commit_manifest(chest: Chest) -> list[tuple[Hashable, BaseException]]:
    """Commit a signed manifest naming every key whose bytes are known to be on disk (the flush's commit point).

    Returns the keys left out because they cannot be pickled, each with its error.
    """
    engine, store = chest._engine, chest._store
    unsynced = set(store.unsynced_keys())  # their bytes are not known to be on disk: never named
    entries: list[ManifestEntry] = []
    unsaved: list[tuple[Hashable, BaseException]] = []
    names_of = store.names()
    for key in list(engine._nbytes):  # the Chest's order (insertion, as a dict's), which a reopen restores
        if key not in engine._nbytes:  # iterated, not found: its hash or == changed since it was stored
            unsaved.append((key, unfindable_key()))
            continue
        name = names_of.get(key)
        if name is None or key in unsynced:
            continue
        try:
            blob = None if is_plain(key) else pickle_key(key)  # made here, so an unpicklable key is left out
        except Exception as error:  # the key's own fault: its value cannot outlive this Chest
            unsaved.append((key, _unpicklable(error)))
            continue
        segment, offset = store.location(key)
        row = (store.file_bytes(key), engine.nbytes(key), engine.given_cost(key), store.tag(key), segment, offset)
        entries.append(ManifestEntry(key, name, *row, blob))
    rows = manifest_rows(entries)
    names = file_names(entries)
    if not unsaved and same_rows(rows, chest._committed) and not store.retained:  # the manifest on disk says all this
        store.protect(names)  # (no change: it only retries files an unlink failed to remove)
        if chest._reserve is not None and chest._reserve.failed:
            keep(chest._reserve, None, engine.stats)  # and the reserve is short since a failure: try again
        return unsaved  # (and a directory that can only be read can be closed)
    store.protect(names, add=True)  # if the commit fails half-way, either manifest may be on disk
    try:
        size = write_manifest(chest._path, entries, chest._secret, sync_parent=not chest._flushed)  # the commit point
    except OSError as error:
        if not disk_full(error):
            raise
        try:
            size = _commit_on_a_full_disk(chest, entries, names, error)
        except OSError as failed:
            keep(chest._reserve, None, chest._engine.stats, failed)  # the reserve may be gone: hold its room again
            raise
    chest._flushed = True
    chest._committed = rows
    store.protect(names)  # and only now remove what the previous manifest needed and this one does not
    keep(chest._reserve, size, chest._engine.stats)  # room for the next manifest (made at the first flush)
    return unsaved


def same_rows(rows: list[tuple[Any, ...]], committed: list[tuple[Any, ...]] | None) -> bool:
    """True when the manifest ``committed`` says what ``rows`` say, key by key (False when in doubt).

    Keys of different types never match: ``==`` between them may raise, as a numpy scalar's against a
    tuple does (an array of answers), and a flush then failed, and a close lost the Chest's changes
    (helper-96). Any key whose ``==`` raises counts as changed: the manifest is written anew.
    """
    if committed is None or len(rows) != len(committed):
        return False
    try:
        return all(type(new[0]) is type(old[0]) and bool(new == old) for new, old in zip(rows, committed, strict=True))
    except Exception:
        return False


def _unpicklable(error: Exception) -> TypeError:
    problem = TypeError(f"its key cannot be pickled, so no manifest can name it ({error!r})")
    problem.__cause__ = error
    return problem


def _commit_on_a_full_disk(chest: Chest, entries: list[ManifestEntry], names: list[str], error: OSError) -> int:
    """The manifest found no room: write it into the reserve's; free the previous flush's files only if that fails."""
    if chest._reserve is not None and chest._reserve.release():
        try:  # nothing the previous manifest needs was freed: a crash from here on leaves it whole
            return write_manifest(chest._path, entries, chest._secret, sync_parent=not chest._flushed)
        except OSError as again:
            if not disk_full(again):
                raise
            error = again
    if not chest._store.retained:
        raise error
    # Still no room (no reserve, or this manifest outgrew it): the files kept for the previous flush
    # are the only room left. Free them and commit once more; a crash in between loses those keys' old values.
    chest._store.protect(names)
    try:
        return write_manifest(chest._path, entries, chest._secret, sync_parent=not chest._flushed)
    except BaseException:
        # The previous manifest is still the one on disk, and protect() let go of its records:
        # no hole may be punched over them until a commit succeeds.
        chest._store.holes_held = True
        raise
