"""FileIndex (spillkit.fileindex): a disk store's key to name index, reservations and durability state.

What its docstring promises: no I/O at all; reserved names owned or reserved by no other key (casefolded),
never a name a committed manifest protects; KeyError, changing nothing, for keys or names it does not hold;
has_copy / unsynced_keys / retained after failed fsyncs and manifests (on a real DiskStore, which inherits
it); and a forked child naming its files around every name its parent uses.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from helpers import ConstRepr, child_exit_code

from spillkit.codecs import PickleCodec
from spillkit.fileindex import FileIndex
from spillkit.storage import DiskStore


def index_at(path: Path) -> FileIndex:
    return FileIndex(str(path), PickleCodec())


def test_the_index_never_touches_the_disk(tmp_path: Path) -> None:
    # Catches: bookkeeping that opens, creates or stats files (it must work where DiskStore injects faults).
    where = tmp_path / "never-made"
    index = index_at(where)
    name = index.reserve("a")
    index.unreserve(name)
    index.adopt("a", "a", 123, tag=b"t" * 32)
    index.adopt(("b", 2), "bee", 7)
    assert ("a" in index, ("b", 2) in index, "c" in index) == (True, True, False)
    assert len(index) == 2 and set(index) == {"a", ("b", 2)}
    assert index.total_bytes == 130
    assert (index.file_bytes("a"), index.filename("a"), index.tag("a")) == (123, str(where / "a"), b"t" * 32)
    assert index.tag(("b", 2)) is None  # adopted without one
    assert index.names() == {"a": "a", ("b", 2): "bee"}
    assert index.has_copy("a") and not index.has_copy("c")
    assert index.unsynced_keys() == [] and index.retained == frozenset()
    assert not where.exists()


def test_unknown_keys_and_names_raise_key_error_and_change_nothing(tmp_path: Path) -> None:
    # Catches: a lookup that returns a default (a wrong size or path) or a failed unreserve that drops
    # another write's reservation.
    index = index_at(tmp_path)
    index.adopt("a", "a", 10)
    held = index.reserve("b")
    for call, argument in [(index.file_bytes, "x"), (index.filename, "x"), (index.unreserve, "never-reserved")]:
        with pytest.raises(KeyError):
            call(argument)
    assert index.names() == {"a": "a"} and index.total_bytes == 10
    assert index.reserve("B").casefold() != held.casefold()  # "b" is still reserved: "B" is named around it


def test_a_reserved_name_is_owned_or_reserved_by_no_other_key_even_in_another_case(tmp_path: Path) -> None:
    # Catches: two keys given one file (compared case-sensitively, a case-insensitive disk would merge them).
    index = index_at(tmp_path)
    index.adopt("Owned", "Owned", 1)
    assert index.reserve("owned").casefold() != "owned"
    first = index.reserve("Pending")
    assert first == "Pending"
    second = index.reserve("PENDING")
    assert second.casefold() != first.casefold()
    # a name reserved twice for its own key (two writes in progress) stays held until both are released
    again = index.reserve("Pending")
    assert again == first
    index.unreserve(first)
    assert index.reserve("pending").casefold() != first.casefold()
    index.unreserve(first)
    assert index.reserve("pending") == "pending"  # now free


def test_keys_named_alike_get_names_of_their_own(tmp_path: Path) -> None:
    # Catches: two distinct keys (equal spelling, different hashes: distinct to a dict) sharing a file.
    index = index_at(tmp_path)
    names = {index.reserve(ConstRepr(n)) for n in range(3)}
    assert len({name.casefold() for name in names}) == 3


def test_a_name_the_committed_manifest_protects_is_written_around_then_retained(tmp_path: Path) -> None:
    # Catches: an overwrite replacing a file the last flush's manifest needs (a crash would lose the value),
    # retained not listing it, or the file kept after a newer manifest stops naming it.
    store = DiskStore(str(tmp_path), PickleCodec())
    store.write("a", "first")
    store.protect(["a"])
    store.write("a", "second")
    new = os.path.basename(store.filename("a"))
    assert new != "a"
    assert store.retained == frozenset({"a"})
    assert (tmp_path / "a").exists() and store.read("a") == "second"
    store.protect([new])
    assert store.retained == frozenset()
    assert not (tmp_path / "a").exists()
    store.write("c", "third")
    store.protect(["c"])
    store.delete("c")  # the manifest names the deleted key's file: kept, and no key may take its name
    assert store.retained == frozenset({"c"})
    name = store.reserve("c")
    assert name.casefold() != "c"
    store.unreserve(name)


def test_has_copy_and_unsynced_keys_follow_failed_fsyncs_until_written_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Catches: a key whose file may not be on disk reported as having a copy (an eviction would then
    # drop the only good copy), or one never trusted again after it was written anew.
    store = DiskStore(str(tmp_path), PickleCodec())
    store.write("a", 1)
    store.write("b", 2)
    assert store.has_copy("a") and store.has_copy("b") and store.unsynced_keys() == []
    real = os.fsync
    directory = os.stat(tmp_path).st_ino

    def fsync_failing_for_the_directory(fd: int) -> None:
        if os.fstat(fd).st_ino == directory:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync_failing_for_the_directory)
    with pytest.raises(OSError):
        store.sync()
    assert set(store.unsynced_keys()) == {"a", "b"}
    assert not store.has_copy("a") and not store.has_copy("b")
    monkeypatch.setattr(os, "fsync", real)
    store.write("a", 10)
    assert store.has_copy("a") and not store.has_copy("b")
    assert store.unsynced_keys() == ["b"]
    store.delete("b")
    assert store.unsynced_keys() == []


def test_a_forked_child_names_its_files_around_every_name_its_parent_uses(tmp_path: Path) -> None:
    # Catches: a child's write replacing a file its parent still reads (the fork hook not protecting
    # the parent's names), or the parent's naming disturbed by its child.
    store = DiskStore(str(tmp_path), PickleCodec())
    store.write("a", "parent's")
    pending = store.reserve("p")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = 1
        try:
            os.close(read)
            ok = store.reserve("a").casefold() != "a" and store.reserve("p").casefold() != "p"
            store.write("a", "child's")
            ok = ok and os.path.basename(store.filename("a")) != "a" and store.read("a") == "child's"
            code = 0 if ok else 3
        finally:
            os._exit(code)
    os.close(write)
    assert child_exit_code(pid, read) == 0
    assert store.read("a") == "parent's" and store.filename("a") == str(tmp_path / "a")
    assert pending == "p"
    store.unreserve(pending)
    assert store.reserve("b") == "b"
