"""The policy contract run on every registered policy, hand-written orderings, and a
differential test of LRU / LFU against cachetools on the same access sequences."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import cachetools
import pytest
from helpers import drain

import spillkit
from spillkit import LFU, LRU, Chest, CostAware, Event, Policy, SizeAware, make_policy

PolicyFactory = Callable[[], Policy]

# Every registered policy, plus plain LFU (the variant that matches cachetools).
FACTORIES: dict[str, PolicyFactory] = {
    **{name: (lambda name=name: make_policy(name)) for name in spillkit.policy_names()},  # type: ignore[misc]
    "lfu-no-aging": lambda: LFU(aging=False),
}


def random_events(seed: int, count: int) -> list[tuple[Any, ...]]:
    """A sequence of policy events that respects the engine's protocol (only resident
    keys are touched, removed, recosted; only the victim is evicted)."""
    rng = random.Random(seed)
    resident: list[str] = []
    events: list[tuple[Any, ...]] = []
    fresh = 0
    for _ in range(count):
        roll = rng.random()
        if roll < 0.35 or not resident:
            key = f"k{fresh}"
            fresh += 1
            resident.append(key)
            events.append(("admitted", key, rng.choice([1, 10, 100, 1000, rng.randint(1, 5000)]), rng.random()))
        elif roll < 0.65:
            events.append(("touched", rng.choice(resident)))
        elif roll < 0.75:
            key = resident.pop(rng.randrange(len(resident)))
            events.append(("removed", key))
        elif roll < 0.82:
            key = rng.choice(resident)
            events.append(("recosted", key, rng.randint(1, 5000), rng.random() * 10))
        else:
            events.append(("evict",))
            # which key leaves is the policy's choice: the replay below tells us
    return events


def replay(policy: Policy, events: list[tuple[Any, ...]]) -> list[Hashable]:
    """Feed ``events`` to ``policy``; return every victim offered, checking the contract on the way."""
    resident: set[Hashable] = set()
    sizes: dict[Hashable, int] = {}
    victims: list[Hashable] = []
    for event in events:
        kind = event[0]
        if kind == "admitted":
            _, key, nbytes, cost = event
            policy.admitted(key, nbytes, cost)
            resident.add(key)
            sizes[key] = nbytes
        elif kind == "touched":
            if event[1] in resident:
                policy.touched(event[1])
        elif kind == "removed":
            if event[1] in resident:
                policy.removed(event[1])
                resident.discard(event[1])
        elif kind == "recosted":
            _, key, _nbytes, cost = event
            if key in resident:
                policy.recosted(key, sizes[key], cost)
        elif resident:
            victim = policy.victim()
            assert victim in resident
            assert policy.victim() == victim  # a peek
            policy.evicted(victim)
            resident.discard(victim)
            victims.append(victim)
        assert len(policy) == len(resident)
    return victims


@pytest.fixture(params=list(FACTORIES))
def new_policy(request: pytest.FixtureRequest) -> PolicyFactory:
    return FACTORIES[request.param]


# ---- the contract, every policy -----------------------------------------------------


class TestPolicyContract:
    def test_is_a_policy(self, new_policy: PolicyFactory) -> None:
        policy = new_policy()
        assert isinstance(policy, Policy)
        assert len(policy) == 0
        assert repr(policy)

    def test_victim_is_a_peek(self, new_policy: PolicyFactory) -> None:
        policy = new_policy()
        for i in range(10):
            policy.admitted(f"k{i}", 10 * (i + 1), 0.1 * (i % 3))
        for i in range(0, 10, 3):
            policy.touched(f"k{i}")
        first = policy.victim()
        assert first in {f"k{i}" for i in range(10)}
        for _ in range(3):
            assert policy.victim() == first
        assert len(policy) == 10
        policy.evicted(first)  # the peeked key is still there to evict
        assert len(policy) == 9
        assert policy.victim() != first

    def test_victim_for_is_a_peek_of_a_resident_key(self, new_policy: PolicyFactory) -> None:
        policy = new_policy()
        with pytest.raises(KeyError):
            policy.victim_for(1)
        keys = {f"k{i}" for i in range(12)}
        for i in range(12):
            policy.admitted(f"k{i}", 10 ** (i % 4), 0.1 * (i % 3))
        for need in (1, 10, 999, 10**6):
            chosen = policy.victim_for(need)
            assert chosen in keys and policy.victim_for(need) == chosen
            assert len(policy) == 12
        # A need as large as every key leaves nothing to weigh: the answer is victim()'s.
        assert policy.victim_for(10**9) == policy.victim()
        policy.evicted(policy.victim_for(5))
        assert len(policy) == 11

    def test_victim_of_an_empty_policy_raises_key_error(self, new_policy: PolicyFactory) -> None:
        policy = new_policy()
        with pytest.raises(KeyError):
            policy.victim()
        policy.admitted("a", 10, 1.0)
        policy.removed("a")
        with pytest.raises(KeyError):
            policy.victim()
        policy.admitted("b", 10, 1.0)
        policy.evicted(policy.victim())
        with pytest.raises(KeyError):
            policy.victim()
        assert len(policy) == 0

    def test_removed_and_evicted_keys_are_never_offered_again(self, new_policy: PolicyFactory) -> None:
        policy = new_policy()
        keys = [f"k{i}" for i in range(30)]
        for i, key in enumerate(keys):
            policy.admitted(key, (i * 37) % 200 + 1, ((i * 13) % 7) / 7)
        for key in keys[::4]:
            policy.touched(key)
        removed = set(keys[::3])
        for key in removed:
            policy.removed(key)
        evicted: list[Hashable] = []
        while len(policy):
            victim = policy.victim()
            assert victim not in removed
            assert victim not in evicted
            policy.evicted(victim)
            evicted.append(victim)
        assert sorted(evicted) == sorted(set(keys) - removed)
        with pytest.raises(KeyError):
            policy.victim()

    def test_a_removed_key_can_be_admitted_again(self, new_policy: PolicyFactory) -> None:
        policy = new_policy()
        policy.admitted("a", 10, 1.0)
        policy.admitted("b", 10, 1.0)
        policy.removed("a")
        policy.admitted("a", 10, 1.0)  # an overwrite is removed then admitted
        assert len(policy) == 2
        offered = []
        while len(policy):
            offered.append(policy.victim())
            policy.evicted(offered[-1])
        assert sorted(offered) == ["a", "b"]

    def test_unknown_keys_raise_key_error_and_change_nothing(self, new_policy: PolicyFactory) -> None:
        policy = new_policy()
        policy.admitted("present", 10, 1.0)
        policy.admitted("gone", 10, 1.0)
        policy.removed("gone")
        for key in ["never", "gone"]:
            with pytest.raises(KeyError):
                policy.touched(key)
            with pytest.raises(KeyError):
                policy.removed(key)
            with pytest.raises(KeyError):
                policy.evicted(key)
            assert len(policy) == 1
        assert policy.victim() == "present"

    def test_forgotten_never_raises_and_leaves_resident_keys_alone(self, new_policy: PolicyFactory) -> None:
        policy, twin = new_policy(), new_policy()
        for p in (policy, twin):
            for i in range(8):
                p.admitted(f"k{i}", 10 * (i + 1), 0.1 * (i % 3))
            p.touched("k2")
            p.evicted(p.victim())
        for key in ["never", "k7", twin.victim()]:  # unknown, resident, the next victim
            policy.forgotten(key)
        assert len(policy) == len(twin) == 7
        assert drain(policy) == drain(twin)

    def test_recosted_of_an_unknown_key_raises_key_error_and_changes_nothing(self, new_policy: PolicyFactory) -> None:
        # The base class's recosted (removed, then admitted) fails before changing anything.
        policy = new_policy()
        policy.admitted("present", 10, 1.0)
        with pytest.raises(KeyError):
            policy.recosted("never", 10, 1.0)
        assert len(policy) == 1
        policy.evicted(policy.victim())
        assert len(policy) == 0
        with pytest.raises(KeyError):
            policy.victim()

    def test_recosted_keeps_the_key(self, new_policy: PolicyFactory) -> None:
        policy = new_policy()
        policy.admitted("a", 10, 1.0)
        policy.admitted("b", 10, 1.0)
        policy.recosted("a", 10, 5.0)
        assert len(policy) == 2
        offered = {policy.victim()}
        policy.evicted(policy.victim())
        offered.add(policy.victim())
        assert offered == {"a", "b"}

    def test_len_tracks_admitted_keys(self, new_policy: PolicyFactory) -> None:
        policy = new_policy()
        replay(policy, random_events(seed=11, count=2000))  # replay asserts len after every event

    @pytest.mark.parametrize("seed", range(4))
    def test_deterministic(self, new_policy: PolicyFactory, seed: int) -> None:
        events = random_events(seed, 3000)
        first = replay(new_policy(), events)
        second = replay(new_policy(), events)
        assert len(first) > 100
        assert first == second

    def test_keys_of_mixed_unorderable_types(self, new_policy: PolicyFactory) -> None:
        policy = new_policy()
        keys: list[Hashable] = ["s", 1, ("t", 2), frozenset({3}), None, 2.5]
        for key in keys:
            policy.admitted(key, 10, 1.0)  # equal priorities: no comparison of keys allowed
        for key in keys:
            policy.touched(key)
        offered = []
        while len(policy):
            offered.append(policy.victim())
            policy.evicted(offered[-1])
        assert sorted(map(repr, offered)) == sorted(map(repr, keys))


# ---- hand-written orderings ---------------------------------------------------------


def test_lru_recency() -> None:
    policy = LRU()
    for key in "abc":
        policy.admitted(key, 1, 0.0)
    assert policy.victim() == "a"
    policy.touched("a")
    assert policy.victim() == "b"
    policy.evicted("b")
    assert policy.victim() == "c"
    policy.touched("c")
    assert policy.victim() == "a"
    policy.removed("a")
    policy.admitted("a", 1, 0.0)  # an overwrite makes the key the most recent
    assert drain(policy) == ["c", "a"]


def test_lru_ignores_size_and_cost() -> None:
    policy = LRU()
    policy.admitted("big cheap", 10**6, 0.0)
    policy.admitted("small dear", 1, 100.0)
    assert policy.victim() == "big cheap"


@pytest.mark.parametrize("aging", [True, False])
def test_lfu_frequency_with_recency_tie_break(aging: bool) -> None:
    policy = LFU(aging=aging)
    for key in "abcd":
        policy.admitted(key, 1, 0.0)
    policy.touched("b")
    policy.touched("a")  # a and b read twice, b first
    policy.touched("d")
    policy.touched("d")  # d read three times
    assert policy.victim() == "c"
    policy.evicted("c")
    assert policy.victim() == "b"  # a tie is broken towards the one that reached it first
    policy.touched("b")
    assert policy.victim() == "a"
    policy.touched("a")
    policy.touched("a")
    assert drain(policy) == ["d", "b", "a"]  # d reached three reads before b did


def test_lfu_is_the_default_with_aging() -> None:
    assert LFU().aging is True
    assert isinstance(make_policy("lfu"), LFU)


def rounds_until_evicted(policy: Policy, hot: Hashable, limit: int) -> int | None:
    """Admit a new key per round and evict one victim; return the round that evicted ``hot``."""
    for round_ in range(1, limit + 1):
        policy.admitted(f"new{round_}", 1, 0.0)
        victim = policy.victim()
        policy.evicted(victim)
        if victim == hot:
            return round_
    return None


def test_lfu_aging_lets_old_popularity_fade() -> None:
    aged = LFU(aging=True)
    aged.admitted("hot", 1, 0.0)
    for _ in range(5):
        aged.touched("hot")  # frequency 6, then never read again
    assert rounds_until_evicted(aged, "hot", 50) == 6

    plain = LFU(aging=False)
    plain.admitted("hot", 1, 0.0)
    for _ in range(5):
        plain.touched("hot")
    assert rounds_until_evicted(plain, "hot", 50) is None  # squats forever without aging


def test_size_aware_largest_first_among_equally_recent() -> None:
    policy = SizeAware()
    policy.admitted("small", 10, 0.0)
    policy.admitted("big", 1000, 0.0)
    policy.admitted("mid", 100, 0.0)
    policy.touched("big")
    assert drain(policy) == ["big", "mid", "small"]


def test_size_aware_ties_go_to_least_recent() -> None:
    policy = SizeAware()
    for key in "abc":
        policy.admitted(key, 100, 0.0)
    policy.touched("a")
    assert drain(policy) == ["b", "c", "a"]


def test_size_aware_small_stale_keys_are_eventually_evicted() -> None:
    policy = SizeAware()
    policy.admitted("small", 10, 0.0)  # priority 0.1; each big victim raises the clock by 0.001
    for round_ in range(1, 300):
        policy.admitted(f"big{round_}", 1000, 0.0)
        victim = policy.victim()
        policy.evicted(victim)
        if victim == "small":
            break
    else:
        pytest.fail("a small key that is never read again was never evicted")
    assert 90 <= round_ <= 110


def test_size_aware_small_key_in_use_stays() -> None:
    policy = SizeAware()
    policy.admitted("small", 10, 0.0)
    for round_ in range(1, 300):
        policy.admitted(f"big{round_}", 1000, 0.0)
        policy.touched("small")
        victim = policy.victim()
        assert victim != "small"
        policy.evicted(victim)


def test_cost_aware_cheap_per_byte_first() -> None:
    policy = CostAware()
    policy.admitted("a", 100, 1.0)  # 0.01 s per byte
    policy.admitted("b", 10, 1.0)  # 0.1 s per byte
    policy.admitted("c", 100, 0.5)  # 0.005 s per byte
    policy.admitted("d", 1000, 1.0)  # 0.001 s per byte
    assert drain(policy) == ["d", "c", "a", "b"]


def test_cost_aware_recosted_keeps_frequency() -> None:
    policy = CostAware()
    policy.admitted("x", 1, 1.0)
    for _ in range(3):
        policy.touched("x")  # frequency 4: priority 4
    policy.admitted("y", 1, 3.0)  # priority 3
    assert policy.victim() == "y"
    policy.recosted("x", 1, 0.9)  # 4 * 0.9 = 3.6 keeps x above y; a reset frequency would give 0.9
    assert policy.victim() == "y"
    policy.recosted("x", 1, 0.5)  # 4 * 0.5 = 2 < 3
    assert policy.victim() == "x"


def test_cost_aware_ages_out_stale_expensive_keys() -> None:
    policy = CostAware()
    policy.admitted("dear", 1, 50.0)
    for round_ in range(1, 200):
        policy.admitted(f"new{round_}", 1, 1.0)
        victim = policy.victim()
        policy.evicted(victim)
        if victim == "dear":
            break
    else:
        pytest.fail("an expensive key that is never read again was never evicted")
    assert round_ == 50


# ---- differential test against cachetools -------------------------------------------


class Recording:
    """Mixin for a cachetools cache: remembers the keys it evicts, in order."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)  # type: ignore[call-arg]
        self.evicted: list[Hashable] = []

    def popitem(self) -> tuple[Hashable, Any]:
        key, value = super().popitem()  # type: ignore[misc]
        self.evicted.append(key)
        return key, value


class RecordingLRU(Recording, cachetools.LRUCache):  # type: ignore[misc]
    pass


class RecordingLFU(Recording, cachetools.LFUCache):  # type: ignore[misc]
    pass


def assign(reference: Any, key: Hashable, value: Any) -> None:
    """What cachetools does for ``cache[key] = value``: for LRU the same as a Chest's overwrite."""
    reference[key] = value


def reinsert(reference: Any, key: Hashable, value: Any) -> None:
    """The documented exception for LFU: a Chest's overwrite restarts the key's count (a new value
    enters), where cachetools counts the assignment as a use (test_lfu_overwrite_restarts_the_count)."""
    reference.pop(key, None)
    reference[key] = value


REFERENCES: dict[str, tuple[Callable[[], Policy], Callable[[int], Any], Callable[[Any, Hashable, Any], None]]] = {
    "lru": (LRU, RecordingLRU, assign),
    "lfu-no-aging": (lambda: LFU(aging=False), RecordingLFU, reinsert),
}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", list(REFERENCES))
def test_spill_order_matches_cachetools(tmp_path: Path, name: str, seed: int) -> None:
    new_policy, new_reference, overwrite = REFERENCES[name]
    capacity = [4, 8, 16, 32][seed]
    rng = random.Random(1000 + seed)
    spilled: list[Hashable] = []

    def record(event: Event) -> None:
        if event.kind in ("spill", "evict"):
            spilled.append(event.key)

    reference = new_reference(capacity)
    chest = Chest(path=tmp_path / "c", policy=new_policy(), sizeof=lambda v: 1, available_memory=capacity)
    try:
        chest.add_listener(record)
        values: dict[Hashable, Any] = {}  # every key in the chest, resident or spilled
        fresh = 0
        kinds_seen: set[str] = set()
        for _ in range(3000):
            roll = rng.random()
            resident = list(reference)
            spilled_now = [key for key in values if key not in reference]
            if roll < 0.3 or not values:
                kind, key = "put", f"k{fresh}"
                fresh += 1
            elif roll < 0.6 and resident:
                kind, key = "get", rng.choice(resident)
            elif roll < 0.85 and spilled_now:
                kind, key = "reread", rng.choice(spilled_now)
            elif roll < 0.95:
                kind, key = "overwrite", rng.choice(list(values))
            else:
                kind, key = "delete", rng.choice(list(values))
            kinds_seen.add(kind)

            if kind in ("put", "overwrite"):
                value = [key, rng.random()]  # a distinct object every time
                values[key] = value
                chest[key] = value
                overwrite(reference, key, value)  # (for a fresh or spilled key, both are an insert)
            elif kind == "get":
                assert key in chest.inmem
                assert chest[key] == values[key]
                assert reference[key] is values[key]
            elif kind == "reread":
                assert key not in chest.inmem
                assert chest[key] == values[key]
                with pytest.raises(KeyError):
                    reference[key]
                reference[key] = values[key]
            else:
                del chest[key]
                del values[key]
                reference.pop(key, None)

            assert set(chest.inmem) == set(reference), (kind, key)
            assert spilled == reference.evicted
        assert kinds_seen == {"put", "get", "reread", "overwrite", "delete"}
        assert len(spilled) > 300
        assert chest.stats.evictions > 0  # re-spilled loaded values (file kept) are in the order too
    finally:
        chest.drop()  # not close(): fsyncing hundreds of files is not what this test is about


def test_lfu_overwrite_restarts_the_count() -> None:
    # README: LFU(aging=False) orders as cachetools.LFUCache except that an overwrite restarts the
    # key's count, which cachetools counts as a use. Here 'a' is written three times and 'b' read
    # once: cachetools keeps 'a' (count 3), the Chest spills it (count 1, older than 'b' at 2).
    reference = RecordingLFU(2)
    chest = Chest(available_memory=2, sizeof=lambda v: 1, policy=LFU(aging=False))
    for target in (reference, chest):
        target["a"], target["b"] = 1, 2
        target["b"]
        target["a"], target["a"] = 10, 11
        target["c"] = 3
    assert reference.evicted == ["b"]
    assert chest.engine.spilled_keys == ["a"] and set(chest.inmem) == {"b", "c"}
    assert dict(chest.items()) == {"a": 11, "b": 2, "c": 3}
    chest.close()


# ---- costs that are not ordinary numbers (review findings; each failed before) --------------------


def test_a_nan_cost_is_refused_and_every_value_stays() -> None:
    chest = Chest(available_memory=300, sizeof=lambda v: 100, policy="cost")
    chest.put("a", ["a"], cost=1.0)
    with pytest.raises(ValueError, match="'b' is NaN"):
        chest.put("b", ["b"], cost=float("nan"))
    with pytest.raises(ValueError, match="'a' is NaN"):
        chest.set_cost("a", float("nan"))
    assert "b" not in chest and chest["a"] == ["a"]
    for i, cost in enumerate([0.4, 0.3, 0.5]):  # the cheapest is spilled first, as if NaN never came
        chest.put(i, [i], cost=cost)
    assert 1 not in chest.inmem and {0, 2} <= set(chest.inmem)
    chest.close()


def test_an_infinite_cost_does_not_stop_the_others_from_aging() -> None:
    # Evicting a value of infinite cost raised the clock to infinity: every later priority tied.
    policy = make_policy("cost")
    policy.admitted("forever", 1, math.inf)
    policy.evicted("forever")
    policy.admitted("dear", 1, 10.0)
    policy.admitted("cheap", 1, 1.0)
    assert policy.victim() == "cheap"


def test_a_cost_change_does_not_make_a_value_young_again() -> None:
    policy = make_policy("cost")
    policy.admitted("old", 1, 0.5)
    policy.admitted("filler", 1, 0.2)
    policy.evicted("filler")  # the clock moves to 0.2
    policy.admitted("new", 1, 0.4)  # priority 0.2 + 0.4
    policy.recosted("old", 1, 0.45)  # cheaper, and as old as before: 0 + 0.45 (before: 0.2 + 0.45)
    assert policy.victim() == "old"


@pytest.mark.parametrize("through", ["policy", "chest"])
def test_a_cost_change_keeps_a_values_place_among_equal_priorities(tmp_path: Path, through: str) -> None:
    # Before (helper-107): the recosted key was re-pushed as the newest of its ties, and "b" went first.
    if through == "policy":
        policy = make_policy("cost")
        policy.admitted("a", 1, 2.0)  # used first
        policy.admitted("b", 1, 1.0)
        policy.recosted("a", 1, 1.0)  # both at priority 1.0 now; a cost change is no use
        assert drain(policy) == ["a", "b"]
        return
    spilled: list[Hashable] = []
    chest = Chest(path=tmp_path / "c", policy="cost", sizeof=lambda value: 1, available_memory=2)
    chest.add_listener(lambda event: spilled.append(event.key) if event.kind == "spill" else None)
    chest.put("a", 1, cost=2.0)
    chest.put("b", 2, cost=1.0)
    chest.set_cost("a", 1.0)
    chest.put("c", 3, cost=1.0)
    assert spilled == ["a"] and dict(chest) == {"a": 1, "b": 2, "c": 3}
    chest.drop()
