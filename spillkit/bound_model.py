"""The FOO bound's LP as data: a trace's lifetimes, their intervals, the flow terms and the bytes touched per request.

:class:`_Model` builds the linear program that the module docstring of
:mod:`spillkit.bounds` formulates (its variants, why it is a lower bound and
how rows are dropped); :mod:`spillkit.bound_solvers` solves it.
:func:`_lifetimes` is shared with :class:`spillkit.clairvoyant.Clairvoyant`; when a
settled replay counts a value against the budget is :mod:`spillkit.bound_settling`.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from .bound_settling import deferral_points, merged_stretches, pinned_stretches, settle_points, settles_from

__all__: list[str] = []  # helpers of spillkit.bounds, spillkit.bound_solvers and spillkit.clairvoyant


def _lifetimes(requests: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """Every stored value as ``[key, size, object, accesses, end, on_disk]`` (accesses: put index, then reads).

    ``end`` is the key's next put or del, or a read for ``pop()`` (which removes the key in a replay), else ``n``.
    ``on_disk``: the value starts on disk (an ``ondisk`` request stands for its put).
    """
    lives: list[list[Any]] = []
    current: dict[Hashable, list[Any]] = {}
    tokens: dict[int, tuple[int, int]] = {}  # replay reuses one object per token while the size matches
    n = len(requests)
    for index, op in enumerate(requests):
        tag = op[0]
        if tag == "put":
            key, size, token = op[1], int(op[2]), op[5]
            old = current.get(key)
            if old is not None:
                old[4] = index
            obj = tokens.get(token) if token else None
            if obj is None or obj[1] != size:
                obj = (len(lives), size)
                if token:
                    tokens[token] = obj
            current[key] = [key, size, obj[0], [index], n, False]
            lives.append(current[key])
        elif tag == "ondisk":
            key = op[1]
            if key in current:
                current[key][4] = index
            current[key] = [key, int(op[2]), len(lives), [index], n, True]
            lives.append(current[key])
        elif tag == "get" and op[1] in current:
            life = current[op[1]]
            life[3].append(index)
            if op[3] == "pop":  # replay's pop removes the key there, whether a del follows or not: it ends
                current.pop(op[1])[4] = index  # the value (later reads miss, a del finds nothing)
            elif len(op) > 4 and op[4]:  # a load names the object it gave back: a later put of it is an alias
                tokens[op[4]] = (life[2], life[1])
        elif tag == "del" and op[1] in current:
            current.pop(op[1])[4] = index
    return lives


def _flushed(flushes: Sequence[int], put: int, end: int, dead_writes: bool, last_read: int) -> bool:
    """Whether a flush between ``put`` and ``end`` must find the value stored: every run writes it by then.

    Without ``dead_writes`` (the variant dead-skip replays share) only a flush before the key's last read
    counts: a dead value may have been dropped unwritten before it.
    """
    first = bisect.bisect_right(flushes, put)  # the first flush after the put: if any flush counts, it does
    return first < len(flushes) and flushes[first] < end and (dead_writes or flushes[first] < last_read)


class _Model:
    """The LP's data: interval variables, the flow's entering/leaving terms, touched bytes per request."""

    def __init__(
        self,
        requests: Sequence[tuple[Any, ...]],
        budget: int,
        settled: bool,
        dead_writes: bool,
        pins: Mapping[int, Sequence[tuple[str, Hashable]]] | None = None,
    ) -> None:
        n = self.n = len(requests)
        self.budget = budget
        self.sizes: list[int] = []  # per interval
        self.reads: list[bool] = []  # per interval: a read ends it (missing it costs a load)
        self.owner: list[int] = []  # per interval: its lifetime's write variable
        self.writes: list[int] = []  # per write variable: the lifetime's size (0: its file predates the trace)
        self.flow: dict[tuple[int, int], int] = {}  # (request, interval) -> bytes entering (+) or leaving (-)
        self.touched = [0] * n
        self.constant = 0  # values over the budget (written straight to disk, read from it every time), and
        # the first loads of values that start on disk
        counts_from = settle_points(requests) if settled else deferral_points(requests)
        # A settled replay pins what the trace pins, and a pinned value is outside the budget: it
        # counts nowhere while pinned, nor until the replay next settles for certain after its unpin
        # (hits meanwhile make no room for it). Relaxing the rows so keeps every run feasible.
        # (A strict replay pins nothing.)
        exempt = {}
        if settled and counts_from and pins:
            exempt = pinned_stretches(pins, settles_from(requests, counts_from), n)
        last_get = {op[1]: index for index, op in enumerate(requests) if op[0] == "get"}
        flushes = [index for index, op in enumerate(requests) if op[0] == "flush"]
        holders: dict[int, list[tuple[int, int, list[int], list[int | None], int]]] = {}
        lives = _lifetimes(requests)
        # An object is outside the budget while any key holding it is pinned (the engine counts objects
        # once): each lifetime is relaxed over the pinned stretches of every key its object ever has.
        keys_of: dict[int, set[Hashable]] = {}
        for key, _size, obj, _accesses, _end, _on_disk in lives if exempt else ():
            keys_of.setdefault(obj, set()).add(key)
        stretches_of = {
            obj: merged_stretches([stretch for key in keys for stretch in exempt.get(key, ())])
            for obj, keys in keys_of.items()
        }
        for key, size, obj, accesses, end, on_disk in lives:
            if on_disk:  # its first read loads it in every run, then its file serves every eviction (no write)
                accesses = accesses[1:]  # from that load on it is as a value put there (a load makes room)
                if not accesses:
                    continue
                self.constant += 0 if requests[accesses[0]][3] == "reuse" else size  # (a reuse reads nothing)
            reads = len(accesses) - 1
            # Dead-skip frees the write of a value whose key is never read again (a later read of the key,
            # even after an overwrite or a del, keeps it alive); the other modes write every spill.
            charged = not on_disk and (dead_writes or last_get.get(key, -1) > end)
            if size > budget:
                paid = sum(1 for r in accesses[1:] if requests[r][3] != "reuse")  # (a reuse reads nothing)
                self.constant += size * paid + (size if (reads or charged) and not on_disk else 0)
                continue
            if size == 0:
                continue  # costs nothing, holds nothing
            put = accesses[0]
            # A flush while it is stored gives it a file in every run (unless a dead-skip run may have
            # dropped it as dead): its one write is paid there or before, and every eviction finds the file.
            prepaid = not on_disk and _flushed(flushes, put, end, dead_writes, last_get.get(key, -1))
            if prepaid:
                self.constant += size
                charged = False  # (dropping it after its last read costs nothing either)
            start = counts_from[put] if counts_from is not None and not on_disk else put
            bounds = list(itertools.pairwise(accesses))
            if charged:
                bounds.append((accesses[-1], end))
            variables: list[int | None] = []
            for number, (a, b) in enumerate(bounds):
                low, high = max(a + 1, start), b - 1
                if low > high:
                    variables.append(None)  # never counted anywhere: free to keep
                    continue
                variable = len(self.sizes)
                variables.append(variable)
                self.sizes.append(size)
                # A "reuse" read is served without the disk, in every run (the program held the value there).
                self.reads.append(number < reads and requests[b][3] != "reuse")
                self.owner.append(len(self.writes))
                self._enter(low, high + 1, variable, size)
                for pinned_from, pinned_to in stretches_of.get(obj, ()):
                    if max(low, pinned_from) < min(high + 1, pinned_to):
                        self._enter(max(low, pinned_from), min(high + 1, pinned_to), variable, -size)
            if any(v is not None for v in variables):
                self.writes.append(0 if on_disk or prepaid else size)
            stretches = stretches_of.get(obj, ())
            for r in accesses:
                # (a pop reads a spilled value without caching it: it needs no room)
                popped = requests[r][0] == "get" and requests[r][3] == "pop"
                if r >= start and not popped and not any(lo <= r < hi for lo, hi in stretches):
                    self.touched[r] += size
            last = end - 1 if charged else accesses[-1]
            if max(put, start) <= last:
                holders.setdefault(obj, []).append((max(put, start), last, accesses, variables, size))
        for obj, group in holders.items():
            if len(group) > 1:
                self._count_once(requests, group, stretches_of.get(obj, []))

    def _enter(self, low: int, stop: int, variable: int, size: int) -> None:
        """Count ``variable`` (``size`` bytes) at requests ``low .. stop - 1``."""
        flow = self.flow
        flow[low, variable] = flow.get((low, variable), 0) + size
        flow[stop, variable] = flow.get((stop, variable), 0) - size

    def _count_once(self, requests: Sequence[tuple[Any, ...]], group: list[Any], pinned: list[tuple[int, int]]) -> None:
        """Holders of one object overlap: at each request count one of them (the one accessed, else the oldest).

        Where the object is ``pinned`` no holder counts already (see ``__init__``): nothing to take off.
        """
        group.sort(key=lambda holder: holder[2][0])
        cuts: set[int] = {edge for stretch in pinned for edge in stretch}
        for low, high, accesses, _variables, _size in group:
            cuts.update((low, high + 1))
            cuts.update(r for a in accesses if low <= a <= high for r in (a, a + 1))
        points = sorted(cuts)
        for u, v in itertools.pairwise(points):
            present = [h for h in group if h[0] <= u and v - 1 <= h[1]]
            if len(present) < 2 or any(low <= u < high for low, high in pinned):
                continue
            winner = present[0]
            if v - u == 1 and requests[u][0] in ("put", "get"):
                winner = next((h for h in present if u in h[2]), winner)
            for holder in present:
                if holder is winner:
                    continue
                variable = holder[3][bisect.bisect_right(holder[2], u) - 1]
                if variable is not None:
                    self._enter(u, v, variable, -holder[4])

    def rows(self, compress: bool = True) -> list[int]:
        """The requests whose memory constraint can bind (the others are implied); every one unless ``compress``."""
        n, touched, budget = self.n, self.touched, self.budget
        if not compress:
            return list(range(n))
        change = [0] * (n + 1)  # all-kept memory change at each request
        entering = [0] * (n + 1)  # largest possible increase at each request
        for (row, _), size in self.flow.items():
            change[row] += size
            if size > 0:
                entering[row] += size
        full, candidates = 0, []
        for r in range(n):
            full += change[r]
            left = r == 0 or entering[r] + touched[r] - touched[r - 1] > 0  # else the previous row dominates
            if left and full + touched[r] > budget:  # else it holds even if everything is kept
                candidates.append(r)
        if not candidates:
            return []
        between: dict[tuple[int, int], int] = {}  # (next candidate, interval) -> net change since the previous
        for (row, variable), size in self.flow.items():
            if row <= candidates[-1]:
                entry = bisect.bisect_left(candidates, row), variable
                between[entry] = between.get(entry, 0) + size
        drop = [0] * len(candidates)  # largest possible decrease since the previous candidate
        for (slot, _), size in between.items():
            if size < 0:
                drop[slot] -= size
        kept = [r for i, r in enumerate(candidates[:-1]) if drop[i + 1] + touched[r] - touched[candidates[i + 1]] > 0]
        return [*kept, candidates[-1]]

    def lengths(self) -> list[int]:
        """How many requests each interval is counted at."""
        length = [0] * len(self.sizes)
        for (row, variable), size in self.flow.items():
            length[variable] -= row * size // self.sizes[variable]
        return length
