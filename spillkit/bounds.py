"""Bounds on the spill I/O of a trace: FOO's LP lower bound, the looser PFOO-L, and a clairvoyant result.

The lower bounds follow FOO (Berger, Beckmann and Harchol-Balter, "Practical
Bounds on Optimal Caching with Variable Object Sizes", SIGMETRICS 2018),
rewritten for a spill cache: every put enters memory, a value leaving memory
is written once (its file stays valid until the key is overwritten or
deleted) and every later read of it from disk loads its bytes again. The
cost is what :func:`spillkit.replay.replay` counts: ``bytes_written +
bytes_read``.

Formulation
-----------
Requests are ``trace.requests()``, indexed ``r = 0 .. n-1``; ``B`` is the
budget. A *lifetime* ``L`` is one stored value: a key's put at ``p_L``, its
reads ``g_1 < ... < g_m`` before the key's next put or del ``e_L`` (or ``n``),
its size ``s_L`` and its object (replay shares one object between aliases).
Its *intervals* ``j = (a_j, b_j)`` join consecutive accesses ``p_L, g_1, ...,
g_m``; where its dead write is charged (below), the *tail* ``(g_m, e_L)`` (or
``(p_L, e_L)``) is one more interval, with no read at its end. Variables, all
in ``[0, 1]``: ``x_j``, the fraction of interval ``j`` spent in memory, and
``w_L``, the fraction of ``L`` written::

    minimise    sum_L s_L * (w_L + sum_{j of L ending in a read} (1 - x_j))  +  C
    subject to  w_L + x_j >= 1                              for every interval j of L
                sum_{j counted at r} s_j x_j + t_r <= B      for every request r

Interval ``j`` of ``L`` is *counted* at ``r`` when ``a_j < r < b_j`` and
``r >= c_L``; ``t_r = s_L`` when request ``r`` puts or reads ``L`` and
``r >= c_L``. Of the lifetimes holding one shared object only one counts at
``r``: the one accessed at ``r``, else the earliest put (the engine counts an
object once while it is resident under several keys; counting fewer is
always safe). Values larger than ``B`` never enter memory: ``C`` charges
``s`` per read and ``s`` for the write when it is charged. Values of size 0
cost nothing. A value the trace starts on disk (``ondisk``) is loaded by
its first read in every run (``C`` charges ``s``); from there it is a
lifetime put at that read whose write costs nothing (its file is there).
A ``flush`` request (``Chest.flush()``) gives every stored value a file: a
lifetime with a flush between ``p_L`` and ``e_L`` is written in every run, at
the flush or before, so ``C`` charges its write ``s_L`` once and ``w_L`` costs
nothing (its tail is not charged either: leaving memory after the flush is
free); in the strict variant only when the flush comes before the key's last
read (a dead-skip replay writes no dead value, and may have dropped it).

Variants, each a valid bound for the replay modes named:

``"strict"`` (also ``"dead-skip"``)
    ``c_L = p_L``: the engine makes room at every put (but for a put the
    trace marks deferred: ``c_L`` is then the next settle, as the replay
    defers it; see the settled variant for why that holds). A tail is charged
    only when the key is read again after ``e_L``; otherwise the value is
    dead and leaves memory for free, exactly as dead-skip decides (by key:
    a later read of the key, after an overwrite or a del, keeps its earlier
    value's write). Valid for strict replays and dead-skip replays (a
    strict replay costs at least what the same run costs in dead-skip).
``"settled"``
    ``c_L`` is the first settle point after ``p_L``: the trace's settle
    records, else the first later request that is not a del (exactly where
    replay settles). Every tail is charged: settled replays write every
    value they spill. A value the trace pins (a running task's input) counts
    at no row from its pin to the first settle at or after its unpin: a
    settled replay pins it too, and the engine keeps pinned values outside
    the budget. Valid for settled replays.
``"any"`` (default)
    The smaller of the two optima: valid for every replay mode.

Why it is a lower bound: take any run of the engine in the mode and set
``x_j = 1`` where ``L`` stayed in memory from ``a_j`` to ``b_j`` (0 where it
left), ``w_L = 1`` when ``L`` left memory inside a counted interval. Only a
read brings a value back, so a read ending an interval not kept is a load of
``s_L`` bytes; the first time ``L`` left inside a counted interval it was
written (its key is read later, or the mode writes dead values), so the
objective is at most the run's ``bytes_written + bytes_read``. The
constraints hold: with strict puts the resident objects fit after every
request. With settled puts, memory fits after each settle, a load makes room
for everything resident (deferred puts included), a hit adds nothing and a
del only frees, so the values put *before* the last settle always fit, and
only those are counted. The LP's optimum is at most every run's cost.

Solving: each row's memory is a variable ``G_r`` with ``G_r - G_prev =
(intervals entering) - (intervals leaving)`` and ``G_r <= B - t_r``, so each
``x_j`` has about two nonzeros (FOO's min-cost-flow structure) rather than
one per request it spans. Rows that can never bind are dropped: where
keeping everything fits, and where a neighbouring row's memory is at least
theirs for every ``x`` (checked from the entering and leaving terms). HiGHS
(``scipy.optimize.linprog(method="highs")``) solves the rest; its optimum is
accurate to about 1e-9 relative, so compare with a small tolerance.

The code: :mod:`spillkit.bound_model` builds the LP, :mod:`spillkit.bound_solvers`
solves it (HiGHS, or PFOO-L's greedy knapsack) and :mod:`spillkit.clairvoyant`
holds :class:`Clairvoyant` and :func:`belady_size`; this module has the entry
points and re-exports the rest.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .bound_model import _Model
from .bound_solvers import _greedy, _solve
from .clairvoyant import NEVER as NEVER
from .clairvoyant import Clairvoyant, belady_size
from .trace import Trace

__all__ = ["VARIANTS", "Bound", "Clairvoyant", "belady_size", "foo_lower_bound", "pfoo_lower_bound"]

# variant -> (a value counts against the budget from the settle after its put, every dead write is charged)
VARIANTS = {"strict": (False, False), "dead-skip": (False, False), "settled": (True, True)}


@dataclass(frozen=True)
class Bound:
    """A bound on total I/O bytes (written plus read) at one budget.

    ``status`` is ``"optimal"`` when the solver proved optimality; anything
    else says what happened (and ``io_bytes`` is then PFOO-L's bound).
    """

    name: str
    budget: int
    io_bytes: float
    solve_seconds: float
    status: str


def _variants(mode: str) -> list[tuple[bool, bool]]:
    if mode == "any":
        return [VARIANTS["strict"], VARIANTS["settled"]]
    if mode not in VARIANTS:
        raise ValueError(f"unknown mode {mode!r}; choose 'any' or one of {sorted(VARIANTS)}")
    return [VARIANTS[mode]]


def foo_lower_bound(trace: Trace, budget: int, mode: str = "any") -> Bound:
    """A lower bound on ``bytes_written + bytes_read`` of any policy: FOO's LP relaxation, solved with HiGHS.

    Parameters
    ----------
    trace : Trace
        The trace; its ``requests()`` are what replay drives.
    budget : int
        Memory budget in bytes, enforced at every request (at every settle
        point for the settled variant; see the module docstring).
    mode : str
        ``"any"`` (valid for every replay mode: the smaller of the two
        variants), ``"strict"`` or ``"dead-skip"`` (valid for those two
        modes), or ``"settled"`` (valid for settled replays).

    Returns
    -------
    Bound
        ``io_bytes`` is the LP optimum; ``solve_seconds`` covers building and
        solving; ``status`` is ``"optimal"`` or the solver's message (then
        ``io_bytes`` falls back to PFOO-L's bound, still valid).

    Raises
    ------
    ImportError
        Without SciPy (``pip install "spillkit[plot]"``).

    Examples
    --------
    >>> from spillkit.trace import Trace
    >>> ops = [("put", "a", 10, None, 0, 0), ("put", "b", 10, None, 0, 0), ("get", "a", 0, ""), ("get", "b", 0, "")]
    >>> foo_lower_bound(Trace({}, ops=ops), 10, mode="strict").io_bytes   # write and read a, then b
    40.0
    """
    start = time.perf_counter()
    requests = list(trace.requests())
    values, statuses = [], []
    pins = trace.pins()
    for settled, dead_writes in _variants(mode):
        value, status = _solve(_Model(requests, budget, settled, dead_writes, pins))
        values.append(value)
        statuses.append(status)
    status = next((s for s in statuses if s != "optimal"), "optimal")
    return Bound("foo", budget, min(values), time.perf_counter() - start, status)


def pfoo_lower_bound(trace: Trace, budget: int, mode: str = "any") -> Bound:
    """PFOO-L: a fast, looser lower bound (no SciPy), at most :func:`foo_lower_bound` for the same mode.

    Two relaxations of FOO's LP (module docstring): the per-request budget
    becomes one total, ``sum_j s_j len_j x_j <= B n - sum_r t_r`` (the
    sum of all request rows; ``len_j`` is how many rows count interval
    ``j``), and of each value's write constraints only the one for its
    longest interval is kept. What remains is a fractional knapsack, solved
    exactly by keeping intervals greedily by length, shortest first:
    keeping one saves ``s_j`` bytes of reads for ``s_j len_j`` byte-requests;
    the longest interval of a value also saves its write, so it ranks at
    half its length. Everything not kept costs its I/O. (Sorting by size
    times length, as the paper's PFOO-L does for hit ratios, bounds object
    misses, not bytes.)

    Parameters
    ----------
    trace : Trace
        The trace; its ``requests()`` are what replay drives.
    budget : int
        Memory budget in bytes.
    mode : str
        As in :func:`foo_lower_bound`.

    Returns
    -------
    Bound
        ``io_bytes`` is the knapsack's optimum; ``status`` is always ``"optimal"``.

    Examples
    --------
    >>> from spillkit.trace import Trace
    >>> ops = [("put", "a", 10, None, 0, 0), ("put", "b", 10, None, 0, 0), ("get", "a", 0, ""), ("get", "b", 0, "")]
    >>> pfoo_lower_bound(Trace({}, ops=ops), 10, mode="strict").io_bytes
    40.0
    """
    start = time.perf_counter()
    requests = list(trace.requests())
    pins = trace.pins()
    value = min(_greedy(_Model(requests, budget, *variant, pins)) for variant in _variants(mode))
    return Bound("pfoo-l", budget, value, time.perf_counter() - start, "optimal")
