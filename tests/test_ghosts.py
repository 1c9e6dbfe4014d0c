"""Policies that remember spilled keys (ARC's B1/B2, S3-FIFO's ghost queue) see only real returns from disk.

helper-107: a failed background write put the value back through ``admitted`` after the policy had been
told ``evicted``, and a put of a key deleted (or overwritten) while spilled came back the same way: ARC
took either for a B1 hit (its target ``p`` rose, the key went to T2) and S3-FIFO put the key straight
into its main queue. The engine now tells the policy ``forgotten`` in those cases. Real Chests on disk.
"""

from __future__ import annotations

import os
import pickle
import threading
import warnings
from pathlib import Path
from typing import IO, Any

import pytest
from helpers import child_exit_code

from spillkit import ARC, S3FIFO, Chest, Policy


def where(policy: Policy, key: str) -> str:
    """Which of the policy's lists holds the resident ``key``."""
    if isinstance(policy, ARC):
        return "T1" if key in policy._t1 else "T2"
    assert isinstance(policy, S3FIFO)
    return "S" if key in policy._small else "M"


def state(policy: Policy) -> tuple[Any, ...]:
    if isinstance(policy, ARC):
        return policy.target, list(policy._t1), list(policy._t2), list(policy._b1), list(policy._b2)
    assert isinstance(policy, S3FIFO)
    return list(policy._small), list(policy._main), list(policy._ghost)


def one_byte(value: Any) -> int:
    return 1


@pytest.mark.parametrize("make", [ARC, S3FIFO], ids=["arc", "s3fifo"])
@pytest.mark.parametrize("write_behind", [False, True], ids=["sync", "write-behind"])
@pytest.mark.parametrize("how", ["delete", "overwrite", "pop"])
def test_a_new_value_under_a_spilled_key_is_no_return_from_disk(
    tmp_path: Path, make: type[Policy], write_behind: bool, how: str
) -> None:
    policy = make()
    chest = Chest(path=tmp_path / "c", policy=policy, sizeof=one_byte, available_memory=3, write_behind=write_behind)
    for key in "abcd":
        chest[key] = [key]  # "a" is spilled to make room for "d"
    chest.wait_for_writes()
    assert "a" not in chest.inmem
    if how == "delete":
        del chest["a"]
    elif how == "pop":
        assert chest.pop("a") == ["a"]
    del chest["d"]
    chest["a"] = ["new"]  # an overwrite, for "overwrite"; a new key for the others
    with chest.engine.lock:
        assert where(policy, "a") == ("T1" if make is ARC else "S")
        if isinstance(policy, ARC):
            assert policy.target == 0.0
    assert dict(chest) == {"a": ["new"], "b": ["b"], "c": ["c"]}
    chest.drop()


def refusing_a(value: Any, file: IO[bytes]) -> None:
    if value == ["a"]:
        raise OSError(28, "No space left on device (injected)")
    pickle.dump(value, file)


@pytest.mark.parametrize("make", [ARC, S3FIFO], ids=["arc", "s3fifo"])
def test_a_failed_background_write_leaves_the_policy_as_a_failed_synchronous_one(
    tmp_path: Path, make: type[Policy]
) -> None:
    states: list[Any] = []
    for write_behind in (False, True):
        policy = make()
        chest = Chest(
            path=tmp_path / str(write_behind), policy=policy, sizeof=one_byte, available_memory=3,
            dump=refusing_a, load=pickle.load, write_behind=write_behind,
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (the refused write is warned: tests/test_faults.py)
            for key in "abcd":
                chest[key] = [key]  # "a" is the first victim; its write fails, so "b" goes instead
            chest.wait_for_writes()
            chest["e"] = ["e"]  # one more round: the failed "a" is offered again, and fails again
            chest.wait_for_writes()
            with chest.engine.lock:  # (before any read: a read is a use)
                assert where(policy, "a") == ("T1" if make is ARC else "S")
                assert "a" not in str(state(policy)[-2:])  # in no ghost list
                states.append(state(policy)[0] if isinstance(policy, ARC) else None)
            assert "a" in chest.inmem and dict(chest) == {key: [key] for key in "abcde"}
            chest.drop()
    assert states[0] == states[1]  # ARC's target: 0.0 both ways


class GatedOnA:
    """A value whose pickling (on the writer thread) waits, for key "a" only, until the test lets it go."""

    entered = threading.Event()
    release = threading.Event()

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __reduce__(self) -> tuple[Any, ...]:
        if self.tag == "a":
            GatedOnA.entered.set()
            assert GatedOnA.release.wait(30)
        return (str, (self.tag,))


@pytest.mark.parametrize("make", [ARC, S3FIFO], ids=["arc", "s3fifo"])
def test_a_forked_child_takes_its_writes_in_flight_back_as_they_were(tmp_path: Path, make: type[Policy]) -> None:
    # Before (helper-108): the child took the value back through admitted() after evicted(): a ghost hit.
    GatedOnA.entered.clear()
    GatedOnA.release.clear()
    policy = make()
    chest = Chest(path=tmp_path / "c", policy=policy, sizeof=one_byte, available_memory=3, write_behind=True)
    for key in "abcd":
        chest[key] = GatedOnA(key)  # "a" goes to the writer thread, which waits in its pickling
    assert GatedOnA.entered.wait(30)
    pid = os.fork()
    if pid == 0:  # the child: "a" is back in memory, as a new key would be
        with chest.engine.lock:
            fresh = where(policy, "a") == ("T1" if make is ARC else "S")
            fresh = fresh and "a" not in str(state(policy)[-2:]) and getattr(policy, "target", 0.0) == 0.0
        os._exit(0 if fresh else 1)
    GatedOnA.release.set()
    assert child_exit_code(pid) == 0, "the child took its write in flight back as a ghost hit"
    chest.wait_for_writes()
    chest.drop()


@pytest.mark.parametrize("make", [ARC, S3FIFO], ids=["arc", "s3fifo"])
def test_a_value_over_the_budget_under_a_spilled_key_leaves_no_ghost(tmp_path: Path, make: type[Policy]) -> None:
    # Before (helper-108): written straight to disk, it left the old value's ghost in ARC's B1 or
    # S3-FIFO's ghost queue, counted in their ghost bytes until the key's next put or delete.
    policy = make()
    sizes = {"big": 10}
    chest = Chest(path=tmp_path / "c", policy=policy, sizeof=lambda value: sizes.get(value[0], 1), available_memory=3)
    for key in "abc":
        chest[key] = [key]
    assert chest["b"] == ["b"]  # read: with T1 not filling memory, ARC keeps the ghost of what it spills
    chest["d"] = ["d"]  # "a" is spilled: its ghost is remembered
    with chest.engine.lock:
        assert "a" in str(state(policy)[-2:])
    chest["a"] = ["big"]  # over the budget: straight to disk
    with chest.engine.lock:
        assert "a" not in str(state(policy)[-2:])
    assert chest["a"] == ["big"] and len(chest) == 4
    chest.drop()


@pytest.mark.parametrize("make", [ARC, S3FIFO], ids=["arc", "s3fifo"])
def test_a_policy_serving_a_second_chest_after_close_remembers_none_of_the_first(
    tmp_path: Path, make: type[Policy]
) -> None:
    # Before (helper-108): close() left the first Chest's ghosts, and the second Chest's new "a" was a
    # return (ARC: T2, p raised; S3-FIFO: main queue).
    policy = make()
    first = Chest(path=tmp_path / "one", policy=policy, sizeof=one_byte, available_memory=3)
    for key in "abcd":
        first[key] = [key]
    first.close()
    second = Chest(path=tmp_path / "two", policy=policy, sizeof=one_byte, available_memory=3)
    second["a"] = ["unrelated"]
    with second.engine.lock:
        assert where(policy, "a") == ("T1" if make is ARC else "S")
        assert state(policy)[-2:] == ([], [])  # no ghost
    second.drop()
    Chest(path=tmp_path / "one").drop()


@pytest.mark.parametrize("make", [ARC, S3FIFO], ids=["arc", "s3fifo"])
def test_a_put_over_a_spilled_key_that_fails_keeps_its_ghost(tmp_path: Path, make: type[Policy]) -> None:
    # helper-111: forgotten before the round that makes room, a put that failed there (the quota refused
    # the victim's write) had stored nothing, yet the old value's ghost was gone, and the replay (which
    # has no line for a failed put) no longer matched the live run.
    from spillkit.errors import DiskQuotaExceeded

    policy = make()
    chest = Chest(
        path=tmp_path / "c", available_memory=30, policy=policy, sizeof=lambda value: 10,
        pack_threshold=0, available_disk=2000,
    )  # fmt: skip
    chest["a"] = "a" * 10  # its file fits the quota
    chest["b"], chest["c"] = "b" * 5000, "c" * 5000  # theirs do not
    assert chest["b"] == "b" * 5000  # read: with T1 not filling memory, ARC keeps the ghost of what it spills
    chest["d"] = "d" * 10  # spills "a"
    with pytest.raises(DiskQuotaExceeded):
        chest["a"] = "new"  # making room must write "b" or "c": refused, and nothing is stored
    with chest.engine.lock:
        assert "a" in str(state(policy)[-2:])  # still a ghost
    del chest["d"]
    assert chest["a"] == "a" * 10  # a return from disk, which the policy counts as one
    with chest.engine.lock:
        assert where(policy, "a") == ("T2" if make is ARC else "M")
    chest.drop()
