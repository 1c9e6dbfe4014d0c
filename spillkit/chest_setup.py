"""Building a Chest: its arguments checked, its directory, lock, key, store and engine made.

:func:`setup_chest` is the body of :class:`~spillkit.chest.Chest`'s
constructor, whose signature and documentation stay on the class: it parses
the byte sizes, assembles the codec (``dump``/``load``, ``codec``,
``compression``) and the policy, makes or checks the directory, takes its
lock, loads the key, opens the :class:`~spillkit.segments.PackedStore` and the
:class:`~spillkit.engine.SpillEngine`, adopts an earlier flush
(:func:`spillkit.reopen.reopen`) and stores ``data``. If any step raises,
what was opened is closed and the lock released before the error propagates.

A function of the Chest, not an object the Chest owns, so that no Chest sits
in a reference cycle (see :mod:`spillkit.persistence`). The finalizer that
removes a temporary directory holds the path and the owner's pid, never the
Chest.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Callable, Hashable, Mapping
from typing import IO, TYPE_CHECKING, Any

from . import tempdirs
from .codecs import Codec, FuncCodec, PickleCodec
from .compression import CompressedCodec, make_compression
from .dirlock import DirLock
from .engine import SpillEngine
from .manifest import MANIFEST_NAME
from .mapped import DEFAULT_MAP_FROM, map_available, remove_tree
from .policies import Policy, make_policy
from .reopen import reopen
from .reserve import Reserve
from .security import check_directory, load_or_create_key, process_secret
from .segments import DEFAULT_PACK_THRESHOLD, PackedStore
from .sizeof import default_sizeof
from .sizes import parse_bytes

if TYPE_CHECKING:
    from .chest import Chest

__all__ = ["DEFAULT_AVAILABLE_MEMORY", "remove_directory", "setup_chest"]

DEFAULT_AVAILABLE_MEMORY = 10**9  # the original chest's default: 1 GB


def remove_directory(path: str, owner_pid: int, before: list[Callable[[], object]]) -> None:
    # Runs at close, garbage collection or exit; a forked child inherits this
    # finalizer but must never delete its parent's directory. ``before``: the
    # engine's abandon_writes, once it exists (no write may start into the
    # directory being removed).
    if os.getpid() == owner_pid:
        for call in before:
            call()
        remove_tree(path)


def _serves_an_open_chest(policy: Policy) -> bool:
    # A policy holds one Chest's keys, so it serves one open Chest at a time. It keeps a weak reference
    # to that Chest's engine: once the engine is closed (its policy raising or not: the close removes
    # every key from it first), or collected without a close, the policy is free. One still closing is
    # not closed: a flush that fails leaves it open.
    owner = getattr(policy, "_spillkit_bound", None)
    engine = owner() if owner is not None else None
    return engine is not None and (not engine.closed or engine.closing)


def _map_from(map_loads: bool | int | str) -> int | None:
    # The smallest record loaded by mapping its file, or None: read every value.
    if map_loads is False:
        return None
    size = DEFAULT_MAP_FROM if map_loads is True else parse_bytes(map_loads)
    if size < 1:
        raise ValueError(f"map_loads must be True, False or a size of at least 1 byte, got {map_loads!r}")
    return size if map_available() else None


def setup_chest(
    chest: Chest,
    *,
    data: Mapping[Hashable, Any] | None,
    path: str | os.PathLike[str] | None,
    available_memory: int | float | str | None,
    dump: Callable[[Any, IO[Any]], Any] | None,
    load: Callable[[IO[bytes]], Any] | None,
    policy: Policy | str | None,
    sizeof: Callable[[Any], int] | None,
    available_disk: int | float | str | None,
    codec: Codec | None,
    allow_insecure_path: bool,
    write_behind: bool | int | str,
    compression: str | CompressedCodec | None,
    pack_threshold: int | float | str | None,
    map_loads: bool | int | str = False,
    check_in_place: bool = True,
    verify_writes: bool | None = None,
) -> None:
    """Give a new ``chest`` its state from the constructor's arguments (documented on :class:`Chest`)."""
    budget = DEFAULT_AVAILABLE_MEMORY if available_memory is None else parse_bytes(available_memory)
    disk_cap = None if available_disk is None else parse_bytes(available_disk)
    pack = DEFAULT_PACK_THRESHOLD if pack_threshold is None else parse_bytes(pack_threshold)
    map_from = _map_from(map_loads)
    if (dump is None) != (load is None):
        raise TypeError("give both dump and load, or neither")
    if codec is None and dump is not None and load is not None:
        codec = FuncCodec(dump, load)
    if compression is not None:
        codec = make_compression(compression, codec)  # (None: over PickleCodec, the default below, made there)
    if codec is None:
        codec = PickleCodec()
    chosen = make_policy(policy)
    if _serves_an_open_chest(chosen):
        raise ValueError(
            f"{chosen!r} already serves another open Chest; give each Chest its own policy (or close that one first)"
        )
    if len(chosen):  # (a Chest collected without a close never told it its keys left)
        raise ValueError(f"{chosen!r} still ranks {len(chosen)} keys of another Chest; give this Chest a new policy")
    chest._temporary = path is None
    if path is None:
        chest._path = tempdirs.create()  # named after this process, so a sweep can tell when it is stale
        before_removal: list[Callable[[], object]] = []
        chest._finalizer = weakref.finalize(chest, remove_directory, chest._path, os.getpid(), before_removal)
    else:
        given = os.fspath(path)
        if not given:  # abspath("") is the working directory: never a spill directory by accident
            raise ValueError("path is empty: give a directory, or None (the default) for a temporary one")
        chest._path = os.path.abspath(given)
        os.makedirs(chest._path, mode=0o700, exist_ok=True)
        chest._finalizer = None
    chest._owner_pid = os.getpid()
    # Room for the next manifest on a full disk, made at the first flush. Temporary Chests promise
    # nothing across a crash, so they hold no disk space for it.
    chest._reserve = None if chest._temporary else Reserve(chest._path)
    chest._flushed = False  # the first flush also fsyncs the parent directory (the path may be new)
    if not chest._temporary and not allow_insecure_path:
        check_directory(chest._path)
    # Before anything in the directory is read or changed: a second Chest on it stops here (ChestLocked).
    chest._dir_lock = DirLock(chest._path)
    store: PackedStore | None = None
    engine: SpillEngine | None = None
    try:
        if chest._temporary:
            secret = process_secret()
        else:
            secret = load_or_create_key(chest._path, check=not allow_insecure_path, signed=MANIFEST_NAME)
        chest._secret = secret
        chest._store = store = PackedStore(chest._path, codec, disk_cap, secret, pack_threshold=pack, map_from=map_from)
        if write_behind is not True and write_behind is not False:
            write_behind = parse_bytes(write_behind) or False  # no bytes in flight: off, as 0 is for pack_threshold
        chest._engine = engine = SpillEngine(
            store, chosen, budget, sizeof or default_sizeof(), write_behind=write_behind
        )
        engine.check_in_place = bool(check_in_place)
        if not check_in_place:
            store.prints.disable()  # digests for a check that never runs
        engine.notes = store.inner._spares
        if chest._temporary:  # no blank file may be made in the directory once its removal starts
            before_removal.append(store.inner._spares.blanks.close)
        store.verify_writes = verify_writes is not False
        if engine._writer is not None:
            engine._writer.verify = verify_writes is not False
        engine.keepalive = chest._dir_lock  # freed with the engine, not the Chest: its writer may outlive it
        if not chest._temporary:
            reopen(chest)
        elif engine._writer is not None:
            before_removal.append(engine.abandon_writes)
        chosen._spillkit_bound = weakref.ref(engine)  # type: ignore[attr-defined]
        if data is not None:
            chest.update(data)
    except BaseException:
        # The raised error's traceback keeps this half-made Chest alive: close the segments already
        # opened and free the directory now, not whenever the garbage collector gets to it.
        try:
            if engine is not None:
                # Removes from the policy every key ``data`` put there, and closed, frees it for the next
                # Chest. An error here (a policy's own) would hide the one the constructor raises: it goes.
                with contextlib.suppress(Exception):
                    engine.close()
        finally:
            if store is not None:
                store.close()
            chest._dir_lock.release()
        raise
