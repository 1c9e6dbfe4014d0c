"""write_record (spillkit.whole_writes): reserve, prepare, commit, on the real DiskStore and PackedStore in tmp_path.

It returns the bytes written; a prepare that fails releases the reserved name and raises; a name a file this
Chest did not write took is given up and the write made again under another.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from helpers import ConstRepr

from spillkit.codecs import PickleCodec
from spillkit.naming import candidate_name
from spillkit.segments import PackedStore
from spillkit.storage import DiskStore
from spillkit.whole_writes import write_record


class Unpicklable:
    """A value whose pickling raises ``error`` (a real failure of the codec, in prepare)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __reduce__(self) -> Any:
        raise self.error


def disk_store(path: Path) -> DiskStore:
    return DiskStore(str(path), PickleCodec())


def packed_store(path: Path) -> PackedStore:
    return PackedStore(str(path), PickleCodec(), pack_threshold=1024)


@pytest.mark.parametrize("verify", [False, True])
def test_a_whole_write_to_a_disk_store_returns_the_file_size_and_reads_back(tmp_path: Path, verify: bool) -> None:
    # Catches: a write that is never committed (nothing on disk), or a wrong byte count returned.
    store = disk_store(tmp_path)
    written = write_record(store, "k", {"v": list(range(100))}, verify)
    assert written == os.path.getsize(store.filename("k")) == store.file_bytes("k") == store.total_bytes
    assert store.read("k") == {"v": list(range(100))}
    assert os.listdir(tmp_path) == ["k"]  # no temporary file left


def test_a_whole_write_to_a_packed_store_packs_small_values_and_files_large_ones(tmp_path: Path) -> None:
    # Catches: write_record bypassing the store's own prepare/commit (the size decision lives there).
    store = packed_store(tmp_path)
    small = write_record(store, "small", b"s" * 10, False)
    large = write_record(store, "large", b"L" * 5000, False)
    assert store.location("small")[0] is not None and store.location("large")[0] is None
    assert (small, large) == (store.file_bytes("small"), store.file_bytes("large"))
    assert large == os.path.getsize(store.filename("large"))
    assert (store.read("small"), store.read("large")) == (b"s" * 10, b"L" * 5000)
    store.close()


def test_a_name_a_foreign_file_took_is_given_up_and_the_write_made_under_another(tmp_path: Path) -> None:
    # Catches: NameTaken raised to the caller instead of retried, a foreign file overwritten, or a loop
    # that tries the same taken name forever.
    store = disk_store(tmp_path)
    key = ("planted", 1)
    taken = [candidate_name(key, attempt) for attempt in range(2)]
    for name in taken:
        (tmp_path / name).write_bytes(b"not ours")
    written = write_record(store, key, "value", False)
    name = os.path.basename(store.filename(key))
    assert name not in taken
    assert written == os.path.getsize(tmp_path / name)
    assert store.read(key) == "value"
    assert all((tmp_path / name).read_bytes() == b"not ours" for name in taken)
    write_record(store, key, "again", False)  # the taken names are never chosen again
    assert os.path.basename(store.filename(key)) not in taken
    assert store.read(key) == "again"


@pytest.mark.parametrize("make", [disk_store, packed_store], ids=["DiskStore", "PackedStore"])
@pytest.mark.parametrize("error", [ValueError("cannot pickle this"), KeyboardInterrupt()], ids=["error", "interrupt"])
def test_a_prepare_that_fails_raises_releases_the_name_and_changes_nothing(
    tmp_path: Path, make: Any, error: BaseException
) -> None:
    # Catches: a reservation leaked by a failed prepare (the store would then name a colliding key's file
    # around a name nobody holds), the error swallowed, or the key's previous value damaged.
    store = make(tmp_path)
    write_record(store, "kept", "old", False)
    with pytest.raises(type(error)):
        write_record(store, "kept", Unpicklable(error), False)
    assert store.read("kept") == "old"
    with pytest.raises(type(error)):
        write_record(store, ConstRepr(1), Unpicklable(error), False)
    assert ConstRepr(1) not in store
    # ConstRepr(2) is named like ConstRepr(1): it gets the first name only if nothing still reserves it.
    write_record(store, ConstRepr(2), b"x" * 5000, False)
    assert os.path.basename(store.filename(ConstRepr(2))) == candidate_name(ConstRepr(2), 0)
    assert not [name for name in os.listdir(tmp_path) if ".tmp-" in name]
    if isinstance(store, PackedStore):
        store.close()
