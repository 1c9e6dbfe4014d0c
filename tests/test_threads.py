"""Eight threads of mixed operations on one Chest with a tiny budget, for every policy."""

from __future__ import annotations

import contextlib
import random
import sys
import threading
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import pytest
from helpers import assert_disk_files

from spillkit import Chest

THREADS = 8
OPS_PER_THREAD = 400
BUDGET = 2_000  # a few values at a time: almost every put spills
SHARED_KEYS = [f"shared{i}" for i in range(12)]


@pytest.fixture(autouse=True)
def frequent_thread_switches() -> Iterator[None]:
    """Switch threads far more often than the default 5 ms, so operations interleave."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def value_for(rng: random.Random, tag: str) -> bytes:
    size = rng.choice([10, 100, 300, 600, 1_200, rng.randint(1, 900), 2_500])  # 2 500 > BUDGET: straight to disk
    return (tag.encode() + b"|") * (size // (len(tag) + 1) + 1)


def worker(chest: Chest, tid: int, start: threading.Barrier, errors: list[BaseException]) -> dict[Hashable, bytes]:
    rng = random.Random(tid)
    private = [f"t{tid}-{i}" for i in range(8)]
    expected: dict[Hashable, bytes] = {}
    start.wait()
    try:
        for n in range(OPS_PER_THREAD):
            roll = rng.random()
            if roll < 0.5:  # this thread's own keys: results must be exact
                key = rng.choice(private)
                op = rng.choice(["put", "put", "get", "delete", "pop", "set_cost", "in"])
                if op == "put":
                    expected[key] = value_for(rng, f"{key}:{n}")
                    if rng.random() < 0.5:
                        chest[key] = expected[key]
                    else:
                        chest.put(key, expected[key], cost=rng.random())
                elif op == "get":
                    if key in expected:
                        assert chest[key] == expected[key]
                    else:
                        with pytest.raises(KeyError):
                            chest[key]
                elif op == "delete":
                    if key in expected:
                        del chest[key]
                        del expected[key]
                    else:
                        with pytest.raises(KeyError):
                            del chest[key]
                elif op == "pop":
                    assert chest.pop(key, None) == expected.pop(key, None)
                elif op == "set_cost":
                    if key in expected:
                        chest.set_cost(key, rng.random())
                    else:
                        with pytest.raises(KeyError):
                            chest.set_cost(key, 1.0)
                else:
                    assert (key in chest) == (key in expected)
            else:  # keys every thread races on: only "no exception other than KeyError"
                key = rng.choice(SHARED_KEYS)
                op = rng.choice(["put", "put", "get", "delete", "pop", "set_cost", "in", "len", "iter"])
                if op == "put":
                    chest[key] = value_for(rng, f"{key}:{tid}:{n}")
                elif op == "get":
                    try:
                        value = chest[key]
                    except KeyError:
                        pass
                    else:
                        assert value.startswith(f"{key}:".encode())
                elif op == "delete":
                    with contextlib.suppress(KeyError):
                        del chest[key]
                elif op == "pop":
                    value = chest.pop(key, None)
                    assert value is None or value.startswith(f"{key}:".encode())
                elif op == "set_cost":
                    with contextlib.suppress(KeyError):
                        chest.set_cost(key, rng.random())
                elif op == "in":
                    key in chest  # noqa: B015
                elif op == "len":
                    assert 0 <= len(chest) <= len(SHARED_KEYS) + THREADS * len(private)
                else:
                    keys = list(chest)
                    assert len(keys) == len(set(keys))
        # No other thread writes this thread's keys: every update must have survived.
        for key in private:
            if key in expected:
                assert chest[key] == expected[key]
            else:
                assert key not in chest
    except BaseException as error:
        errors.append(error)
    return expected


@pytest.mark.parametrize("pack_threshold", [0, 64 * 1024], ids=["files", "packed"])
def test_mixed_operations_from_eight_threads(tmp_path: Any, policy_name: str, pack_threshold: int) -> None:
    chest = Chest(path=tmp_path / "c", available_memory=BUDGET, policy=policy_name, pack_threshold=pack_threshold)
    chest._store.segment_bytes = 16 * 1024  # small segments: rotation and compaction race with the rest
    try:
        start = threading.Barrier(THREADS)
        errors: list[BaseException] = []
        results: dict[int, dict[Hashable, bytes]] = {}

        def run(tid: int) -> None:
            results[tid] = worker(chest, tid, start, errors)

        threads = [threading.Thread(target=run, args=(tid,), daemon=True) for tid in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads), "a thread hung"
        if errors:
            raise errors[0]

        # Every private update survived, checked again now that all threads are done.
        for tid, expected in results.items():
            for i in range(8):
                key = f"t{tid}-{i}"
                if key in expected:
                    assert chest[key] == expected[key]
                else:
                    assert key not in chest
        assert chest.stats.spills > 100
        assert chest.stats.direct_writes > 0
        assert_exact_accounting(chest, chest.engine.sizeof)
    finally:
        chest.drop()


def assert_exact_accounting(chest: Chest, sizeof: Callable[[Any], int]) -> None:
    by_id = {id(value): sizeof(value) for value in chest.inmem.values()}
    assert chest.memory_bytes == sum(by_id.values())
    assert chest.memory_bytes <= chest.available_memory
    assert_disk_files(chest)
    on_disk = set(chest._store)
    assert set(chest.inmem) | on_disk == set(chest)
    assert set(chest.engine.spilled_keys).isdisjoint(chest.inmem)
