"""The disk-tier protocols (spillkit.tiers) against the real tiers: DiskStore and PackedStore (StagedDiskTier),
and replay's SizeOnlyDisk (DiskTier).

The protocols are not runtime_checkable, so each member a protocol declares (read from the protocol itself,
so a member added later is checked too) is looked up on each tier with the same parameters, then every
method is exercised for what the engine relies on.
"""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import pytest
from helpers import ConstRepr, is_spare_name

from spillkit.codecs import PickleCodec
from spillkit.naming import candidate_name
from spillkit.replay_disk import SizeOnlyDisk, _Sized
from spillkit.segments import PackedStore
from spillkit.storage import DiskStore
from spillkit.tiers import DiskTier, StagedDiskTier


def members(protocol: type) -> dict[str, Any]:
    """Name -> function (or None for a data attribute) of every member ``protocol`` and its protocol bases declare."""
    found: dict[str, Any] = {}
    for base in reversed(protocol.__mro__):
        if base in (Protocol, object) or not getattr(base, "_is_protocol", False):
            continue
        found.update(dict.fromkeys(inspect.get_annotations(base)))
        for name, item in vars(base).items():
            if inspect.isfunction(item) and item.__qualname__.startswith(f"{base.__name__}."):
                found[name] = item
    return found


def test_the_protocols_declare_what_the_engine_and_the_writer_call() -> None:
    # Catches: this module's member discovery finding nothing (the checks below would then pass vacuously).
    disk = members(DiskTier)
    assert set(disk) == {
        "total_bytes", "__contains__", "has_copy", "holds", "write", "read", "delete", "file_bytes", "sync",
    }  # fmt: skip
    assert set(members(StagedDiskTier)) == set(disk) | {"reserve", "unreserve", "prepare", "commit", "discard"}


def disk_store(path: Path) -> DiskStore:
    return DiskStore(str(path), PickleCodec())


def packed_store(path: Path) -> PackedStore:
    return PackedStore(str(path), PickleCodec(), pack_threshold=1024)  # small values packed, large ones files


def size_only(_path: Path) -> SizeOnlyDisk:
    return SizeOnlyDisk()


TIERS: list[tuple[Callable[[Path], Any], type]] = [
    (disk_store, StagedDiskTier),
    (packed_store, StagedDiskTier),
    (size_only, DiskTier),
]


@pytest.mark.parametrize(("make", "protocol"), TIERS, ids=["DiskStore", "PackedStore", "SizeOnlyDisk"])
def test_each_tier_has_every_member_of_its_protocol_with_the_same_parameters(
    tmp_path: Path, make: Callable[[Path], Any], protocol: type
) -> None:
    # Catches: a tier missing a method the engine calls, or taking other parameters (e.g. a renamed or
    # dropped ``verify``), which a type checker only sees where the tier is passed as the protocol.
    tier = make(tmp_path)
    for name, declared in members(protocol).items():
        assert hasattr(tier, name), name
        if declared is None:
            assert isinstance(getattr(tier, name), int), name
            continue
        method = getattr(tier, name)
        assert callable(method), name
        wanted = list(inspect.signature(declared).parameters.values())[1:]  # without self
        have = inspect.signature(method).parameters
        for parameter in wanted:
            assert parameter.name in have, (name, parameter.name)
            if parameter.default is not inspect.Parameter.empty:
                assert have[parameter.name].default == parameter.default, (name, parameter.name)
        required = [p for p in have.values() if p.default is inspect.Parameter.empty and p.kind <= p.KEYWORD_ONLY]
        assert {p.name for p in required} <= {p.name for p in wanted}, name  # nothing more is required


def value_for(tier: Any, size: int) -> Any:
    return _Sized(size) if isinstance(tier, SizeOnlyDisk) else bytearray(b"v" * size)


@pytest.mark.parametrize("size", [10, 5000], ids=["small", "large"])
@pytest.mark.parametrize(("make", "protocol"), TIERS, ids=["DiskStore", "PackedStore", "SizeOnlyDisk"])
def test_each_tier_does_what_the_disk_tier_protocol_says(
    tmp_path: Path, make: Callable[[Path], Any], protocol: type, size: int
) -> None:
    # Catches: a write whose size is not what file_bytes and total_bytes count, a key not found after a
    # write or found after a delete, holds() true for a value changed since it was written, a failing sync.
    tier = make(tmp_path)
    value = value_for(tier, size)
    assert "k" not in tier and not tier.has_copy("k")
    written = tier.write("k", value)
    assert written > 0 and written == tier.file_bytes("k") == tier.total_bytes
    assert "k" in tier and tier.has_copy("k")
    assert tier.holds("k", value)
    back = tier.read("k")
    if isinstance(tier, SizeOnlyDisk):
        assert back.nbytes == size
    else:
        assert back == value
    if isinstance(tier, SizeOnlyDisk):
        tier.changed("k")  # its only way of hearing of a change in place
    else:
        value[0] ^= 1  # changed in place since it was written
    assert not tier.holds("k", value)
    tier.sync()
    tier.delete("k")
    tier.delete("k")  # absent: nothing happens
    assert "k" not in tier and not tier.has_copy("k") and tier.total_bytes == 0
    if not isinstance(tier, SizeOnlyDisk):
        assert [name for name in os.listdir(tmp_path) if not name.startswith(".")] == []


@pytest.mark.parametrize("verify", [False, True])
@pytest.mark.parametrize("size", [10, 5000], ids=["small", "large"])
@pytest.mark.parametrize("make", [disk_store, packed_store], ids=["DiskStore", "PackedStore"])
def test_each_staged_tier_prepares_in_another_thread_and_commits_or_discards(
    tmp_path: Path, make: Callable[[Path], Any], size: int, verify: bool
) -> None:
    # Catches: a prepare that changes the store (it runs without the engine's lock), a commit whose size
    # is not the record's, a discard that leaves a temporary file or the key behind, a name never released.
    tier = make(tmp_path)
    tier.write("other", b"o" * 50)
    before = sorted(os.listdir(tmp_path)), tier.total_bytes
    prepared: list[Any] = []
    name = tier.reserve("k")
    thread = threading.Thread(target=lambda: prepared.append(tier.prepare("k", b"v" * size, name, verify)))
    thread.start()
    thread.join()
    assert "k" not in tier and tier.total_bytes == before[1]
    written = tier.commit(prepared[0])
    assert written == tier.file_bytes("k") and tier.total_bytes == before[1] + written
    assert tier.read("k") == b"v" * size
    tier.delete("k")
    tier.sync()
    after_delete = tier.total_bytes  # (a packed store's segment keeps the dead record's bytes)
    key = ConstRepr(1)
    tier.discard(tier.prepare(key, b"w" * size, tier.reserve(key), verify))
    assert key not in tier and tier.total_bytes == after_delete
    assert [n for n in os.listdir(tmp_path) if ".tmp-" in n and not is_spare_name(n)] == []
    tier.unreserve(tier.reserve(key))
    # ConstRepr(2) is named like ConstRepr(1): it gets the first name only if no reservation of it is left
    assert tier.reserve(ConstRepr(2)) == candidate_name(ConstRepr(2), 0)
    if isinstance(tier, PackedStore):
        tier.close()
