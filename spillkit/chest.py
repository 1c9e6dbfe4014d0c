"""``Chest``: a dict that keeps what fits in memory and spills the rest to disk.

The class is the mapping, the constructor and the documentation; its
lifecycle (flush, close, drop) is :class:`spillkit.chest_lifecycle.ChestLifecycle`,
its base class, whose base :class:`spillkit.chest_state.ChestState` holds its
state and the accessors beyond the mapping. The constructor's
body is :func:`spillkit.chest_setup.setup_chest` and the durability path
(flush, manifest, reopen, close, drop) is in :mod:`spillkit.persistence`, both
plain functions of the Chest so that no Chest sits in a reference cycle.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterator, Mapping, MutableMapping
from typing import IO, Any

from .chest_dict import DictMethods
from .chest_lifecycle import ChestLifecycle
from .chest_setup import DEFAULT_AVAILABLE_MEMORY as DEFAULT_AVAILABLE_MEMORY  # re-exported: it was defined here
from .chest_setup import setup_chest
from .codecs import Codec
from .compression import CompressedCodec
from .engine import _MISSING
from .policies import Policy

__all__ = ["Chest"]


class Chest(ChestLifecycle, DictMethods, MutableMapping[Hashable, Any]):
    """A ``MutableMapping`` that keeps values in memory up to ``available_memory``
    bytes and spills the rest to files under ``path``, loading them back on access.

    Parameters
    ----------
    data : mapping, optional
        Initial contents.
    path : str, optional
        Directory for spilled values, created (0700) if missing. If it holds a
        manifest from an earlier ``flush()``, those keys are available again,
        with the values of that flush; spill and temporary files written after
        it (by a process that was killed) are removed. The Chest holds an
        exclusive lock on the directory (``path/.spillkit-lock``, see
        :mod:`spillkit.dirlock`) until it is closed or dropped: a second Chest
        on the same path, in this process or another, raises
        :class:`~spillkit.errors.ChestLocked`. The lock dies with its process,
        so a re-open after a crash is never blocked.
        Without ``path`` a temporary directory is made and removed on close,
        garbage collection or interpreter exit (never by a forked child); one
        left by a killed process is removed by :func:`spillkit.tempdirs.sweep_stale`.
    available_memory : int, float or str, optional
        The memory budget in bytes, e.g. ``1e9`` or ``"512 MiB"`` (default 1 GB).
    dump, load : callables, optional
        A ``dump(obj, file)`` / ``load(file)`` pair such as ``json.dump`` /
        ``json.load``. Default: pickle protocol 5 with out-of-band buffers,
        cloudpickle for lambdas and closures.
    policy : Policy or str, optional
        An eviction policy object or a registered name (``spillkit.policy_names()``:
        ``"lru"``, ``"lfu"``, ``"size"``, ``"cost"``, ``"nextuse"``, ``"lrc"``, ``"fifo"``,
        ``"sieve"``, ``"s3fifo"``, ``"arc"``, ``"cachey"``). Default: a new ``LRU()``. A policy object
        serves one open Chest at a time (ValueError while another uses it);
        once that Chest is closed or dropped it may serve a new one.
    sizeof : callable, optional
        Bytes a value holds in memory. Default: ``dask.sizeof`` if dask is
        installed, else :func:`spillkit.sizeof.deep_sizeof`.
    available_disk : int, float or str, optional
        Cap on bytes on disk; a put that would exceed it raises
        :class:`~spillkit.errors.DiskQuotaExceeded` and stores nothing.
    codec : Codec, optional
        A codec object instead of ``dump``/``load``.
    write_behind : bool, int or str, optional
        Write spilled values on a background thread so that a put returns
        without waiting for pickling and disk. ``True`` caps the bytes of
        evicted values in flight at twice the largest value (at least an
        eighth of the budget); a number or ``"64 MiB"`` sets the cap (``0``:
        off). A value stays readable from memory until its write completes, so memory may
        exceed the budget by up to the cap; callers wait when it is reached.
        A failed background write keeps the value in memory (counted, warned
        about) and never raises into another caller; so does a value changed
        in place during each of three writes (each is checked afterwards).
        Default: off.
    allow_insecure_path : bool, optional
        Use a ``path`` owned by another user or writable by everyone, and a key
        file readable by others (refused by default: whoever can write there
        could make this process load a pickle of their choosing).
    map_loads : bool, int or str, optional
        Load a value whose spill file is at least this large (``True``: 1 MiB)
        by mapping the file copy-on-write instead of reading it into new
        memory: its arrays share the page cache's pages (faster for large arrays:
        ``benchmarks/bench_core.py``'s table in ``benchmarks/README.md``). Writing to the value copies the
        page written, never the file. The file is checked when mapped; whoever
        writes into it afterwards changes the value, and truncating it crashes
        the process on access (``SIGBUS``), as with ``numpy.memmap`` (spillkit
        never does either). A deleted key's disk space is freed only when its
        mapped value is, and counts against ``available_disk`` until then.
        POSIX only. Default: off; :func:`spillkit.dask.spilling` turns it on.
    check_in_place : bool, optional
        Before dropping a resident value for its file (a value loaded or
        flushed, then spilled again), check that the file still encodes it (an
        encode and one pass of the record's keyed digest, about 48 µs per MiB
        here), so that a value changed in place is written anew, not undone.
        Default: on. Turn it off only for values that never change in place and
        take long to pickle (the check pickles them on every such eviction).
    verify_writes : bool, optional
        Take each value's record tag again after writing it, and write it again
        if it changed in place meanwhile (3 tries, then it stays in memory,
        warned about), so that no record fails its own check, even when another
        thread changes a value while a put spills it. ``None`` (default) or
        ``True``: every write; ``False``: none, for values no thread changes in
        place. Costs a pass of the keyed digest per write (spilling and loading
        200 arrays of 1 MiB took 1.08x the time).
    pack_threshold : int, float or str, optional
        Values whose spill record is smaller than this (default 64 KiB) are
        appended to shared segment files instead of getting a file each, so a
        million small values make a handful of files; ``0`` gives every value
        its own file. See :class:`~spillkit.segments.PackedStore`.
    compression : {None, "lz4", "zstd"} or CompressedCodec, optional
        Compress spilled values (needs ``pip install "spillkit[compress]"``);
        ``"zstd:3"`` also sets the level. Each frame of the codec's output (the
        pickle stream, each large array buffer) is compressed only if a 64 KiB
        sample of it shrinks to 90% or less; small and incompressible frames are
        stored raw (and read back without a copy) for the price of that trial,
        about 4 (lz4) or 21 (zstd) CPU microseconds per MiB. Off by default: on
        the benchmark machine (``benchmarks/README.md``) compressible data spilled
        and loaded 1.8-10x slower through the page cache while files shrank to
        0.06-0.8x; only mostly-zero data fsynced and read cold got faster. Turn
        it on to save disk space, or on a disk much slower than the compressor.
        Reopen a ``path`` with compression on if it was written with it (either
        algorithm reads both; a body written without compression is refused).

    Raises
    ------
    ChestLocked
        Another open Chest uses ``path`` (a temporary directory is locked too).
        Raised before anything in the directory is read or changed; the other
        Chest keeps every value. The message names the path and the holder's pid.
    SpillError
        The lock file cannot be created (e.g. a read-only directory), or the
        manifest is damaged; nothing was changed on disk.

    Notes
    -----
    Thread-safe: every operation holds the engine's lock, but a load of a value
    in a file of its own reads, checks and unpickles that file without it (and
    reconciles under it: :mod:`spillkit.unlocked`). ``len``, ``in`` and
    iteration never load from disk and never count as hits.

    Processes: one open Chest per directory, enforced by the lock. A forked
    child's copy of a Chest holds no lock, never removes the directory (nor
    appends to its segments, nor removes or replaces a file its parent made:
    its writes go to new names) and cannot flush (``flush()`` raises
    :class:`~spillkit.errors.SpillError`; ``close()`` shuts the copy and
    commits nothing); the parent's Chest keeps working and keeps the lock.
    Two Chests may use one directory one after the other: close (or drop)
    the first, then open the second.

    Values changed in place: a change made through the object a read returned
    (``chest["k"].append(x)``) is kept while the Chest holds it in memory; when
    it is next spilled or flushed, a value whose file no longer matches it is
    written again (``check_in_place``). A value larger than the whole budget is
    never held: while something holds the object stored or the copy a read
    returned, reads return that object and a flush writes its changes, for
    objects that can be weakly referenced (a list, dict or str over the budget is a
    new copy at each read); once nothing does, an unflushed change is lost with
    it, as with zict. A value changed while it is written
    is written again (``verify_writes``). A change made just as another
    thread's put drops the value from memory (after the check, which runs under
    the lock the change does not take) is lost: with other threads spilling,
    store changes by assigning the key again.

    Failures: a value that cannot be serialized stays in memory (counted and
    warned about) unless it is larger than the whole budget, in which case the
    put raises and stores nothing (inside :meth:`deferred`, as under dask, it
    stays in memory too, warned about). A failed disk write leaves the value in
    memory, tried again once another value's write succeeds; memory may
    exceed the budget until writes work. A damaged spill
    file raises :class:`~spillkit.errors.CorruptSpillFile` naming the key and is
    never unpickled. Files are authenticated (HMAC-SHA256 of the header and
    every byte of the body, array buffers through a keyed digest): a file
    written or changed by anyone without this Chest's secret (a per-process
    secret, or ``path/.spillkit-key`` made 0600 for a persistent Chest) is
    refused the same way. No failure loses another key's value.

    Examples
    --------
    >>> d = Chest(available_memory=40)    # enough space for one Python integer
    >>> d['one'] = 1
    >>> d['two'] = 2
    >>> d['three'] = 3
    >>> d['three']
    3
    >>> sorted(d.keys())
    ['one', 'three', 'two']
    >>> dict(d.inmem)                     # we keep some data in memory
    {'three': 3}
    >>> sorted(os.listdir(d.path))        # the rest is on disk: small values share a segment file
    ['.spillkit-lock', '.spillkit-seg-000001']
    >>> d['one']
    1
    >>> d.close()
    """

    def __init__(
        self,
        data: Mapping[Hashable, Any] | None = None,
        path: str | os.PathLike[str] | None = None,
        available_memory: int | float | str | None = None,
        dump: Callable[[Any, IO[Any]], Any] | None = None,
        load: Callable[[IO[bytes]], Any] | None = None,
        policy: Policy | str | None = None,
        sizeof: Callable[[Any], int] | None = None,
        available_disk: int | float | str | None = None,
        *,
        codec: Codec | None = None,
        allow_insecure_path: bool = False,
        write_behind: bool | int | str = False,
        compression: str | CompressedCodec | None = None,
        pack_threshold: int | float | str | None = None,
        map_loads: bool | int | str = False,
        check_in_place: bool = True,
        verify_writes: bool | None = None,
    ) -> None:
        setup_chest(
            self,
            data=data,
            path=path,
            available_memory=available_memory,
            dump=dump,
            load=load,
            policy=policy,
            sizeof=sizeof,
            available_disk=available_disk,
            codec=codec,
            allow_insecure_path=allow_insecure_path,
            write_behind=write_behind,
            compression=compression,
            pack_threshold=pack_threshold,
            map_loads=map_loads,
            check_in_place=check_in_place,
            verify_writes=verify_writes,
        )

    # ---- the mapping ---------------------------------------------------------------
    def __getitem__(self, key: Hashable) -> Any:
        return self._engine.get(key)

    def __setitem__(self, key: Hashable, value: Any) -> None:
        self._check_open()
        self._engine.put(key, value)

    def __delitem__(self, key: Hashable) -> None:
        self._engine.delete(key)

    def __contains__(self, key: object) -> bool:
        return key in self._engine

    def __len__(self) -> int:
        return len(self._engine)

    def __iter__(self) -> Iterator[Hashable]:
        return self._engine.keys()

    def pop(self, key: Hashable, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value (a spilled value is read, not cached)."""
        return self._engine.pop(key, default)

    def clear(self) -> None:
        """Delete every key without loading any value."""
        self._engine.clear()

    def __repr__(self) -> str:
        return (
            f"Chest(path={self._path!r}, available_memory={self._engine.budget}, "
            f"policy={self._engine.policy!r}, keys={len(self)}, in_memory={len(self._engine.memory)})"
        )

    # ---- beyond a dict -------------------------------------------------------------
    def put(self, key: Hashable, value: Any, cost: float | None = None) -> None:
        """Store ``value`` with its recompute ``cost`` in seconds (for ``CostAware``).

        ``cost`` is a real number (``int``, ``float``, numpy's, ``Fraction``, ``Decimal``; kept as a
        float): anything else raises TypeError and NaN ValueError, naming the key, with nothing stored.
        """
        self._check_open()
        self._engine.put(key, value, cost)
