"""An achievable clairvoyant result beside the bounds: the :class:`Clairvoyant` policy and :func:`belady_size`.

:class:`Clairvoyant` is Belady with the trace's real future (or Belady-Size);
:func:`belady_size` replays a trace with it. Its I/O is at least the lower
bounds of :mod:`spillkit.bounds`, which re-exports both.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from .bound_model import _lifetimes
from .policies.base import Policy
from .replay import ReplayResult, replay
from .trace import Trace

__all__ = ["Clairvoyant", "belady_size"]

NEVER = float("inf")


class Clairvoyant(Policy):
    """Belady with the real future: spill a value never read again, else the one read furthest ahead.

    The future comes through the constructor (the requests replay will
    drive); the policy follows it only through the Policy interface: each
    ``admitted`` or ``touched`` is matched to the key's next put or read of
    that size, which moves "now" forward. Ties go to the largest value.
    ``rank="size"`` is Belady-Size instead: the largest size x distance to
    the next read goes first. That suits miss counts, not bytes: spilling a
    value costs I/O in proportion to its size, so size is no reason to
    prefer it (the ``belady-size`` rows of ``experiments/RESULTS.md`` show its
    I/O beside the other policies'). Not thread-safe; deterministic;
    ``victim`` is O(resident keys).

    Examples
    --------
    >>> ops = [("put", "a", 1, None, 0, 0), ("put", "b", 1, None, 0, 0), ("get", "b", 0, ""), ("get", "a", 0, "")]
    >>> p = Clairvoyant(ops)
    >>> p.admitted("a", 1, 0.0); p.admitted("b", 1, 0.0)
    >>> p.victim()   # a is read after b
    'a'
    """

    name = "belady"

    def __init__(self, requests: Sequence[tuple[Any, ...]], rank: str = "distance") -> None:
        if rank not in ("size", "distance"):
            raise ValueError(f"rank must be 'distance' or 'size', not {rank!r}")
        self.rank = rank
        if rank == "size":
            self.name = "belady-size"  # type: ignore[misc]
        self._future: dict[Hashable, list[tuple[int, int, float]]] = {}  # key -> (index, size, next read)
        for key, size, _obj, accesses, _end, on_disk in _lifetimes(requests):
            entries = self._future.setdefault(key, [])
            for number, index in enumerate(accesses):
                if on_disk and not number:
                    continue  # the policy first sees a value that starts on disk at its load
                following = accesses[number + 1] if number + 1 < len(accesses) else NEVER
                entries.append((index, size, following))
        self._cursor: dict[Hashable, int] = {}
        self._next: dict[Hashable, float] = {}  # resident key -> index of its next read
        self._sizes: dict[Hashable, int] = {}
        self._now = 0

    def _advance(self, key: Hashable, nbytes: int) -> None:
        entries = self._future.get(key, [])
        i = self._cursor.get(key, 0)
        while i < len(entries) and entries[i][1] != nbytes:
            i += 1  # accesses the engine never shows the policy (values over the budget)
        if i == len(entries):
            self._next[key] = NEVER  # not in the future we were given
            return
        self._cursor[key] = i + 1
        self._now = max(self._now, entries[i][0])
        self._next[key] = entries[i][2]

    def admitted(self, key: Hashable, nbytes: int, cost: float) -> None:
        self._sizes[key] = nbytes
        self._advance(key, nbytes)

    def touched(self, key: Hashable) -> None:
        self._advance(key, self._sizes[key])

    def removed(self, key: Hashable) -> None:
        del self._sizes[key]
        del self._next[key]

    def recosted(self, key: Hashable, nbytes: int, cost: float) -> None:
        if key not in self._sizes:
            raise KeyError(key)

    def victim(self) -> Hashable:
        if not self._next:
            raise KeyError("no resident keys")
        best, best_score = None, (-NEVER, -NEVER)  # (None is a key too: dask's graphs may use it)
        distance = self.rank == "distance"
        for key, following in self._next.items():
            size = self._sizes[key]
            if following == NEVER:
                score = (NEVER, float(size))
            else:
                score = (following if distance else size * (following - self._now), float(size))
            if score > best_score:
                best, best_score = key, score
        return best

    def __len__(self) -> int:
        return len(self._sizes)


def belady_size(trace: Trace, budget: int, mode: str = "dead-skip", rank: str = "distance") -> ReplayResult:
    """An achievable clairvoyant result: replay with :class:`Clairvoyant`, dead values spilled free by default.

    This is NextUse with the trace's own future instead of a graph plan:
    after a read, a value's next use is its next read in this trace (a
    graph plan counts a reader as pending until the reading task's result
    is stored, so a strict put sees its own inputs as needed next).

    Parameters
    ----------
    trace : Trace
        The trace to replay.
    budget : int
        Memory budget in bytes.
    mode : str
        A replay mode; ``"dead-skip"`` by default (a dead value is spilled for free).
    rank : str
        ``"distance"`` (Belady: furthest next read first) or ``"size"``
        (Belady-Size proper: largest size x distance first; see
        :class:`Clairvoyant` for why it is not the default).

    Returns
    -------
    ReplayResult
        What the clairvoyant policy did; its I/O is at least :func:`foo_lower_bound`'s.

    Examples
    --------
    >>> from spillkit.trace import Trace
    >>> ops = [("put", "a", 10, None, 0, 0), ("put", "b", 10, None, 0, 0), ("get", "a", 0, ""), ("get", "b", 0, "")]
    >>> belady_size(Trace({}, ops=ops), 10).io_bytes
    40
    """
    return replay(trace, Clairvoyant(list(trace.requests()), rank), budget, mode=mode)
