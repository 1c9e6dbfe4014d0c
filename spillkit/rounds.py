"""Rounds of making room, and the victims set aside in them: a base class of the engine's ledger.

A round is one pass of :meth:`SpillEngine._make_room <spillkit.engine.SpillEngine._make_room>`
(or of ``evict_one``); a listener's load may start one inside another. A victim
that changed while it was written is set aside (out of the policy) until the
outermost round ends. A victim whose write failed is set aside until a write
of another succeeds: otherwise the same victim, first in line again (LRU, LFU,
FIFO, the largest for ``size``), would fail every round while the others could
have been written, and memory would grow without bound. The failed victims are
offered again once a round: after its first successful write, or when the
policy has no other victim, so that a disk that works again gets the chance to
show it. A round stops after the writes of two objects failed in a row: one may
be a single value the disk refuses (a file too large for it), two mean the disk
fails. Memory may then exceed the budget until a later round writes again.

The key whose put or load makes room is *busy* meanwhile: a listener that the
round runs may use any other key, and gets a :class:`~spillkit.errors.SpillError`
for that one (counted and warned about as any listener's error), since the
operation has it half done.

Thread-safety: only under the engine's lock, like the rest of the ledger.
Nothing here raises but the policy's own errors and that SpillError.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Iterator
from typing import TYPE_CHECKING, Any

from .errors import SpillError, warn_caller
from .keys import describe_key

if TYPE_CHECKING:
    from .policies.base import Policy
    from .tiers import DiskTier

__all__ = ["EvictionRounds"]


class EvictionRounds:
    """The rounds' state and the set-aside victims of a :class:`~spillkit.ledger.EngineLedger` (its base).

    Not thread-safe by itself: the engine's lock covers every call.
    """

    # The ledger's state these methods read, declared for the type checker.
    memory: dict[Hashable, Any]
    policy: Policy
    disk: DiskTier
    budget: int
    memory_bytes: int
    pinned_bytes: int
    _nbytes: dict[Hashable, int]
    _unspillable: set[Hashable]

    if TYPE_CHECKING:

        def _cost(self, key: Hashable, nbytes: int) -> float: ...
        def _spill(self, key: Hashable, background: bool = True) -> bool: ...

    def __init__(self) -> None:
        self._rounds = 0  # rounds making room now (a listener's load may start one inside another)
        self._aside: list[Hashable] = []  # victims out of the policy for now (see the module docstring)
        self._write_failed: set[Hashable] = set()  # those of them whose write failed
        # Ids of the objects whose write failed in the current round since its last successful one
        # (one object under several keys fails once): the round stops at two.
        self._round_failed: set[int] = set()
        self._round_retried = False  # the current round offered the failed victims again (once a round)
        # Keys whose put or load is making room now: a listener (run in the round) may not use them,
        # since the operation has them half done (the old value taken out, the new one not yet in).
        self._busy: set[Hashable] = set()
        self._stuck_warned = False  # the policy held keys but named no victim (said once: _no_victim)

    def _make_room(self, incoming: int) -> None:
        # The one loop that makes room (a put's for ``incoming`` bytes, a settle's for none): the
        # policy names each victim, the engine's _spill acts on it.
        limit = self.budget - incoming
        self._begin_round()  # (not self._round(): see _begin_round)
        try:
            while self.memory_bytes - self.pinned_bytes > limit:  # pinned values are outside the budget
                try:
                    key = self.policy.victim_for(self.memory_bytes - self.pinned_bytes - limit, self.disk.has_copy)
                except KeyError:
                    if self._retry_failed():
                        continue
                    self._no_victim()  # (warns if the policy holds keys all the same)
                    return
                if not self._spill(key):
                    return
        finally:
            self._end_round()

    def _no_victim(self) -> None:
        # The policy raised KeyError for "no resident keys" while it holds some: a key whose hash changed
        # after it was stored breaks its lookups, as a dict's. Nothing more can be spilled; said once.
        held = len(self.policy)
        if held and not self._stuck_warned:
            self._stuck_warned = True
            warn_caller(
                f"the eviction policy holds {held} key(s) but names no victim (a key whose hash changed after "
                "it was stored?): nothing more is spilled, and memory may pass the budget"
            )

    def _refuse_if_busy(self, key: Hashable) -> None:
        # Before: a listener's get, delete or put of such a key left it counted twice (memory_bytes,
        # the spilled bytes) or failed the operation half-way with a KeyError.
        if key in self._busy:
            raise SpillError(
                f"key {describe_key(key)} is being stored or loaded, and the round making room for it "
                "ran a listener that used it; a listener may use any other key"
            )

    @contextlib.contextmanager
    def _busy_with(self, key: Hashable) -> Iterator[None]:
        # The put or load of ``key`` makes room: listeners in that round may not use it (see above).
        self._busy.add(key)
        try:
            yield
        finally:
            self._busy.discard(key)

    def _out_of_policy(self, key: Hashable) -> bool:
        # True for a resident key the policy does not hold (set aside, or unserializable): a hit on it
        # touches nothing; for any other key, the policy's KeyError is a real error.
        return key in self._aside or key in self._unspillable

    def _set_aside(self, key: Hashable, write_failed: bool = False) -> None:
        # A victim another thread keeps changing, or whose write failed: the round goes on with the
        # others (or stops, on a failing disk), and does not pick it again.
        self.policy.removed(key)
        self._aside.append(key)
        if write_failed:
            self._write_failed.add(key)

    def _wrote(self) -> None:
        # A victim was written: the disk takes writes, so the victims whose write failed are tried again.
        self._round_failed.clear()
        self._retry_failed()

    def _write_failed_now(self, key: Hashable, value: Any) -> bool:
        # A victim's write failed: it is set aside. True if the round goes on with another victim: after
        # one failed object, yes (it may be the disk's only refusal; the same object under another key
        # fails again, and counts once); after two in a row, the disk is failing, and trying every value
        # would only fail each.
        self._set_aside(key, write_failed=True)
        self._round_failed.add(id(value))
        return len(self._round_failed) < 2

    def _retry_failed(self) -> bool:
        # Offer the victims whose write failed again, once a round: after its first write, or when the
        # policy has no other victim (a disk that works again must get a chance to show it). True if any.
        if not self._write_failed or self._round_retried:
            return False
        self._round_retried = True
        self._offer_again(failed=True)
        self._write_failed = set()
        return True

    def _offer_again(self, failed: bool) -> None:
        # Offer the set-aside victims whose write failed (or the others) to the policy again, if still
        # resident and serializable; the rest stay aside.
        offered = [key for key in self._aside if (key in self._write_failed) == failed]
        self._aside = [key for key in self._aside if (key in self._write_failed) != failed]
        for key in offered:
            if key in self.memory and key not in self._unspillable:
                self.policy.admitted(key, self._nbytes[key], self._cost(key, self._nbytes[key]))

    @contextlib.contextmanager
    def _round(self) -> Iterator[None]:
        # One round of making room (lock held): what _begin_round and _end_round do around a block.
        self._begin_round()
        try:
            yield
        finally:
            self._end_round()

    def _begin_round(self) -> None:
        # (The hot path, _make_room, calls these two itself: a generator-based context manager
        # cost about a tenth of a put of a small value in benchmarks/bench_small.py.)
        if not self._rounds:
            self._round_failed.clear()
            self._round_retried = False
        self._rounds += 1

    def _end_round(self) -> None:
        # When the outermost round ends (a listener's load may run one inside another), the victims
        # set aside in it are offered to the policy again, if still resident, except those whose write
        # failed: they wait for a write to succeed (see _wrote).
        self._rounds -= 1
        if self._aside and not self._rounds:
            self._offer_again(failed=False)
