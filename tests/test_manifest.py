"""spillkit.manifest: each key pickled on its own, so one key that cannot be rebuilt costs only itself.

A key of a class the reading process cannot import comes back as an ``UnreadableKey`` stand-in
(its value still readable, its pickle written again by the next flush); a key that cannot be
pickled at all is left out of the manifest, named by the flush's error, and every other key is
committed. Manifests of the previous version (keys inline) still load.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
import threading
import zlib
from pathlib import Path

import pytest
from helpers import MutableKey

from spillkit import Chest, SpillError
from spillkit.manifest import _HEADER, MANIFEST_NAME, UnreadableKey, pickle_key, read_manifest
from spillkit.security import sign

SCRIPT = textwrap.dedent(
    """
    import sys
    from spillkit import Chest

    class Point:  # defined in __main__: another program cannot import it
        def __init__(self, x):
            self.x = x
        def __hash__(self):
            return hash(("Point", self.x))
        def __eq__(self, other):
            return isinstance(other, Point) and other.x == self.x

    chest = Chest(path=sys.argv[1], available_memory=100)
    if sys.argv[2] == "write":
        chest["a"] = b"a" * 1000
        chest[Point(1)] = b"p" * 1000
        chest["b"] = b"b" * 1000
    else:  # check: the key comes back as itself where its class imports
        assert chest[Point(1)] == b"p" * 1000, list(chest)
        assert chest["c"] == b"c" * 1000 and Point(1) in set(chest)
        print(len(chest))
    chest.close()
    """
)


def run_script(path: Path, mode: str) -> str:
    script = path.parent / "point_script.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), str(path), mode], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_key_whose_class_does_not_import_here_costs_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "chest"
    run_script(path, "write")
    chest = Chest(path=path, available_memory=100)  # this process has no __main__.Point
    assert len(chest) == 3 and chest["a"] == b"a" * 1000 and chest["b"] == b"b" * 1000
    (stand_in,) = [key for key in chest if key not in ("a", "b")]
    assert isinstance(stand_in, UnreadableKey) and "Point" in repr(stand_in)
    assert chest[stand_in] == b"p" * 1000  # its value is separate from its key: still readable
    chest["c"] = b"c" * 1000
    chest.close()  # the next manifest carries the key's original pickle
    assert run_script(path, "check").strip() == "4"  # where Point imports, the key is itself again


def test_a_stand_in_can_be_deleted_and_stays_deleted(tmp_path: Path) -> None:
    path = tmp_path / "chest"
    run_script(path, "write")
    chest = Chest(path=path, available_memory=100)
    (stand_in,) = [key for key in chest if isinstance(key, UnreadableKey)]
    del chest[stand_in]
    chest.close()
    again = Chest(path=path, available_memory=100)
    assert sorted(again) == ["a", "b"]
    again.drop()


def test_an_unpicklable_key_is_named_by_the_flush_and_every_other_key_is_committed(tmp_path: Path) -> None:
    path = tmp_path / "chest"
    chest = Chest(path=path, available_memory=100)
    bad = ("holds a lock", threading.Lock())  # hashable, but neither pickle nor cloudpickle can write it
    chest["a"] = b"a" * 1000
    chest[bad] = b"x" * 1000
    chest["b"] = b"b" * 1000
    with pytest.raises(SpillError, match=r"flush could not write 1 value\(s\), keys \('holds a lock'") as info:
        chest.flush()
    assert "its key cannot be pickled" in str(info.value)
    assert chest[bad] == b"x" * 1000  # still there while the Chest lives
    entries = read_manifest(str(path), chest._secret)
    assert entries is not None and sorted(str(entry.key) for entry in entries) == ["a", "b"]
    with pytest.raises(SpillError, match="cannot be pickled"):
        chest.close()  # nothing can ever write that key: close shuts the Chest and says so
    again = Chest(path=path, available_memory=100)
    assert sorted(again) == ["a", "b"] and again["b"] == b"b" * 1000
    assert sorted(again._store.names()) == ["a", "b"]  # its record was not adopted
    again.drop()


def test_a_manifest_of_the_previous_version_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "chest"
    chest = Chest(path=path, available_memory=100)
    chest["a"] = b"a" * 1000
    chest[("t", 1)] = b"t" * 1000
    chest.close()
    secret = (path / ".spillkit-key").read_bytes()
    entries = read_manifest(str(path), secret)
    assert entries is not None
    rows = [(e.key, e.name, e.file_bytes, e.nbytes, e.cost, e.tag, e.segment, e.offset) for e in entries]
    body = pickle.dumps(rows, protocol=5)  # version 2: the keys inline
    (path / MANIFEST_NAME).write_bytes(
        _HEADER.pack(b"SPKMAN02", len(body), zlib.crc32(body), sign(secret, body)) + body
    )
    again = Chest(path=path, available_memory=100)
    assert again["a"] == b"a" * 1000 and again[("t", 1)] == b"t" * 1000
    again.drop()


def test_stand_ins_are_equal_by_pickle_and_write_back_their_pickle() -> None:
    blob = pickle.dumps("whatever", protocol=5)
    first, second = UnreadableKey(blob, "AttributeError: x"), UnreadableKey(blob, "another message")
    assert first == second and hash(first) == hash(second) and first != UnreadableKey(blob + b".", "x")
    assert pickle_key(first) is blob
    assert len(repr(UnreadableKey(blob, "e" * 10_000))) < 300


def nested(depth: int) -> tuple[object, ...]:
    key: tuple[object, ...] = ()
    for _ in range(depth):
        key = (key,)
    return key


def test_a_key_nested_too_deep_to_pickle_works_as_in_a_dict_and_only_the_flush_names_it(tmp_path: Path) -> None:
    deep = nested(5_000)  # a dict takes it; repr and pickle give up (RecursionError, PicklingError)
    path = tmp_path / "chest"
    chest = Chest(path=path, available_memory=100, pack_threshold=0)
    chest[deep] = b"d" * 1000
    chest["a"] = b"a" * 1000  # spills the deep key's value to its own file
    assert deep not in chest.inmem and chest[deep] == b"d" * 1000
    with pytest.raises(SpillError, match="its key cannot be pickled") as info:
        chest.flush()
    assert len(str(info.value)) < 1000
    del chest[deep]
    chest.close()  # nothing left that cannot be written
    assert sorted(Chest(path=path, available_memory=100)) == ["a"]


@pytest.mark.parametrize(
    ("key", "plain"),
    [
        (("x", 0, 1.5, b"", None, True, (2**80,)), True),
        (nested(31), True),
        (nested(32), False),  # pickled on its own, where a failure costs that key only
        (frozenset({1}), False),
        (UnreadableKey(b"x", "e"), False),
        (type("S", (str,), {})("a str subclass"), False),
    ],
    ids=["builtins", "depth-31", "depth-32", "frozenset", "stand-in", "str-subclass"],
)
def test_only_keys_of_builtins_stay_inline(key: object, plain: bool) -> None:
    from spillkit.manifest import is_plain

    assert is_plain(key) is plain  # type: ignore[arg-type]


def test_a_reopen_keeps_the_order_keys_were_stored_in(tmp_path: Path) -> None:
    # A dict keeps insertion order. The manifest listed files before packed records and inline keys
    # before pickled ones, so a reopen reordered the keys.
    path = tmp_path / "c"
    chest = Chest(path=path, available_memory=10_000)
    chest["z"] = b"x" * 100_000  # a file of its own
    chest["a"] = 1  # packed
    chest[("t", 1)] = 2  # a plain (inline) key
    chest[frozenset({1})] = 3  # a key the manifest pickles
    chest["m"] = b"y" * 100_000
    chest["b"] = 4
    del chest["a"]
    chest["a"] = 5  # a re-insert goes last
    before = list(chest)
    chest.close()
    again = Chest(path=path, available_memory=10_000)
    assert list(again) == before
    again["q"] = 6
    again.close()
    last = Chest(path=path, available_memory=10_000)
    assert list(last) == [*before, "q"]
    last.drop()


# ---- keys that compare oddly with the last manifest's ---------------------------------------------


class EqualsRaises:
    """A key whose ``==`` raises against anything but itself (its hash is fine)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __hash__(self) -> int:
        return hash(("EqualsRaises", self.n))

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        raise RuntimeError("no comparing me")

    def __reduce__(self) -> tuple[type, tuple[int]]:
        return EqualsRaises, (self.n,)

    def __repr__(self) -> str:
        return f"EqualsRaises({self.n})"


@pytest.mark.parametrize(
    ("before", "after"),
    [((1, 2), "np.int64(5)"), ("np.float64(0.5)", ("t", 1)), ("np.bool_(True)", (0, 0)), ((1, 2), "raises")],
    ids=["tuple-then-int64", "float64-then-tuple", "bool_-then-tuple", "tuple-then-eq-raises"],
)
def test_a_flush_after_a_key_that_compares_oddly_with_the_last_manifests_commits(
    tmp_path: Path, before: object, after: object
) -> None:
    """helper-96: a flush compared the new manifest's rows with the last one's, and a numpy scalar's == against a
    tuple is an array: flush() raised ValueError, and close() shut the Chest uncommitted (the new key lost)."""
    import numpy as np

    def make(spec: object) -> object:
        if spec == "raises":
            return EqualsRaises(7)
        return eval(spec, {"np": np}) if isinstance(spec, str) else spec

    first, second = make(before), make(after)
    chest = Chest(path=tmp_path / "c")
    chest["kept"] = "kept"  # first: the rows compared equal up to the odd pair (a list's == stops at a difference)
    chest[first] = "first"
    chest.flush()
    del chest[first]
    chest[second] = "second"  # where the manifest on disk has the first key
    chest.flush()  # before: ValueError
    chest["late"] = "late"
    chest.close()
    again = Chest(path=tmp_path / "c")  # (items, not again[second]: a reopened EqualsRaises is another object)
    assert {repr(key): value for key, value in again.items()} == {
        "'kept'": "kept", repr(second): "second", "'late'": "late"
    }  # fmt: skip
    again.drop()


def test_a_close_that_fails_for_good_on_a_key_still_shuts_and_unlocks(tmp_path: Path) -> None:
    """helper-98: a close that stayed open on any exception could never shut while the key's hash raised, and kept
    the directory locked; such a failure (no retry can help) shuts the Chest, as before."""
    chest = Chest(path=tmp_path / "c", available_memory=10_000)
    key = MutableKey(1)
    chest[key] = "v"
    chest["other"] = "kept"
    key.n = ["now", "unhashable"]  # its hash raises from here
    with pytest.raises(TypeError, match="unhashable"):
        chest.close()
    assert chest.closed
    chest.close()  # idempotent
    Chest(path=tmp_path / "c").drop()  # the directory is free
