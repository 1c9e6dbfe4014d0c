"""The disk side of a replay: size-only values and tier, and the model that prices their I/O in seconds.

:class:`SizeOnlyDisk` is the disk tier :func:`spillkit.replay.replay` gives the
engine: it stores the sizes of the stand-in values it is handed (``_Sized``,
which carry nothing but ``nbytes``) and counts the bytes written and the
writes. :class:`DiskModel` turns such counts into seconds of disk I/O. Both
are re-exported by :mod:`spillkit.replay`.
"""

from __future__ import annotations

import math
import numbers
import pickle
from collections.abc import Callable, Hashable
from dataclasses import dataclass, fields
from typing import Any

from .tracelines import short

__all__ = ["DiskModel", "SizeOnlyDisk", "disk_model_field"]


def disk_model_field(name: str, value: object) -> float:
    """A :class:`DiskModel` field's value as a float; ValueError unless a finite number above 0 (latency: >= 0)."""
    number = math.nan
    if isinstance(value, numbers.Real) and not isinstance(value, bool):  # numpy's and Fraction too (helper-135)
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            number = math.inf
    # bandwidths divide byte counts, so 0 is refused; a latency of 0 (no per-file cost) divides nothing
    if not math.isfinite(number) or number < 0 or (number == 0 and name != "latency"):
        least = "of at least 0" if name == "latency" else "above 0"
        raise ValueError(f"{name} must be a finite number {least}, found {short(value)}")
    return number


@dataclass(frozen=True)
class DiskModel:
    """Seconds of disk I/O: bytes over bandwidth plus a fixed latency per file read or written.

    The defaults are round numbers for a local SSD through the page cache;
    ``spillkit calibrate`` measures the current disk and saves its own.

    Parameters
    ----------
    write_bandwidth, read_bandwidth : float, default 1e9 and 2e9
        Bytes per second written and read.
    latency : float, default 1e-4
        Seconds per file read or written.

    Notes
    -----
    Frozen (assigning a field raises ``dataclasses.FrozenInstanceError``), so safe to share between threads.
    ``ValueError`` at construction for a field that is no finite number above 0 (a latency: at least 0).
    """

    write_bandwidth: float = 1.0e9  # bytes per second
    read_bandwidth: float = 2.0e9
    latency: float = 1.0e-4  # seconds per file operation

    def __post_init__(self) -> None:
        for field in fields(self):  # (before: a bandwidth of 0 passed, and seconds() divided by it)
            disk_model_field(field.name, getattr(self, field.name))

    def seconds(self, written: int, writes: int, read: int, reads: int) -> float:
        """Modelled seconds for that much I/O."""
        return written / self.write_bandwidth + read / self.read_bandwidth + (writes + reads) * self.latency


class _Sized:
    """A stand-in value: only its size matters.

    Weakly referenced like a live value, so the engine can hand one back with no disk read; the replay
    lets it only where the trace says the live run did (a ``reuse`` read).
    """

    __slots__ = ("__weakref__", "nbytes")

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes


def _size(value: Any) -> int:
    return int(value.nbytes)


class SizeOnlyDisk:
    """A disk tier that stores sizes, not bytes (it satisfies the engine's DiskTier protocol).

    ``is_dead(key)`` (optional) tells which keys will never be read again; their
    writes are not counted, as if the integration had skipped them.

    Parameters
    ----------
    is_dead : callable, optional
        Asked at each write; None counts every write.
    costs : dict, optional
        Each key's recompute cost in seconds, used (not copied) as ``costs``: a read adds the key's, or 0.

    Attributes
    ----------
    total_bytes, written, writes, dead_skipped : int
        Bytes held now; bytes and files written and counted; bytes of dead keys' writes not counted.
    recompute_seconds : float
        The costs of the keys read, what rebuilding each loaded value would have cost instead.

    Raises
    ------
    pickle.PicklingError
        From ``write`` of a key marked not :meth:`writable`, before anything changes. ``read`` and ``file_bytes``
        raise KeyError for a key it does not hold; an error of ``is_dead`` propagates once the size is held.

    Notes
    -----
    No lock of its own: the engine calls it with its lock held, as the DiskTier protocol says.
    """

    def __init__(
        self, is_dead: Callable[[Hashable], bool] | None = None, costs: dict[Hashable, float] | None = None
    ) -> None:
        self.total_bytes = 0
        self._sizes: dict[Hashable, int] = {}
        self.is_dead = is_dead
        self.costs = {} if costs is None else costs
        self.written = 0
        self.writes = 0
        self.dead_skipped = 0
        self.recompute_seconds = 0.0  # what rebuilding each loaded value would have cost instead
        # The object the next read is to give back (set by the replay for one request): a live Chest hands
        # back a spilled value that is still alive elsewhere (under another key) instead of a copy.
        self.handing: Any = None
        self._changed: set[Hashable] = set()  # keys whose file no longer holds their value (changed in place)
        self._unwritable: set[Hashable] = set()  # keys whose value the recorded run could not serialize

    def __contains__(self, key: object) -> bool:
        return key in self._sizes

    def has_copy(self, key: Hashable) -> bool:
        return key in self._sizes

    def holds(self, key: Hashable, value: Any) -> bool:
        # Replayed values are sizes: only the trace can say that one changed in place (a ``changed`` line).
        return key in self._sizes and key not in self._changed

    def changed(self, key: Hashable) -> None:
        """The recorded run found ``key``'s value changed in place: its file no longer holds it.

        Until it is written again: a value not in memory now is marked too, for the trace says so
        only when the change is found, after the load that this mark may come before.
        """
        if key in self._sizes:
            self._changed.add(key)

    def writable(self, key: Hashable, writable: bool) -> None:
        """Whether ``key``'s value now (its put's) can be written: the recorded run could not serialize it.

        A write of an unwritable value raises, as pickle did live, so the engine keeps it in memory the same way.
        """
        if writable:
            self._unwritable.discard(key)
        else:
            self._unwritable.add(key)

    def restore(self, key: Hashable, nbytes: int) -> None:
        """Hold a file of ``nbytes`` for ``key`` that was written before the trace began (nothing counted)."""
        self._changed.discard(key)
        self.total_bytes += nbytes - self._sizes.get(key, 0)
        self._sizes[key] = nbytes

    def write(self, key: Hashable, value: Any) -> int:
        if key in self._unwritable:
            raise pickle.PicklingError(f"the recorded run could not serialize the value of {key!r}")
        nbytes = _size(value)
        self._changed.discard(key)
        self.total_bytes += nbytes - self._sizes.get(key, 0)
        self._sizes[key] = nbytes
        if self.is_dead is not None and self.is_dead(key):
            self.dead_skipped += nbytes
            return 0
        self.written += nbytes
        self.writes += 1
        return nbytes

    def read(self, key: Hashable) -> Any:
        self.recompute_seconds += self.costs.get(key, 0.0)
        nbytes, same = self._sizes[key], self.handing
        return same if same is not None and same.nbytes == nbytes else _Sized(nbytes)

    def delete(self, key: Hashable) -> None:
        self._changed.discard(key)
        self.total_bytes -= self._sizes.pop(key, 0)

    def file_bytes(self, key: Hashable) -> int:
        return self._sizes[key]

    def sync(self) -> None:
        return None
