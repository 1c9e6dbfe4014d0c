"""Graph-aware policies: spill the key needed furthest in the future (NextUse) or by fewest readers (LRC)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from ._graph import NEVER, GraphPlan
from ._heap import LazyHeap, Priority, remove_everywhere
from .base import Policy, no_copy

__all__ = ["LRC", "OVERDUE", "GraphAware", "NextUse"]

# Positions a reader may run after its planned one before its input counts as overdue (and the plan is
# predicted again: spillkit.dask_replan). With two workers a reader one or two tasks late is ordinary;
# on bench_dask's rechunk (scale 0.15, 134 MiB), MiB read at the median: 472 with no slack (12 runs), 443
# with 2 (24 runs, at most 587), 472 without re-predicting (24 runs, 9 over 1 GiB; /work/notes/s15rechunk.py).
OVERDUE = 2


class GraphAware(Policy):
    """Base of policies that rank keys by a task graph's future.

    The graph comes from the policy's constructor or from :meth:`plan`, which
    the dask integration calls when a computation starts (never from the
    engine). A key's first ``admitted`` marks its task as finished, which
    takes a reader away from each of its inputs (and re-ranks those inputs).
    Keys with no reader left, or unknown to the graph, go first; among equals
    the least recently used goes first, so without a graph these policies
    behave like LRU. O(log n) per event (a heap with lazy deletion).

    Parameters
    ----------
    plan : GraphPlan or None, default None
        The graph to rank by; the policy keeps this object and updates it in
        place as tasks finish. None: an empty plan, under which every key is
        unknown to the graph, so keys go least recently used first (LRU)
        until :meth:`plan` gives a graph.

    Raises
    ------
    KeyError
        From ``touched``, ``recosted`` and ``removed`` (and ``evicted``) for a
        key the policy does not hold, and from ``victim`` (and ``victim_for``)
        when none is resident; the policy is left unchanged.

    Notes
    -----
    Not thread-safe on its own (the plan neither): the engine's lock
    serialises calls. Deterministic.
    """

    def __init__(self, plan: GraphPlan | None = None) -> None:
        self._plan = plan if plan is not None else GraphPlan({}, {})
        self._sizes: dict[Hashable, int] = {}
        self._heap = LazyHeap()

    @property
    def planned(self) -> bool:
        """True once the policy has a graph."""
        return bool(self._plan.order)

    def plan(self, plan: GraphPlan) -> None:
        """Use ``plan`` from now on and re-rank every resident key."""
        self._plan = plan
        for key in list(self._sizes):
            self._heap.push(key, self._priority(key))

    def overdue(self) -> bool:
        """True when a resident key's next reader is :data:`OVERDUE` tasks late on the plan (O(resident keys))."""
        late, next_use = self._plan.now - OVERDUE, self._plan.next_use
        return any(next_use(key) < late for key in self._sizes)

    def reorder(self, tasks: Sequence[Hashable]) -> None:
        """Plan ``tasks`` to run next, in this order (:meth:`GraphPlan.reorder`), and re-rank every key."""
        self._plan.reorder(tasks)
        self.plan(self._plan)

    def _priority(self, key: Hashable) -> Priority:
        raise NotImplementedError

    @property
    def graph_plan(self) -> GraphPlan:
        """The plan in force (replaced by :meth:`plan`)."""
        return self._plan

    def admitted(self, key: Hashable, nbytes: int, cost: float) -> None:
        self._sizes[key] = nbytes
        self._heap.push(key, self._priority(key))
        self.ran(key)

    def ran(self, task: Hashable) -> None:
        """Record that ``task`` ran (once; its first admission says so too): its inputs lose a reader.

        The dask integration calls it for every task, since a result written straight to disk
        (larger than the budget) is never admitted, and its inputs kept it as a reader, overdue.
        """
        for dep in self._plan.finished(task):
            if dep in self._sizes:
                self._heap.push(dep, self._priority(dep))

    def touched(self, key: Hashable) -> None:
        if key not in self._sizes:
            raise KeyError(key)
        self._heap.push(key, self._priority(key))

    def recosted(self, key: Hashable, nbytes: int, cost: float) -> None:
        if key not in self._sizes:  # the graph, not cost, ranks keys; and this is not a use
            raise KeyError(key)

    def removed(self, key: Hashable) -> None:
        remove_everywhere(key, self._heap, self._sizes)

    def victim(self) -> Hashable:
        return self._heap.peek()[0]

    def __len__(self) -> int:
        return len(self._sizes)


class NextUse(GraphAware):
    """Spill the key whose next reader comes latest in dask's planned order (Belady).

    Keys with no remaining reader go first (dead but not yet deleted), then
    keys by next use, furthest first; ties go to the largest. Weighting the
    distance by size (Belady-Size) was measured too, once, at ecc4d7f on the
    traces shipped before pins were recorded (no script here repeats it): it
    helped matmul by 7% but doubled the I/O of rechunk and shuffle, because
    schedulers run tasks out of planned order and a distance measured from an
    estimated "now" misjudges large values. On the shipped traces plain next
    use never did more I/O than LRU, and up to 36% less (rechunk at 10%,
    settled: ``experiments/need_aware.py``'s plain column against LRU in
    ``experiments/results.csv``).

    When the engine says how many bytes it needs (:meth:`victim_for`), a key
    far larger than that need is not spilled just because its next reader
    comes a little later: among the :attr:`CANDIDATES` keys read furthest
    ahead, the one freeing the most *useful* space-time per byte of I/O wins,
    i.e. the largest ``distance x min(1, need / size) / io`` where ``io`` is
    1 for a key with an unchanged copy on disk (its reload) and 2 otherwise
    (write and reload). On the shipped traces the gains are in strict mode at
    5% of peak memory: replayed I/O 0.77x plain next use's for rechunk and
    0.84x for matmul. Settled (as the dask integration runs) it is 0.95x at
    best (tsqr at 5%) and 1.01x at worst (rechunk at 10% and 25%), 1.00x in
    23 of 28 cells (``python experiments/need_aware.py``).

    Parameters
    ----------
    plan : GraphPlan or None, default None
        As for :class:`GraphAware`. With None every key ties, so ``victim``
        and ``victim_for`` both pick the least recently used key, as LRU.

    Notes
    -----
    Raises as :class:`GraphAware` does. Not thread-safe on its own: the
    engine's lock serialises calls.

    Examples
    --------
    >>> from spillkit.policies._graph import GraphPlan
    >>> plan = GraphPlan({"c": ["a"], "d": ["b"]}, {"a": 0, "b": 1, "c": 2, "d": 3})
    >>> p = NextUse(plan)
    >>> p.admitted("a", 10, 0.0); p.admitted("b", 10, 0.0)
    >>> p.victim()   # b is read by d (position 3), later than a is read by c (2)
    'b'
    """

    name = "nextuse"
    CANDIDATES = 8  # keys read furthest ahead that victim_for weighs (4 and 64 measured the same)

    def victim_for(self, need: int, has_copy: Callable[[Hashable], bool] = no_copy) -> Hashable:
        candidates = self._heap.smallest(self.CANDIDATES)
        if not candidates:
            raise KeyError("no resident keys")
        first = candidates[0][0]
        if self._plan.next_use(first) == NEVER:  # nobody reads it again: free to drop, whatever its size
            return first
        now = self._plan.now
        best, best_score = first, -1.0
        for key, priority in candidates:
            next_use = -priority[0]
            size = self._sizes[key]
            # Planned positions run ahead of or behind "now" when threads run tasks out of order;
            # a key already due still counts as half a task away, never as zero or negative.
            distance = max(next_use - now, 0.5)
            score = distance * min(1.0, need / size) if size > 0 else distance
            if has_copy(key):
                score *= 2.0  # nothing to write: its I/O is the reload alone, half a dirty key's
            if score > best_score:
                best, best_score = key, score
        return best

    def _priority(self, key: Hashable) -> Priority:
        next_use = self._plan.next_use(key)
        # Keys the graph does not know (or that no reader waits for) tie on purpose, so the
        # heap's sequence numbers order them least recently used first, not largest first.
        return (-next_use, 0 if next_use == NEVER else -self._sizes[key])


class LRC(GraphAware):
    """Least reference count: spill the key with the fewest remaining readers.

    Ties go to the key whose next reader comes latest, then to the largest.
    This is what dask's own reference counts (``waiting_data``) tell.

    Parameters
    ----------
    plan : GraphPlan or None, default None
        As for :class:`GraphAware`. With None every key has no reader left
        and the same next use, so keys go least recently used first, as LRU.

    Notes
    -----
    Raises as :class:`GraphAware` does. Not thread-safe on its own: the
    engine's lock serialises calls.

    Examples
    --------
    >>> from spillkit.policies._graph import GraphPlan
    >>> plan = GraphPlan({"c": ["a"], "d": ["a", "b"], "e": ["b"]}, {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4})
    >>> p = LRC(plan)
    >>> p.admitted("a", 10, 0.0); p.admitted("b", 10, 0.0); p.admitted("c", 10, 0.0)
    >>> p.victim()   # c has no readers left
    'c'
    >>> p.removed("c"); p.victim()   # c has read a: a has one reader left (d), b two (d, e)
    'a'
    """

    name = "lrc"

    def _priority(self, key: Hashable) -> Priority:
        next_use = self._plan.next_use(key)
        return (self._plan.remaining(key), -next_use, 0 if next_use == NEVER else -self._sizes[key])
