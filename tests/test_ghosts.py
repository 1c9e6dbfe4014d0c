"""Policies that remember spilled keys (ARC's B1/B2, S3-FIFO's ghost queue) see only real returns from disk.

helper-107: a failed background write put the value back through ``admitted`` after the policy had been
told ``evicted``, and a put of a key deleted (or overwritten) while spilled came back the same way: ARC
took either for a B1 hit (its target ``p`` rose, the key went to T2) and S3-FIFO put the key straight
into its main queue. The engine now tells the policy ``forgotten`` in those cases. Real Chests on disk.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import IO, Any

import pytest

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
