"""DiskStore and file naming, on the real disk: atomic writes, permissions, headers, exact bytes."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import stat
import string
import tempfile
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import ConstRepr, child_exit_code
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spillkit.storage
from spillkit import Chest, CorruptSpillFile, DiskQuotaExceeded, PickleCodec
from spillkit.dirlock import LOCK_NAME
from spillkit.manifest import MANIFEST_NAME
from spillkit.naming import candidate_name, is_reserved
from spillkit.reserve import RESERVE_NAME
from spillkit.security import KEY_FILE_NAME
from spillkit.storage import DiskStore


def make_store(path: Path | str, available_disk: int | None = None) -> DiskStore:
    return DiskStore(str(path), PickleCodec(), available_disk)


def files_in(path: Path | str) -> dict[str, int]:
    return {n: os.path.getsize(os.path.join(path, n)) for n in os.listdir(path)}


def temp_files(path: Path | str) -> list[str]:
    return [n for n in os.listdir(path) if ".tmp-" in n]


def assert_exact(store: DiskStore) -> None:
    """file_bytes and total_bytes equal the sizes of the files really on disk."""
    on_disk = files_in(store.path)
    names = store.names()
    assert sorted(on_disk) == sorted(names.values())
    for key, name in names.items():
        assert store.file_bytes(key) == on_disk[name]
        assert store.filename(key) == os.path.join(store.path, name)
    assert store.total_bytes == sum(on_disk.values())
    assert len(store) == len(names)


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ---- round trips and exact sizes -------------------------------------------------------


def test_write_returns_the_file_size_and_reads_back(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    values = {"one": 1, "two": [2, 2], ("t", 3): {"three": b"3" * 1000}, 4: "four"}
    for key, value in values.items():
        written = store.write(key, value)
        assert written == os.path.getsize(store.filename(key)) == store.file_bytes(key)
    assert_exact(store)
    for key, value in values.items():
        assert key in store
        assert store.read(key) == value
    assert set(store) == set(values)
    assert "absent" not in store


def test_file_bytes_and_total_bytes_stay_exact_through_overwrites_and_deletes(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    assert store.total_bytes == 0
    store.write("a", b"x" * 10)
    store.write("b", b"y" * 5000)
    assert_exact(store)
    store.write("a", b"x" * 20000)  # grow
    assert_exact(store)
    store.write("b", b"")  # shrink
    assert_exact(store)
    store.delete("a")
    assert "a" not in store
    assert_exact(store)
    store.delete("a")  # deleting again is not an error
    store.delete("never-there")
    assert_exact(store)
    os.unlink(store.filename("b"))  # a file removed behind the store's back
    store.delete("b")
    assert store.total_bytes == 0
    assert len(store) == 0
    assert files_in(tmp_path) == {}


def test_names_is_a_copy(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.write("a", 1)
    names = store.names()
    names["b"] = "b"
    assert "b" not in store
    assert store.names() == {"a": "a"}


def test_adopt_registers_an_existing_file(tmp_path: Path) -> None:
    first = make_store(tmp_path)
    size = first.write(("k", 1), {"v": 1})
    name = first.names()[("k", 1)]
    second = make_store(tmp_path)
    second.adopt(("k", 1), name, size)
    assert second.total_bytes == size
    assert second.read(("k", 1)) == {"v": 1}
    second.write(("k", 2), 2)  # a new key never takes the adopted file
    assert second.names()[("k", 2)] != name
    assert_exact(second)


# ---- atomic writes ------------------------------------------------------------------------


def test_an_overwrite_writes_a_temporary_file_and_replaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(tmp_path)
    store.write("k", b"old" * 1000)
    target = store.filename("k")
    old_bytes = Path(target).read_bytes()
    old_inode = os.stat(target).st_ino
    replaced: list[tuple[str, str]] = []
    real_replace = os.replace

    def recording_replace(src: Any, dst: Any, **kwargs: Any) -> None:
        replaced.append((os.fspath(src), os.fspath(dst)))
        real_replace(src, dst, **kwargs)

    with open(target, "rb") as reader:  # a reader that opened the old file
        monkeypatch.setattr(os, "replace", recording_replace)
        store.write("k", b"new" * 10)
        monkeypatch.undo()
        assert reader.read() == old_bytes  # it still sees the whole old file: nothing was written in place
    assert len(replaced) == 1
    src, dst = replaced[0]
    assert dst == target
    assert os.path.dirname(src) == str(tmp_path)
    assert os.path.basename(src).startswith(".tmp-")
    assert os.stat(target).st_ino != old_inode
    assert store.read("k") == b"new" * 10
    assert temp_files(tmp_path) == []
    assert_exact(store)


FAILURES = {
    "ENOSPC": lambda: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
    "EIO": lambda: OSError(errno.EIO, os.strerror(errno.EIO)),
    "KeyboardInterrupt": KeyboardInterrupt,
}


@pytest.mark.parametrize("failure", list(FAILURES))
@pytest.mark.parametrize("key", ["k", ("hashed", "key")])
def test_a_failure_mid_write_leaves_the_previous_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str, key: Hashable
) -> None:
    store = make_store(tmp_path)
    store.write(key, "previous")
    store.write("other", "other")
    before = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
    total = store.total_bytes
    real_write_all = spillkit.storage._write_all
    calls: list[int] = []

    def write_half_then_fail(fd: int, frames: list[Any]) -> None:
        calls.append(fd)
        real_write_all(fd, frames[:1])  # the header reaches the temporary file, then the device fails
        raise FAILURES[failure]()

    monkeypatch.setattr(spillkit.storage, "_write_all", write_half_then_fail)
    for target in (key, "new"):
        with pytest.raises(type(FAILURES[failure]())):
            store.write(target, "replacement" * 100)
    monkeypatch.undo()
    assert len(calls) == 2
    assert {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)} == before
    assert temp_files(tmp_path) == []
    assert "new" not in store
    assert store.total_bytes == total
    assert store.read(key) == "previous"
    assert_exact(store)
    store.write(key, "after")  # and the store still works
    assert store.read(key) == "after"
    assert_exact(store)


def test_a_failed_replace_leaves_the_previous_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path)
    store.write("k", "previous")
    before = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}

    def failing_replace(src: Any, dst: Any, **kwargs: Any) -> None:
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="injected"):
        store.write("k", "replacement")
    monkeypatch.undo()
    assert {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)} == before
    assert store.read("k") == "previous"
    assert_exact(store)


def test_a_value_that_cannot_be_encoded_touches_no_file(tmp_path: Path) -> None:
    import threading

    store = make_store(tmp_path)
    store.write("k", "previous")
    before = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
    with pytest.raises(TypeError):
        store.write("k", threading.Lock())
    with pytest.raises(TypeError):
        store.write("new", threading.Lock())
    assert {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)} == before
    assert store.read("k") == "previous"
    assert "new" not in store
    assert_exact(store)


def test_available_disk_refuses_a_write_that_would_exceed_it(tmp_path: Path) -> None:
    probe = make_store(tmp_path / "probe")
    (tmp_path / "probe").mkdir()
    size = probe.write("k0", b"0" * 500)
    cap = 3 * size
    (tmp_path / "store").mkdir()
    store = make_store(tmp_path / "store", available_disk=cap)
    for i in range(3):
        store.write(f"k{i}", str(i).encode() * 500)
    assert store.total_bytes == cap
    before = {n: (tmp_path / "store" / n).read_bytes() for n in os.listdir(tmp_path / "store")}
    with pytest.raises(DiskQuotaExceeded, match=f"available_disk={cap}"):
        store.write("k3", b"3" * 500)
    with pytest.raises(DiskQuotaExceeded):
        store.write("k0", b"0" * 501)  # an overwrite counts the file it replaces, and this one is larger
    assert {n: (tmp_path / "store" / n).read_bytes() for n in os.listdir(tmp_path / "store")} == before
    store.write("k0", b"z" * 500)  # same size: allowed, the old file's bytes are given back
    assert store.read("k0") == b"z" * 500
    assert store.total_bytes == cap
    assert_exact(store)


# ---- permissions ------------------------------------------------------------------------------


def test_spill_files_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    with umask(0):
        store = make_store(tmp_path)
        store.write("k", 1)
        store.write(("hashed",), 2)
        store.write("k", 3)  # a replacement too
    for name in os.listdir(tmp_path):
        assert mode(tmp_path / name) == 0o600, name


@pytest.mark.parametrize(("pack_threshold", "files"), [(0, 4), (None, 1)], ids=["a-file-each", "packed"])
def test_a_temporary_chest_directory_is_0700_and_its_files_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pack_threshold: int | None, files: int
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with umask(0):
        chest = Chest(available_memory=100, sizeof=lambda v: 100, pack_threshold=pack_threshold)
        for i in range(4):
            chest[f"k{i}"] = i
        chest.flush()
    try:
        assert os.path.dirname(chest.path) == str(tmp_path)
        assert mode(chest.path) == 0o700
        names = os.listdir(chest.path)
        assert MANIFEST_NAME in names and LOCK_NAME in names
        assert len(names) == files + 2
        for name in names:
            assert mode(os.path.join(chest.path, name)) == 0o600, name
    finally:
        chest.close()


@pytest.mark.parametrize(("pack_threshold", "files"), [(0, 4), (None, 1)], ids=["a-file-each", "packed"])
@pytest.mark.parametrize("nested", [False, True])
def test_a_new_chest_path_is_created_0700_with_0600_files(
    tmp_path: Path, nested: bool, pack_threshold: int | None, files: int
) -> None:
    path = tmp_path / "a" / "b" / "chest" if nested else tmp_path / "chest"
    with umask(0):
        chest = Chest(path=path, available_memory=100, sizeof=lambda v: 100, pack_threshold=pack_threshold)
        for i in range(4):
            chest[f"k{i}"] = i
        chest.close()
    assert mode(path) == 0o700
    names = os.listdir(path)
    assert MANIFEST_NAME in names
    assert KEY_FILE_NAME in names
    assert LOCK_NAME in names
    assert RESERVE_NAME in names  # room for the next manifest on a full disk (tests/test_reserve.py)
    assert len(names) == files + 4
    for name in names:
        assert mode(path / name) == 0o600, name


# ---- headers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("source", "target"), [("a", "b"), (("x", 1), ("x", 2)), ("a", ("x", 2))])
def test_a_file_moved_into_another_keys_place_is_recognised(tmp_path: Path, source: Any, target: Any) -> None:
    store = make_store(tmp_path)
    store.write(source, "source value")
    store.write(target, "target value")
    shutil.copyfile(store.filename(source), store.filename(target))
    with pytest.raises(CorruptSpillFile) as info:
        store.read(target)
    assert info.value.key == target
    assert info.value.path == store.filename(target)
    assert repr(target) in str(info.value)
    assert store.names()[source] in info.value.reason  # says whose file it is
    assert store.read(source) == "source value"


def test_the_header_holds_the_file_name_and_the_body_starts_aligned(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.write("some_key", b"v")
    data = Path(store.filename("some_key")).read_bytes()
    assert data.startswith(b"SPK\x00")
    assert b"some_key" in data[:128]  # 28 fixed bytes, a 32-byte HMAC, the name, zero padding
    body = data[128:]
    assert PickleCodec().decode(memoryview(body)) == b"v"


@pytest.mark.parametrize("cut", [0, 1, 19, 20, 63, 64, -1])
def test_truncation_at_any_point_is_reported(tmp_path: Path, cut: int) -> None:
    store = make_store(tmp_path)
    store.write("k", list(range(100)))
    file = Path(store.filename("k"))
    data = file.read_bytes()
    file.write_bytes(data[:cut])
    with pytest.raises(CorruptSpillFile, match="'k'"):
        store.read("k")


# ---- sync -------------------------------------------------------------------------------------------


def test_sync_fsyncs_every_file_written_since_the_last_sync_and_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(tmp_path)
    synced: list[int] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    for key in ("a", "b", ("c",), "d"):
        store.write(key, key)
    store.delete("d")  # written then deleted before the sync: nothing to fsync, and no error
    store.sync()
    directory = os.stat(tmp_path).st_ino
    inode = {key: os.stat(store.filename(key)).st_ino for key in ("a", "b", ("c",))}
    assert sorted(synced) == sorted([*inode.values(), directory])
    assert synced[-1] == directory  # the directory last, after the files' contents

    synced.clear()
    store.sync()  # nothing new: only the directory
    assert synced == [directory]

    synced.clear()
    store.write("a", "rewritten")
    store.sync()
    assert synced == [os.stat(store.filename("a")).st_ino, directory]
    monkeypatch.undo()
    assert store.read("a") == "rewritten"


# ---- naming -------------------------------------------------------------------------------------------


def test_plain_identifiers_keep_their_name_and_everything_else_is_hashed() -> None:
    assert candidate_name("one") == "one"
    assert candidate_name("two") == "two"
    assert candidate_name("x_1.y-z") == "x_1.y-z"
    for key in ["../x", "/etc/passwd", "a/b", "\0", "", ".", "..", ".hidden", 1, b"one", ("one",), "x" * 101, "é"]:
        name = candidate_name(key)
        assert name != key
        assert name.startswith("%")
    assert candidate_name("one", 1) != "one"  # a collision retry is never the readable name


def test_reserved_names_are_exactly_the_dot_names() -> None:
    assert is_reserved(".tmp-1-1")
    assert is_reserved(MANIFEST_NAME)
    assert not is_reserved("one")
    assert not is_reserved("%abc")


_scalars = st.one_of(
    st.text(),
    st.text(st.characters(exclude_categories=()), max_size=20),  # surrogates included
    st.text(alphabet=string.ascii_letters + string.digits + "_.-", min_size=1, max_size=120),
    st.sampled_from(["A", "a", "Ab", "aB", "one", "ONE", ".", "..", "", "\0", "/", "\udc80", "x" * 10_000]),
    st.integers(),
    st.floats(allow_nan=False),
    st.binary(max_size=30),
    st.booleans(),
    st.none(),
    st.builds(ConstRepr, st.integers(0, 3)),
)
KEYS = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=6)


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(key=KEYS, attempt=st.integers(0, 10**6))
def test_candidate_names_are_safe(key: Hashable, attempt: int) -> None:
    name = candidate_name(key, attempt)
    assert name
    assert "/" not in name
    assert "\0" not in name
    assert os.sep not in name
    assert not name.startswith(".")
    assert name not in (".", "..")
    assert not is_reserved(name)
    assert len(name.encode("utf-8")) <= 255  # encodable (no lone surrogate) and within NAME_MAX
    assert candidate_name(key, attempt) == name  # deterministic


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(a=KEYS, b=KEYS)
def test_candidate_names_are_injective_up_to_type_and_repr(a: Hashable, b: Hashable) -> None:
    if (type(a), repr(a)) != (type(b), repr(b)):
        assert candidate_name(a) != candidate_name(b)
    names = {candidate_name(a, attempt) for attempt in range(5)}
    assert len(names) == 5


@settings(max_examples=60, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(keys=st.lists(KEYS, max_size=12))
def test_a_store_gives_distinct_keys_distinct_files_inside_its_directory(keys: list[Hashable]) -> None:
    distinct = list(dict.fromkeys(keys))  # as a dict sees them (1 == 1.0 == True)
    with tempfile.TemporaryDirectory() as path:
        store = make_store(path)
        for i, key in enumerate(distinct):
            store.write(key, i)
        root = os.path.realpath(path)
        names = store.names()
        assert len(set(names.values())) == len(distinct)
        assert len({n.casefold() for n in names.values()}) == len(distinct)
        assert len(os.listdir(path)) == len(distinct)
        for i, key in enumerate(distinct):
            assert os.path.dirname(os.path.realpath(store.filename(key))) == root
            assert store.read(key) == i
        assert_exact(store)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("write_behind", [False, True], ids=["sync", "write-behind"])
def test_a_forked_child_never_writes_over_a_file_its_parent_writes_later(tmp_path: Path, write_behind: bool) -> None:
    # Before: a key's first file name is a function of the key, so the parent (spilling "k" after the
    # fork) and the child (spilling its own "k") chose the same name, and the child's os.replace won:
    # the parent then read "k" as CorruptSpillFile ("an older or other version of this key's value").
    chest = Chest(path=tmp_path / "c", available_memory=20, sizeof=lambda v: 10, pack_threshold=0,
                  write_behind=write_behind)  # fmt: skip
    chest["k"] = "parent value"  # resident at the fork: a file of neither process yet
    parent_spilled, child_done = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.alarm(30)
            os.read(parent_spilled[0], 1)
            chest["k"] = "child value"
            chest["x"], chest["y"] = 1, 2  # spill the child's "k"
            chest.wait_for_writes()
            assert "k" in chest._store and chest["k"] == "child value"
            code = 0
        finally:
            os.write(child_done[1], b"x")
            os._exit(code)
    chest["a"], chest["b"] = 1, 2  # spill the parent's "k", after the fork
    chest.wait_for_writes()
    assert "k" in chest._store
    os.write(parent_spilled[1], b"x")
    os.read(child_done[0], 1)
    assert child_exit_code(pid, *parent_spilled, *child_done) == 0
    assert chest["k"] == "parent value"
    chest.drop()
