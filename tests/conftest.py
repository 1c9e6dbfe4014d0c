"""Shared fixtures: a Chest factory run once per registered policy, and accounting checks."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_disk_files

import spillkit
from spillkit import Chest

ChestFactory = Callable[..., Chest]


def resident_bytes(inmem: Mapping[Hashable, Any], size_of: Callable[[Hashable, Any], int]) -> int:
    """Bytes of the distinct objects held in memory (an object under two keys counts once)."""
    by_id: dict[int, int] = {}
    for key, value in inmem.items():
        by_id[id(value)] = size_of(key, value)
    return sum(by_id.values())


def assert_accounting(chest: Chest) -> None:
    """Memory and disk byte counters equal what is really held; every key is in memory, on disk, or
    on its way there (write-behind). Checked under the engine's lock, which the writer commits under."""
    with chest.engine.lock:
        sizeof = chest.engine.sizeof
        assert chest.memory_bytes == resident_bytes(chest.inmem, lambda _key, value: sizeof(value))
        assert_disk_files(chest)  # files of their own (and the last flush's, copy-on-write) and segments
        on_disk = set(chest._store)
        writer = chest.engine._writer
        in_flight = set() if writer is None else {k for k, w in writer.pending.items() if w.evicting}
        assert set(chest.inmem) | on_disk | in_flight == set(chest)
        assert set(chest.engine.spilled_keys).isdisjoint(chest.inmem)
        nbytes = chest.engine.nbytes
        assert chest.spilled_total[0] == sum(nbytes(key) for key in chest.engine.spilled_keys)
        assert chest.engine.in_flight_bytes == sum(nbytes(key) for key in in_flight)


@pytest.fixture
def check_accounting() -> Callable[[Chest], None]:
    """The :func:`assert_accounting` check, for tests to call at interesting moments."""
    return assert_accounting


@pytest.fixture(params=spillkit.policy_names())
def policy_name(request: pytest.FixtureRequest) -> str:
    """Every registered policy name, one test run each."""
    return str(request.param)


@pytest.fixture
def chest_factory(policy_name: str, tmp_path: Path) -> Iterator[ChestFactory]:
    """``make(available_memory, **kwargs)`` builds a Chest with this run's policy in its own
    directory under ``tmp_path``; every Chest made is closed at teardown.

    Teardown closes with ``drop()`` (close and delete): ``close()`` on a Chest with a path
    flushes and fsyncs every value, which would dominate the suite's run time; the tests
    that are about ``close()`` call it themselves.
    """
    made: list[Chest] = []

    def make(available_memory: int | float | str = 10**9, **kwargs: Any) -> Chest:
        kwargs.setdefault("path", tmp_path / f"chest-{len(made)}")
        kwargs.setdefault("policy", policy_name)
        chest = Chest(available_memory=available_memory, **kwargs)
        made.append(chest)
        return chest

    yield make
    for chest in made:
        chest.drop()
