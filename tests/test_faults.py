"""Bad input gets a clear error, and nothing is lost.

Every case shows the error a user sees and then checks that every other value
is still there, correct, and accounted for to the byte. Faults are injected
with thin wrappers around the real disk store or codec; everything else is the
real disk under ``tmp_path``.
"""

from __future__ import annotations

import copy
import errno
import gc
import math
import os
import pickle
import shutil
import sys
import tempfile
import threading
import types
import warnings
import zlib
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import ConstRepr, MutableKey, assert_disk_files, crash_copy, disk_files

import spillkit
import spillkit.storage
from spillkit import LRU, Chest, CorruptSpillFile, DiskQuotaExceeded, PickleCodec, SpillError, SpillWarning
from spillkit.manifest import _HEADER as MANIFEST_HEADER
from spillkit.manifest import _MAGIC as MANIFEST_MAGIC
from spillkit.manifest import MANIFEST_NAME, UnreadableKey
from spillkit.naming import candidate_name
from spillkit.security import KEY_FILE_NAME, sign

UNIT = 100  # every value weighs this much unless a test says otherwise


def unit_sizeof(value: Any) -> int:
    return UNIT


def len_sizeof(value: Any) -> int:
    """Bytes count by length; everything else weighs UNIT."""
    return len(value) if isinstance(value, (bytes, bytearray)) else UNIT


def payload(i: int, n: int = 50) -> bytes:
    """A distinct bytes object per ``i`` (literals like b"x" * 40 are shared constants)."""
    return bytes([i % 256]) * n + str(i).encode()


def spill_files(path: str) -> dict[str, int]:
    """Files of their own and shared segment files, with their sizes."""
    return disk_files(path)


def temp_files(path: str) -> list[str]:
    return [n for n in os.listdir(path) if ".tmp-" in n]


def assert_accounting(chest: Chest) -> None:
    """Byte counters equal what is really held; every key is in memory or on disk, never lost."""
    sizeof = chest.engine.sizeof
    by_id = {id(v): int(sizeof(v)) for v in chest.inmem.values()}
    assert chest.memory_bytes == sum(by_id.values())
    assert_disk_files(chest)
    on_disk = set(chest._store)
    assert set(chest.inmem) | on_disk == set(chest)
    assert temp_files(chest.path) == []


def assert_values(chest: Chest, expected: dict[Hashable, Any]) -> None:
    assert len(chest) == len(expected)
    assert set(chest) == set(expected)
    for key, value in expected.items():
        assert chest[key] == value, key


@pytest.fixture
def make_chest(tmp_path: Path) -> Iterator[Callable[..., Chest]]:
    """Chests in their own directories under tmp_path, closed (dropped) at teardown.

    One file per value unless a test says otherwise: these faults are injected into, and
    damage, a value's own file; tests/test_segments.py does the same to packed records.
    """
    made: list[Chest] = []

    def make(**kwargs: Any) -> Chest:
        kwargs.setdefault("path", tmp_path / f"chest-{len(made)}")
        kwargs.setdefault("pack_threshold", 0)
        kwargs.setdefault("available_memory", 2.5 * UNIT)
        kwargs.setdefault("sizeof", unit_sizeof)
        chest = Chest(**kwargs)
        made.append(chest)
        return chest

    yield make
    for chest in made:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            chest.drop()


def spill_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, SpillWarning)]


# ---- values that cannot be serialized ------------------------------------------------


class ReduceRaises:
    """Pickling this raises from __reduce__ (as a C extension handle or a socket would)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __reduce__(self) -> Any:
        raise RuntimeError(f"{self.tag} refuses to be pickled")


def unserializable(kind: str) -> Any:
    if kind == "lock":
        return threading.Lock()
    if kind == "reduce-raises":
        return ReduceRaises("bad")
    if kind == "generator":
        return (i for i in range(3))
    raise AssertionError(kind)


UNSERIALIZABLE_KINDS = ["lock", "reduce-raises", "generator"]
EXPECTED_ERROR = {"lock": TypeError, "reduce-raises": RuntimeError, "generator": TypeError}


# ---- 1. unhashable keys --------------------------------------------------------------


@pytest.mark.parametrize("key", [[1], {"a": 1}, {1}, bytearray(b"k")], ids=["list", "dict", "set", "bytearray"])
def test_unhashable_key_raises_type_error_like_a_dict(make_chest: Callable[..., Chest], key: Any) -> None:
    chest = make_chest()
    expected = {f"k{i}": payload(i) for i in range(5)}
    chest.update(expected)
    files_before = spill_files(chest.path)
    for operation in (
        lambda: chest.__setitem__(key, 1),
        lambda: chest.put(key, 1, cost=1.0),
        lambda: chest[key],
        lambda: chest.__delitem__(key),
        lambda: key in chest,
        lambda: chest.get(key),
        lambda: chest.pop(key),
    ):
        with pytest.raises(TypeError, match="unhashable"):
            operation()
    with pytest.raises(TypeError, match="unhashable"):
        {}[key] = 1  # the same error a dict gives
    assert spill_files(chest.path) == files_before
    assert_values(chest, expected)
    assert_accounting(chest)


class _Alive:
    """A value that can be weakly referenced: alive elsewhere, a flush checks it against its file."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Alive) and other.text == self.text


@pytest.mark.parametrize("where", ["spilled", "resident", "spilled and alive"])
@pytest.mark.parametrize("pack_threshold", [0, 64 * 1024], ids=["files", "packed"])
def test_a_key_whose_hash_changed_is_named_by_flush_and_close_and_nothing_else_is_lost(
    tmp_path: Path, where: str, pack_threshold: int
) -> None:
    # Before (helper-61): flush raised a bare KeyError (packed) or left the key out silently
    # (files); close then shut the Chest with no manifest, and a reopen found no key at all.
    # A temporary Chest's close raised KeyError every time and left its directory. A spilled value
    # still alive elsewhere was written by the flush under a new name, a file no manifest named (helper-62).
    resident = where == "resident"
    path = tmp_path / "c"
    chest = Chest(path=path, available_memory=400, sizeof=lambda v: 100, pack_threshold=pack_threshold)
    key = MutableKey(1)
    alive = _Alive("mutable")
    chest[key] = alive if where == "spilled and alive" else "mutable"
    expected = {f"k{i}": f"v{i}" for i in range(3 if resident else 5)}
    chest.update(expected)
    assert (key in chest.inmem) == resident
    key.n = 2  # now neither found by the Chest nor by a dict
    with pytest.raises(SpillError, match="no longer found by its own hash") as flushed:
        chest.flush()
    assert "MutableKey(2)" in str(flushed.value)
    assert all(chest[k] == v for k, v in expected.items()) and len(chest) == len(expected) + 1  # as a dict
    if pack_threshold == 0:  # one file per key written, and no stray one
        assert len([n for n in os.listdir(path) if not n.startswith(".")]) == (len(expected) + 1 - resident)
    with pytest.raises(SpillError, match="no longer found by its own hash"):
        chest.close()
    assert chest.closed
    reopened = Chest(path=path, available_memory=400)
    assert dict(reopened.items()) == expected  # every other key, committed
    reopened.drop()

    temporary = Chest(available_memory=400, sizeof=lambda v: 100, pack_threshold=pack_threshold)
    other = MutableKey(1)
    temporary[other] = "mutable"
    temporary.update(expected)
    other.n = 2
    with pytest.raises(SpillError, match="clear\\(\\) could not delete key MutableKey\\(2\\)"):
        temporary.clear()  # every other key goes
    assert len(temporary) == 1
    directory = temporary.path
    temporary.close()  # a temporary Chest drops its directory, that key and all
    assert not os.path.exists(directory)


@pytest.mark.parametrize("measured", [-10_000, math.nan, math.inf, "12", None, np.complex64(12)], ids=repr)
def test_a_size_that_is_not_a_count_of_bytes_is_refused_naming_the_key(
    make_chest: Callable[..., Chest], measured: Any
) -> None:
    # Before: a negative size drove memory_bytes below 0 (nothing spilled again, memory grew without
    # limit); NaN and infinity failed in int() without naming sizeof or the key.
    sizes: dict[str, Any] = {}
    chest = make_chest(sizeof=lambda value: sizes.get(value, 10))
    expected = {f"k{i}": f"v{i}" for i in range(5)}
    chest.update(expected)
    sizes["bad"] = measured
    with pytest.raises(ValueError, match=r"sizeof returned .* for the value of 'odd'.*nothing was stored"):
        chest["odd"] = "bad"
    assert "odd" not in chest
    assert_values(chest, expected)
    assert_accounting(chest)
    assert chest.memory_bytes >= 0


_REGISTRY = {"v1": "schema"}


def _rebuild(tag: str, payload: str) -> Any:
    return (_REGISTRY[tag], payload)  # KeyError while the registry lacks the tag (say, a plugin not loaded)


class NeedsRegistry:
    def __init__(self, payload: str) -> None:
        self.payload = payload

    def __reduce__(self) -> Any:
        return _rebuild, ("v1", self.payload)


def test_a_key_error_raised_while_loading_is_not_taken_for_a_missing_key(
    make_chest: Callable[..., Chest], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: the KeyError passed through, so get() answered its default, setdefault() replaced the
    # stored value and pop(key, default) raised KeyError for a key that is there.
    chest = make_chest()
    chest["precious"] = NeedsRegistry("data")
    chest.update({f"k{i}": payload(i) for i in range(4)})
    assert "precious" not in chest.inmem
    monkeypatch.setitem(_REGISTRY, "v1", None)
    del _REGISTRY["v1"]
    for read in (lambda: chest["precious"], lambda: chest.get("precious", "default"),
                 lambda: chest.setdefault("precious", "fresh"), lambda: chest.pop("precious", "default")):  # fmt: skip
        with pytest.raises(spillkit.LoadFailed, match="'precious'") as info:
            read()
        assert isinstance(info.value.__cause__, KeyError)
    _REGISTRY["v1"] = "schema"
    assert chest["precious"] == ("schema", "data")  # nothing was replaced or lost


def test_sizes_of_any_real_number_type_are_accepted(make_chest: Callable[..., Chest]) -> None:
    import decimal

    import numpy as np

    class BigInt(int):
        pass

    for measured, whole in [(np.int64(7), 7), (np.array(3.0), 3), (decimal.Decimal("4.5"), 4), (BigInt(2**70), 2**70)]:
        chest = make_chest(sizeof=lambda value, m=measured: m)
        chest["k"] = "v"  # before: the 0-d array and Decimal were refused, the big int subclass overflowed
        assert chest.engine.nbytes("k") == whole


# ---- 2. values that cannot be serialized ----------------------------------------------


@pytest.mark.timeout(30)  # a set-aside that fails would loop on the same head forever
@pytest.mark.parametrize("policy", spillkit.policy_names())
@pytest.mark.parametrize("kind", UNSERIALIZABLE_KINDS)
def test_unserializable_value_stays_in_memory_and_never_blocks_eviction(
    make_chest: Callable[..., Chest], kind: str, policy: str
) -> None:
    chest = make_chest(policy=policy)
    bad = unserializable(kind)
    expected: dict[Hashable, Any] = {}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        chest["bad"] = bad  # the oldest key: the first one any policy offers
        for i in range(8):
            chest[f"k{i}"] = expected[f"k{i}"] = payload(i)
            assert chest.memory_bytes <= chest.available_memory
        for key, value in expected.items():  # reads make room again; the bad key is not retried
            assert chest[key] == value
        assert chest["bad"] is bad  # a hit on a set-aside key works
    messages = spill_warnings(record)
    assert len(messages) == 1, messages
    assert "'bad'" in messages[0]
    assert chest.stats.spill_failures == 1
    assert chest.stats.unspillable == 1
    assert chest.engine.unspillable_keys == {"bad"}
    assert chest.inmem["bad"] is bad
    assert chest.memory_bytes <= chest.available_memory
    # the engine spilled the others instead: every good key except the resident ones has a file
    assert chest.stats.spills >= len(expected) - 1
    assert set(chest._store) | set(chest.inmem) == set(expected) | {"bad"}
    assert_accounting(chest)

    # Overwriting the key with a good value makes it an ordinary, spillable key again.
    chest["bad"] = "fine now"
    for i in range(8, 11):
        chest[f"k{i}"] = expected[f"k{i}"] = payload(i)
    assert "bad" in chest._store
    assert chest.engine.unspillable_keys == frozenset()
    expected["bad"] = "fine now"
    assert_values(chest, expected)
    assert_accounting(chest)


@pytest.mark.parametrize("kind", UNSERIALIZABLE_KINDS)
def test_unserializable_value_can_be_deleted_and_flush_names_it(make_chest: Callable[..., Chest], kind: str) -> None:
    chest = make_chest()
    expected = {f"k{i}": payload(i) for i in range(4)}
    with pytest.warns(SpillWarning):
        chest["bad"] = unserializable(kind)
        chest.update(expected)
    with pytest.raises(SpillError, match="'bad'"):
        chest.flush()
    # every other value was flushed: a restart (on a copy of the directory, which this Chest keeps) gets them all
    other = Chest(path=crash_copy(chest), available_memory=2.5 * UNIT, sizeof=unit_sizeof)
    assert_values(other, expected)
    del chest["bad"]
    assert "bad" not in chest
    assert chest.engine.unspillable_keys == frozenset()
    chest.flush()
    assert_values(chest, expected)
    assert_accounting(chest)


@pytest.mark.parametrize("resident", [True, False], ids=["old-resident", "old-spilled"])
@pytest.mark.parametrize("kind", UNSERIALIZABLE_KINDS)
def test_unserializable_value_larger_than_budget_raises_and_stores_nothing(
    make_chest: Callable[..., Chest], kind: str, resident: bool
) -> None:
    bad = unserializable(kind)
    chest = make_chest(sizeof=lambda v: 10 * UNIT if v is bad else UNIT)
    expected: dict[Hashable, Any] = {"target": "old value"}
    chest["target"] = "old value"
    for i in range(4 if not resident else 0):
        chest[f"k{i}"] = expected[f"k{i}"] = payload(i)
    assert ("target" in chest.inmem) is resident
    files_before = {n: Path(chest.path, n).read_bytes() for n in spill_files(chest.path)}
    with pytest.raises(EXPECTED_ERROR[kind]) as info:
        chest["target"] = bad
    assert "'target'" in str(info.value) + "".join(getattr(info.value, "__notes__", []))
    with pytest.raises(EXPECTED_ERROR[kind]):
        chest["new"] = bad
    assert "new" not in chest
    assert {n: Path(chest.path, n).read_bytes() for n in spill_files(chest.path)} == files_before
    assert ("target" in chest.inmem) is resident
    assert_values(chest, expected)
    assert_accounting(chest)


@pytest.mark.parametrize("kind", UNSERIALIZABLE_KINDS)
def test_unserializable_value_larger_than_budget_stays_in_memory_while_deferred(
    make_chest: Callable[..., Chest], kind: str
) -> None:
    # Deferred (dask's ChestCallback, whose later tasks read the value), the put raised and the whole
    # computation failed; a smaller value that cannot be pickled already stayed in memory, warned.
    bad = unserializable(kind)
    chest = make_chest(sizeof=lambda v: 10 * UNIT if v is bad else UNIT)
    expected: dict[Hashable, Any] = {f"k{i}": payload(i) for i in range(4)}
    with chest.deferred():
        chest.update(expected)
        with pytest.warns(SpillWarning, match="'big' cannot be serialized; it stays in memory"):
            chest["big"] = bad
        assert chest["big"] is bad and "big" in chest.inmem
    assert chest.stats.unspillable == 1
    assert chest["big"] is bad  # settling after the block passes over it
    del chest["big"]
    assert_values(chest, expected)
    assert_accounting(chest)


# ---- 3. lambdas and closures -------------------------------------------------------------


def test_lambdas_and_closures_round_trip_through_disk(make_chest: Callable[..., Chest]) -> None:
    chest = make_chest(available_memory=UNIT)  # one value in memory: everything else is spilled
    offset = 7

    def make_adder(n: int) -> Callable[[int], int]:
        def add(x: int) -> int:
            return x + n + offset

        return add

    class Local:  # a class defined inside a function: plain pickle cannot find it
        def __init__(self, v: int) -> None:
            self.v = v

        def double(self) -> int:
            return 2 * self.v

    chest["square"] = lambda x: x * x
    chest["adder"] = make_adder(3)
    chest["local"] = Local(21)
    chest["pad"] = 0
    assert {"square", "adder", "local"} <= set(chest._store)  # really spilled
    assert chest.stats.unspillable == 0
    assert chest.stats.spill_failures == 0
    assert chest["square"](9) == 81
    assert chest["adder"](1) == 11
    assert chest["local"].double() == 42
    assert_accounting(chest)


# ---- 4. disk write failures ------------------------------------------------------------------


class FaultSwitch:
    """Fails every write from the ``fail_from``-th on (1-based) while armed."""

    def __init__(self, fail_from: int, code: int) -> None:
        self.fail_from = fail_from
        self.code = code
        self.armed = True
        self.calls = 0
        self.failures = 0

    def should_fail(self) -> bool:
        self.calls += 1
        if self.armed and self.calls >= self.fail_from:
            self.failures += 1
            return True
        return False

    def error(self) -> OSError:
        return OSError(self.code, os.strerror(self.code))


class FailingCodec:
    """The real PickleCodec, except that encoding raises OSError when the switch says so."""

    name = "pickle"

    def __init__(self, switch: FaultSwitch) -> None:
        self.switch = switch
        self.inner = PickleCodec()

    def encode(self, obj: Any) -> list[Any]:
        if self.switch.should_fail():
            raise self.switch.error()
        return self.inner.encode(obj)

    def decode(self, data: memoryview) -> Any:
        return self.inner.decode(data)


def inject(how: str, switch: FaultSwitch, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Return Chest kwargs (and patch the store) so that writes fail as ``switch`` says."""
    if how == "codec":
        return {"codec": FailingCodec(switch)}
    real_write_all = spillkit.storage._write_all

    def write_all_then_fail(fd: int, frames: list[Any]) -> None:
        if switch.should_fail():
            real_write_all(fd, frames[:1])  # half a file reaches the disk, then the device fails
            raise switch.error()
        real_write_all(fd, frames)

    monkeypatch.setattr(spillkit.storage, "_write_all", write_all_then_fail)
    return {}


@pytest.mark.timeout(30)  # retrying a failing disk inside one put must not loop forever
@pytest.mark.parametrize("policy", spillkit.policy_names())
@pytest.mark.parametrize("fail_from", [1, 3])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
@pytest.mark.parametrize("how", ["codec", "mid-write"])
def test_disk_write_failure_keeps_values_in_memory_until_writes_work(
    make_chest: Callable[..., Chest],
    monkeypatch: pytest.MonkeyPatch,
    how: str,
    code: int,
    fail_from: int,
    policy: str,
) -> None:
    switch = FaultSwitch(fail_from, code)
    chest = make_chest(policy=policy, **inject(how, switch, monkeypatch))
    expected = {}
    with pytest.warns(SpillWarning, match=os.strerror(code)):
        for i in range(8):
            chest[f"k{i}"] = expected[f"k{i}"] = payload(i)
        assert_values(chest, expected)
    assert switch.failures > 0
    assert chest.stats.spill_failures == switch.failures
    assert chest.stats.unspillable == 0  # a disk error is not the value's fault: it will be retried
    assert chest.engine.unspillable_keys == frozenset()
    assert chest.memory_bytes > chest.available_memory  # allowed while the disk fails
    assert temp_files(chest.path) == []
    assert_accounting(chest)

    switch.armed = False
    chest["after"] = expected["after"] = payload(99)
    assert chest.memory_bytes <= chest.available_memory
    assert_accounting(chest)
    assert_values(chest, expected)
    assert chest.stats.spill_failures == switch.failures
    assert temp_files(chest.path) == []


class TooLargeForTheDisk:
    """Bytes whose file the disk refuses (EFBIG, as a file system's size limit would); smaller ones it takes."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce__(self) -> Any:
        return (bytes, (self.data,))


class ReduceRaisesOSError:
    """Pickling this raises OSError from __reduce__ (an object that reads a file to pickle itself)."""

    def __reduce__(self) -> Any:
        raise OSError(errno.EIO, "the file this object pickles from is gone")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("policy", spillkit.policy_names())
@pytest.mark.parametrize("how", ["file-too-large", "reduce-oserror"])
def test_one_value_the_disk_refuses_does_not_stop_the_others_spilling(
    make_chest: Callable[..., Chest], monkeypatch: pytest.MonkeyPatch, how: str, policy: str
) -> None:
    # Before: that victim stayed first in line (LRU, LFU, FIFO, size...) and every later round failed on it
    # again, so nothing was spilled any more and memory grew without bound (800 KB over a 100 KB budget).
    real_write_all = spillkit.storage._write_all

    def refuses_large_files(fd: int, frames: list[Any]) -> None:
        if sum(memoryview(frame).nbytes for frame in frames) > 20 * UNIT:
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
        real_write_all(fd, frames)

    monkeypatch.setattr(spillkit.storage, "_write_all", refuses_large_files)
    bad: Any = TooLargeForTheDisk(b"x" * 30 * UNIT) if how == "file-too-large" else ReduceRaisesOSError()
    sizeof = lambda v: 30 * UNIT if v is bad else len_sizeof(v)  # the largest value too
    chest = make_chest(policy=policy, sizeof=sizeof, available_memory=100 * UNIT)
    expected: dict[Hashable, Any] = {}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        chest["bad"] = bad  # the oldest key, and for "size" the largest: the first victim
        for i in range(100):
            chest[f"k{i}"] = expected[f"k{i}"] = payload(i, 8 * UNIT)
            assert chest.memory_bytes <= chest.available_memory + 8 * UNIT  # at most one value over
    assert chest.stats.spill_failures >= 1
    assert chest.stats.spills >= 80  # the others were written
    assert all("'bad'" in message for message in spill_warnings(record))
    assert chest.inmem["bad"] is bad  # never lost, and never raised into a put
    assert chest.stats.unspillable == 0  # an OSError may pass: it is tried again once others are written
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert_values(chest, expected | {"bad": bad})  # loads make room: "bad" is tried again, and refused
    assert all("'bad'" in message for message in spill_warnings(record))
    assert_accounting(chest)


@pytest.mark.parametrize("how", ["codec", "mid-write"])
def test_disk_failure_on_direct_write_raises_and_keeps_the_old_value(
    make_chest: Callable[..., Chest], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    switch = FaultSwitch(1, errno.ENOSPC)
    switch.armed = False
    chest = make_chest(sizeof=len_sizeof, **inject(how, switch, monkeypatch))
    expected: dict[Hashable, Any] = {f"k{i}": payload(i, UNIT) for i in range(4)}
    chest.update(expected)
    spilled = next(k for k in expected if k not in chest.inmem)
    resident = next(k for k in expected if k in chest.inmem)
    switch.armed = True
    for key in (spilled, resident, "new"):
        with pytest.raises(OSError) as info:
            chest[key] = payload(7, 10 * UNIT)  # larger than the budget: must go straight to disk
        assert info.value.errno == errno.ENOSPC
        assert any("nothing was stored" in note and repr(key) in note for note in info.value.__notes__)
    assert chest.stats.spill_failures == 3
    assert "new" not in chest
    assert resident in chest.inmem
    assert temp_files(chest.path) == []
    with pytest.warns(SpillWarning, match="disk write failed"):  # loading needs room, and spilling fails
        assert_values(chest, expected)
    assert_accounting(chest)


# ---- 5. available_disk ---------------------------------------------------------------------


@pytest.mark.parametrize("pack_threshold", [0, 64 * 1024], ids=["files", "packed"])
def test_disk_quota_refuses_the_put_and_keeps_everything_else(
    make_chest: Callable[..., Chest], pack_threshold: int
) -> None:
    cap = 1000
    chest = make_chest(sizeof=len_sizeof, available_disk=cap, pack_threshold=pack_threshold)
    expected: dict[Hashable, Any] = {}
    for i in range(50):
        key, value = f"k{i}", payload(i, UNIT)
        try:
            chest[key] = value
        except DiskQuotaExceeded as error:
            assert "available_disk=1000" in str(error)
            break
        expected[key] = value
        assert chest.disk_bytes <= cap
    else:
        pytest.fail("available_disk was never reached")
    assert key not in chest
    assert len(expected) >= 3
    assert chest.disk_bytes <= cap
    assert_accounting(chest)
    assert_values(chest, expected)

    # A value larger than the budget goes straight to disk; over the quota it is refused,
    # whether the key is new, resident or spilled, and an old value stays as it was.
    resident = next(k for k in expected if k in chest.inmem)
    spilled = next(k for k in expected if k not in chest.inmem)
    for target in ("huge", resident, spilled):
        failures, quota = chest.stats.spill_failures, chest.stats.quota_errors
        with pytest.raises(DiskQuotaExceeded):
            chest[target] = payload(5, 10 * UNIT)
        assert chest.disk_bytes <= cap
        assert chest.stats.spill_failures - failures == chest.stats.quota_errors - quota == 1  # before: 0 and 1
    assert "huge" not in chest
    assert resident in chest.inmem
    assert_accounting(chest)
    assert_values(chest, expected)

    # An overwrite of a resident key with a larger value (still within the budget) needs room
    # that only a refused spill could make: it raises and the old value stays, in memory.
    resident = next(k for k in expected if k in chest.inmem)
    failures, quota = chest.stats.spill_failures, chest.stats.quota_errors
    with pytest.raises(DiskQuotaExceeded):
        chest[resident] = payload(6, 2 * UNIT)
    assert chest.inmem[resident] == expected[resident]
    # the refused spill is a failed write, as write-behind counts it too (before: quota_errors only)
    assert chest.stats.spill_failures - failures == chest.stats.quota_errors - quota >= 1
    assert_accounting(chest)
    assert_values(chest, expected)

    # Deleting frees disk: the refused put now succeeds.
    for k in [k for k in expected if k not in chest.inmem][:2]:
        del chest[k]
        del expected[k]
    chest[key] = expected[key] = payload(77, UNIT)
    assert chest.disk_bytes <= cap
    assert_accounting(chest)
    assert_values(chest, expected)


@pytest.mark.parametrize("pack_threshold", [0, 64 * 1024], ids=["files", "packed"])
def test_disk_quota_on_read_serves_the_value_without_losing_any(
    make_chest: Callable[..., Chest], pack_threshold: int
) -> None:
    chest = make_chest(sizeof=len_sizeof, available_disk=1000, pack_threshold=pack_threshold)
    expected: dict[Hashable, Any] = {}
    with pytest.raises(DiskQuotaExceeded):
        for i in range(50):
            chest[f"k{i}"] = payload(i, UNIT)
            expected[f"k{i}"] = payload(i, UNIT)
    # Reading a spilled value needs room that only a (refused) spill could make.
    for key, value in expected.items():
        assert chest[key] == value
    assert_accounting(chest)
    assert_values(chest, expected)


@pytest.mark.timeout(60)
def test_reads_while_the_disk_is_full_are_served_without_being_held(
    make_chest: Callable[..., Chest], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: a read made no room (every victim's write failed) and kept the value all the same, so
    # each read of a spilled value stayed in memory: here 20 values over a budget of 2.5.
    switch = FaultSwitch(10**9, errno.ENOSPC)
    chest = make_chest(**inject("mid-write", switch, monkeypatch))
    expected: dict[Hashable, Any] = {}
    for i in range(20):  # spilled while the disk works: each has a file
        chest[f"old{i}"] = expected[f"old{i}"] = payload(i)
    while chest.inmem:
        assert chest.evict() > 0
    switch.fail_from = switch.calls + 1  # the disk is full from now on
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpillWarning)
        for i in range(3):  # their writes fail: they stay, over the budget (allowed while the disk fails)
            chest[f"new{i}"] = expected[f"new{i}"] = payload(100 + i)
        held = chest.memory_bytes
        for i in range(20):
            assert chest[f"old{i}"] == expected[f"old{i}"]
            assert chest.memory_bytes <= held  # served, not held: it has its file
    assert switch.failures > 0 and not any(key.startswith("old") for key in chest.inmem)
    assert_accounting(chest)
    switch.armed = False
    assert_values(chest, expected)
    assert chest.memory_bytes <= chest.available_memory


def test_a_pinned_input_read_while_the_disk_is_full_is_kept_with_its_change(
    make_chest: Callable[..., Chest], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by review (helper-78): a pinned key costs the budget nothing, but the read that made no room
    # served it without holding it, so a task's in-place change to its input died with the object.
    switch = FaultSwitch(10**9, errno.ENOSPC)
    chest = make_chest(sizeof=len_sizeof, available_memory=300, **inject("mid-write", switch, monkeypatch))
    chest["input"] = bytearray(100)
    while chest.inmem:
        assert chest.evict() > 0
    switch.fail_from = switch.calls + 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpillWarning)
        for key in "xyz":  # their writes fail: memory over the budget
            chest[key] = bytearray(150)
        chest.engine.pin(["input"])  # a running task's input
        value = chest["input"]
        value[:5] = b"HELLO"  # the task changes it in place
        del value
        gc.collect()
        chest.engine.unpin(["input"])
    assert "input" in chest.inmem and chest["input"][:5] == b"HELLO"
    switch.armed = False


# ---- 6. hostile keys -------------------------------------------------------------------------


def hostile_keys() -> list[Hashable]:
    keys: list[Hashable] = [
        "../x",
        "../../../../../../tmp/escaped",
        "/etc/passwd",
        "a/b",
        "a\\b",
        "\0",
        "x\0y",
        "",
        ".",
        "..",
        ".hidden",
        MANIFEST_NAME,
        ".tmp-1-1",
        1,
        "1",
        1.5,
        b"1",
        -1,
        2**100,
        ("x", 0, 1),
        ("x", (0, 1)),
        (),
        None,
        frozenset({1, 2}),
        "x" * 10_000,
        "A",
        "a",
        "one",
        "ONE",
        "\u212a",  # KELVIN SIGN: casefolds to "k"
        "k",
        "\u00df",  # sharp s: casefolds to "ss"
        "ss",
        "\udc80",  # a lone surrogate
        "\n",
        " ",
        "con",
        "nul.txt",
        ConstRepr(1),
        ConstRepr(2),
    ]
    keys.append(candidate_name(("x", 0, 1)))  # a string equal to another key's file name
    keys.append(candidate_name(ConstRepr(1), 1))
    return keys


def test_hostile_keys_stay_inside_the_directory_and_never_share_a_file(tmp_path: Path) -> None:
    keys = hostile_keys()
    assert len(set(keys)) == len(keys)
    expected = {key: ("value", i) for i, key in enumerate(keys)}
    path = tmp_path / "chest"
    chest = Chest(path=path, available_memory=UNIT, sizeof=unit_sizeof, pack_threshold=0)  # one value in memory
    for key, value in expected.items():
        chest[key] = value
    assert len(chest.inmem) == 1
    root = os.path.realpath(chest.path)

    def check_files() -> None:
        names = chest._store.names()
        spilled = set(chest.engine.spilled_keys)
        assert spilled <= set(names)
        assert len(set(names.values())) == len(names)  # injective
        assert len({n.casefold() for n in names.values()}) == len(names)  # even on a case-insensitive disk
        assert len(spill_files(chest.path)) == len(names)
        for key in names:
            full = chest._store.filename(key)
            assert os.path.dirname(os.path.realpath(full)) == root, key
            assert os.path.isfile(full)
        # nothing was written anywhere else under tmp_path
        outside = [p for p in tmp_path.rglob("*") if os.path.commonpath([root, p.resolve()]) != root]
        assert outside == []

    check_files()
    assert len(spill_files(chest.path)) == len(keys) - 1
    for key, value in expected.items():  # load each back (which spills another)
        assert chest[key] == value, key
    check_files()
    assert_accounting(chest)

    chest.flush()
    check_files()
    assert len(spill_files(chest.path)) == len(keys)
    chest.close()

    again = Chest(path=path, available_memory=UNIT, sizeof=unit_sizeof)
    assert len(again) == len(keys)
    for key, value in expected.items():
        assert key in again, key
        assert again[key] == value, key
    assert again[1] != again["1"] != again[1.5] != again[b"1"]
    assert again[ConstRepr(1)] != again[ConstRepr(2)]
    assert again["A"] != again["a"]
    assert_accounting(again)
    again.drop()
    assert not path.exists()


# ---- 7. damaged spill files -------------------------------------------------------------------

TRIPPED: list[str] = []


def _rebuild_tripwire(tag: str, data: bytes) -> Tripwire:
    TRIPPED.append(tag)  # proof that these bytes were unpickled
    return Tripwire(tag, data)


class Tripwire:
    """A value whose unpickling leaves a trace in TRIPPED."""

    def __init__(self, tag: str, data: bytes) -> None:
        self.tag = tag
        self.data = data

    def __reduce__(self) -> Any:
        return (_rebuild_tripwire, (self.tag, self.data))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tripwire) and (other.tag, other.data) == (self.tag, self.data)

    def __hash__(self) -> int:
        return hash(self.tag)


def _flip(offset_of: Callable[[int], int]) -> Callable[[Path, Path], None]:
    def damage(file: Path, donor: Path) -> None:
        data = bytearray(file.read_bytes())
        data[offset_of(len(data))] ^= 0x10
        file.write_bytes(bytes(data))

    return damage


DAMAGE: dict[str, Callable[[Path, Path], None]] = {
    "truncated-half": lambda f, d: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]),
    "truncated-last-byte": lambda f, d: f.write_bytes(f.read_bytes()[:-1]),
    "truncated-to-header": lambda f, d: f.write_bytes(f.read_bytes()[:64]),
    "extended": lambda f, d: f.write_bytes(f.read_bytes() + b"\0"),
    "bit-flip-magic": _flip(lambda n: 0),
    "bit-flip-header-length": _flip(lambda n: 8),
    "bit-flip-header-crc": _flip(lambda n: 16),
    "bit-flip-body-start": _flip(lambda n: 64),
    "bit-flip-body-middle": _flip(lambda n: n // 2 + 3),
    "bit-flip-last-byte": _flip(lambda n: n - 1),
    "emptied": lambda f, d: f.write_bytes(b""),
    "deleted": lambda f, d: f.unlink(),
    "swapped": lambda f, d: shutil.copyfile(d, f),
    "replaced-by-other-pickle": lambda f, d: f.write_bytes(pickle.dumps(Tripwire("forged", b"x"))),
}


@pytest.mark.parametrize("victim", ["victim", ("victim", 0)], ids=["readable-name", "hashed-name"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_spill_file_raises_naming_the_key_and_is_never_unpickled(
    make_chest: Callable[..., Chest], damage: str, victim: Hashable
) -> None:
    chest = make_chest(available_memory=UNIT)
    expected: dict[Hashable, Any] = {
        victim: Tripwire("victim", bytes(range(256)) * 12),
        "donor": Tripwire("donor", bytes(range(255, -1, -1)) * 12),
    }
    for i in range(4):
        expected[f"k{i}"] = payload(i)
    # Copies: a spilled value still alive elsewhere would be handed back without reading its file.
    chest.update(copy.deepcopy(expected))
    assert victim in chest._store and "donor" in chest._store
    TRIPPED.clear()
    DAMAGE[damage](Path(chest._store.filename(victim)), Path(chest._store.filename("donor")))

    for attempt in range(2):  # the failure is not cached away: a second read fails the same way
        with pytest.raises(CorruptSpillFile) as info:
            chest[victim]
        assert repr(victim) in str(info.value)
        assert info.value.key == victim
        assert isinstance(info.value, SpillError)
        assert chest.stats.load_failures == attempt + 1
    with pytest.raises(CorruptSpillFile):
        chest.pop(victim)
    assert TRIPPED == []  # the damaged bytes never reached the unpickler

    # the key is still listed, so the caller can decide what to do with it
    assert victim in chest
    assert victim in list(chest)
    assert len(chest) == len(expected)

    # every other key reads correctly (and the tripwire does detect a real unpickling)
    for key, value in expected.items():
        if key != victim:
            assert chest[key] == value
    assert TRIPPED == ["donor"]

    # the caller can overwrite or delete the damaged key
    chest[victim] = "replacement"
    assert chest[victim] == "replacement"
    del chest[victim]
    del expected[victim]
    assert_values(chest, expected)
    assert_accounting(chest)


# ---- 8. damaged manifest ---------------------------------------------------------------------


def _forged_manifest(body: bytes, *, knows_key: bool) -> Callable[[bytes, bytes], bytes]:
    """A manifest whose frame and checksum are right but whose content is not a manifest.

    Signed with the directory's key (as if by a bug of ours), or with another key (an attacker
    who can write the directory but cannot read the 0600 key file).
    """

    def forge(data: bytes, secret: bytes) -> bytes:
        tag = sign(secret if knows_key else b"attacker's guess", body)
        return MANIFEST_HEADER.pack(MANIFEST_MAGIC, len(body), zlib.crc32(body), tag) + body

    return forge


class _Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, ("/tmp/spillkit-manifest-exploit-ran",))


MANIFEST_DAMAGE: dict[str, Callable[[bytes, bytes], bytes]] = {
    "emptied": lambda data, secret: b"",
    "truncated-header": lambda data, secret: data[:10],
    "truncated-body": lambda data, secret: data[:-3],
    "bit-flip-magic": lambda data, secret: bytes([data[0] ^ 1]) + data[1:],
    "bit-flip-body": lambda data, secret: data[:-1] + bytes([data[-1] ^ 1]),
    "appended": lambda data, secret: data + b"junk",
    "garbage": lambda data, secret: b"this is not a spillkit manifest at all" * 3,
    "checksum-ok-not-a-pickle": _forged_manifest(b"not a pickle", knows_key=True),
    "checksum-ok-wrong-rows": _forged_manifest(pickle.dumps([("k",), 5]), knows_key=True),
    "attacker-pickle-unsigned": _forged_manifest(pickle.dumps(_Exploit()), knows_key=False),
}


@pytest.mark.parametrize("damage", list(MANIFEST_DAMAGE))
def test_damaged_manifest_on_reopen_raises_spill_error_and_loses_nothing(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "chest"
    expected = {f"k{i}": payload(i) for i in range(5)}
    chest = Chest(path=path, available_memory=2.5 * UNIT, sizeof=unit_sizeof)
    chest.update(expected)
    chest.close()
    manifest = path / MANIFEST_NAME
    original = manifest.read_bytes()
    files = {p.name: p.read_bytes() for p in path.iterdir() if p.name != MANIFEST_NAME}
    manifest.write_bytes(MANIFEST_DAMAGE[damage](original, (path / KEY_FILE_NAME).read_bytes()))

    with pytest.raises(SpillError) as info:
        Chest(path=path, available_memory=2.5 * UNIT, sizeof=unit_sizeof)
    message = str(info.value)
    assert "manifest" in message
    assert str(manifest) in message
    assert not os.path.exists("/tmp/spillkit-manifest-exploit-ran")  # the forged pickle never ran
    if damage == "attacker-pickle-unsigned":
        assert "not signed by this directory's key" in message
    # the failed reopen touched no spill file; with the manifest repaired, everything is back
    assert {p.name: p.read_bytes() for p in path.iterdir() if p.name != MANIFEST_NAME} == files
    manifest.write_bytes(original)
    again = Chest(path=path, available_memory=2.5 * UNIT, sizeof=unit_sizeof)
    assert_values(again, expected)
    again.drop()


def test_a_key_whose_class_cannot_be_imported_comes_back_as_a_stand_in_and_nothing_else_is_lost(
    tmp_path: Path,
) -> None:
    module = types.ModuleType("spillkit_vanished_keys")
    exec("class Key(tuple):\n    pass\n", module.__dict__)
    sys.modules[module.__name__] = module
    path = tmp_path / "chest"
    try:
        chest = Chest(path=path, available_memory=2.5 * UNIT, sizeof=unit_sizeof)
        chest[module.Key(("a", 1))] = "value"
        chest["plain"] = "kept"
        chest.close()
    finally:
        del sys.modules[module.__name__]
    # Before manifest version 3 this refused the whole directory ("cannot be decoded").
    without = Chest(path=path, available_memory=2.5 * UNIT, sizeof=unit_sizeof)
    assert without["plain"] == "kept"
    (stand_in,) = [key for key in without if key != "plain"]
    assert isinstance(stand_in, UnreadableKey) and "spillkit_vanished_keys" in stand_in.error
    assert without[stand_in] == "value"
    without.close()  # writes the key's own pickle back
    sys.modules[module.__name__] = module
    try:
        again = Chest(path=path, available_memory=2.5 * UNIT, sizeof=unit_sizeof)
        assert again["plain"] == "kept"
        assert again[module.Key(("a", 1))] == "value"
        again.drop()
    finally:
        del sys.modules[module.__name__]


# ---- 9. listeners that raise -------------------------------------------------------------


def test_a_failing_listener_is_counted_and_breaks_nothing(make_chest: Callable[..., Chest]) -> None:
    chest = make_chest()
    seen: list[str] = []

    def broken(event: spillkit.Event) -> None:
        raise RuntimeError(f"listener bug on {event.kind}")

    chest.add_listener(broken)
    chest.add_listener(lambda event: seen.append(event.kind))
    expected = {}
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for i in range(5):
            chest[f"k{i}"] = expected[f"k{i}"] = payload(i)  # puts and spills
        for key, value in expected.items():
            assert chest[key] == value  # loads
        assert chest["k4"] == expected["k4"]  # a hit
        with pytest.raises(KeyError):
            chest["absent"]  # a miss
        del chest["k0"]
        del expected["k0"]
    messages = spill_warnings(record)
    assert len(seen) > 0
    assert {"put", "spill", "hit", "load", "miss", "delete"} <= set(seen)
    assert chest.engine.listener_errors == len(seen)  # the broken one failed on every event
    assert len(messages) == len(seen)
    assert all("listener bug" in m for m in messages)
    chest.remove_listener(broken)
    assert_values(chest, expected)
    assert_accounting(chest)


# ---- 10. one policy, two Chests ----------------------------------------------------------------


def test_a_policy_object_serves_only_one_chest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    policy = LRU()
    first = Chest(policy=policy, available_memory=2.5 * UNIT, sizeof=unit_sizeof)
    expected = {f"k{i}": payload(i) for i in range(4)}
    first.update(expected)
    with pytest.raises(ValueError, match="already serves another open Chest"):
        Chest(policy=policy)
    with pytest.raises(ValueError, match="already serves another open Chest"):
        Chest(path=tmp_path / "second", policy=policy)
    assert not (tmp_path / "second").exists()
    assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(first.path)]  # no directory leaked
    assert first.policy is policy
    assert_values(first, expected)
    assert_accounting(first)
    first.close()


# ---- 11. bad constructor arguments --------------------------------------------------------------


def _dump_only(obj: Any, file: Any) -> None:
    raise AssertionError("never called")


BAD_ARGUMENTS = [
    pytest.param({"available_memory": "lots"}, ValueError, "lots", id="memory-lots"),
    pytest.param({"available_memory": -1}, ValueError, "-1", id="memory-negative"),
    pytest.param({"available_memory": -0.5}, ValueError, "non-negative", id="memory-negative-float"),
    pytest.param({"available_memory": "-5 MB"}, ValueError, "-5 MB", id="memory-negative-string"),
    pytest.param({"available_memory": "5 parsecs"}, ValueError, "parsecs", id="memory-unknown-unit"),
    pytest.param({"available_memory": float("nan")}, ValueError, "nan", id="memory-nan"),
    pytest.param({"available_disk": "lots"}, ValueError, "lots", id="disk-lots"),
    pytest.param({"available_disk": -1}, ValueError, "-1", id="disk-negative"),
    pytest.param({"pack_threshold": "small"}, ValueError, "small", id="pack-threshold-word"),
    pytest.param({"pack_threshold": -1}, ValueError, "-1", id="pack-threshold-negative"),
    pytest.param({"dump": _dump_only}, TypeError, "dump and load", id="dump-without-load"),
    pytest.param({"load": pickle.load}, TypeError, "dump and load", id="load-without-dump"),
    pytest.param({"policy": "fifo-ish"}, ValueError, "fifo-ish", id="policy-unknown-name"),
    pytest.param({"policy": 42}, TypeError, "policy", id="policy-wrong-type"),
]


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_ARGUMENTS)
@pytest.mark.parametrize("with_path", [False, True], ids=["temporary", "path"])
def test_bad_constructor_arguments_raise_clear_errors_and_create_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kwargs: dict[str, Any],
    error: type[Exception],
    match: str,
    with_path: bool,
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    if with_path:
        kwargs = {**kwargs, "path": tmp_path / "new"}
    with pytest.raises(error) as info:
        Chest(**kwargs)
    assert match in str(info.value)
    assert list(tmp_path.iterdir()) == []  # no directory made or leaked


def test_unknown_policy_name_lists_the_choices() -> None:
    with pytest.raises(ValueError) as info:
        Chest(policy="mru")
    message = str(info.value)
    assert "'mru'" in message
    for name in spillkit.policy_names():
        assert repr(name) in message


@pytest.mark.parametrize("policy", spillkit.policy_names())
def test_a_resident_key_whose_hash_changed_never_fails_a_put(tmp_path: Path, policy: str) -> None:
    # The policy's lookups of such a key fail as a dict's do. Before (helper-62): LRU named no victim and
    # spilling stopped silently (51 keys held against a budget of 4); SIEVE named the key itself and the
    # put failed with KeyError, storing nothing (helper-65). Now a policy that can name no victim is
    # warned about once, pointing at the caller's line, and every put stores its value.
    chest = Chest(path=tmp_path / "c", available_memory=400, sizeof=lambda v: 100, policy=policy)
    key = MutableKey(1)
    chest[key] = "mutable"  # first in line for most policies
    key.n = 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(10):
            chest[f"k{i}"] = i
    stuck = [w for w in caught if "names no victim" in str(w.message)]
    assert len(stuck) <= 1 and all(w.filename == __file__ for w in stuck)  # once, at the put's line
    assert all(chest[f"k{i}"] == i for i in range(10))  # every value kept
    if not stuck:  # the policy passes the key over: spilling goes on
        assert chest.memory_bytes <= chest.available_memory + 100
    chest.drop()


def test_a_warning_through_the_mapping_mixins_points_at_the_callers_line(tmp_path: Path) -> None:
    # chest.update() runs in the standard library's MutableMapping code between the caller and spillkit:
    # the first version of warn_caller pointed at "<frozen _collections_abc>" (helper-66).
    chest = Chest(path=tmp_path / "c", available_memory=400, sizeof=lambda v: 100)
    key = MutableKey(1)
    chest[key] = "mutable"
    key.n = 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chest.update({f"k{i}": i for i in range(10)})
    stuck = [w for w in caught if "names no victim" in str(w.message)]
    assert len(stuck) == 1 and stuck[0].filename == __file__
    chest.drop()


def test_an_interrupt_before_an_overwrites_round_keeps_the_old_value(
    chest_factory: Callable[..., Chest], monkeypatch: pytest.MonkeyPatch
) -> None:
    # helper-126: the old value was taken out of memory before the round's try; a KeyboardInterrupt landing
    # in between (at _incoming) left the key listed, in neither memory nor on disk: KeyError on read.
    chest = chest_factory(1000, sizeof=len)
    for i in range(4):
        chest[i] = "x" * 150
    engine = chest.engine

    def interrupted(*args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "_incoming", interrupted)
    with pytest.raises(KeyboardInterrupt) as raised:
        chest[3] = "y" * 600
    monkeypatch.undo()
    assert any("which was not stored" in note for note in raised.value.__notes__)
    assert chest[3] == "x" * 150 and 3 in chest.inmem
    assert_accounting(chest)
    chest[3] = "y" * 600  # and the next overwrite goes through
    assert [chest[i] for i in range(4)] == ["x" * 150] * 3 + ["y" * 600]
    assert_accounting(chest)


def test_a_value_over_the_budget_that_kept_changing_while_written_names_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ChangedWhileWritten says "the value changed while it was written, 3 times" and no key: written
    # straight to disk (over the budget), it got no note either, as other SpillErrors (which name the
    # key themselves) get none (helper-135).
    import spillkit.over_budget

    def keeps_changing(engine: Any, key: Hashable, value: Any) -> Any:  # the fault: as verify_writes finds
        raise spillkit.ChangedWhileWritten("the value changed while it was written, 3 times")

    chest = Chest(path=tmp_path / "c", available_memory=100, sizeof=lambda v: 1000)
    chest["kept"] = 1  # (1000 bytes counted: over the budget, written straight to disk before the fault)
    monkeypatch.setattr(spillkit.over_budget, "timed_write", keeps_changing)
    with pytest.raises(spillkit.ChangedWhileWritten) as raised:
        chest["restless"] = [1, 2, 3]
    assert any("'restless'" in note for note in raised.value.__notes__)
    assert "restless" not in chest and chest["kept"] == 1
    chest.engine.keep_when_disk_full = True  # (dask workers): kept in memory instead, and said why
    with pytest.warns(SpillWarning, match="changed while it was written; it stays in memory, over the budget"):
        chest["restless"] = [1, 2, 3]
    assert chest["restless"] == [1, 2, 3] and "restless" in chest.engine._aside
    chest.drop()


def test_an_unhashable_key_over_the_budget_is_refused_before_any_write(tmp_path: Path) -> None:
    # helper-136's surviving mutant: without the early hash(), the TypeError came from the write, counted
    # as a failed spill of a value that cannot be serialized, with a "must go to disk" note.
    chest = Chest(path=tmp_path / "c", available_memory=10, sizeof=lambda value: 20)
    with pytest.raises(TypeError, match="unhashable") as raised:
        chest[[1]] = b"x"  # type: ignore[index]
    assert not getattr(raised.value, "__notes__", None)
    assert chest.stats.spill_failures == 0 and chest.stats.serialize_errors == 0 and len(chest) == 0
    chest.drop()


def test_a_value_over_the_budget_replacing_a_costed_one_drops_its_cost(tmp_path: Path) -> None:
    chest = Chest(path=tmp_path / "c", available_memory=100, sizeof=lambda value: len(value))
    chest.put("k", b"x" * 10, cost=5.0)
    assert chest.engine.given_cost("k") == 5.0
    chest["k"] = b"y" * 1000  # over the budget: straight to disk, with no cost given
    assert chest.engine.given_cost("k") is None and chest["k"] == b"y" * 1000
    chest.drop()


def test_a_quota_refusal_over_the_budget_gets_no_memory_budget_note(tmp_path: Path) -> None:
    # DiskQuotaExceeded names the key itself; the "exceeds the memory budget" note is for other errors.
    chest = Chest(path=tmp_path / "c", available_memory=100, available_disk=500, sizeof=lambda value: len(value))
    with pytest.raises(spillkit.DiskQuotaExceeded) as raised:
        chest["big"] = b"z" * 5000
    assert not any("exceeds the memory budget" in note for note in getattr(raised.value, "__notes__", []))
    assert "big" not in chest
    chest.drop()
