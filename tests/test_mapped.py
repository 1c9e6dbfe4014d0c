"""Loads by mapping the spill file copy-on-write (``map_loads``): :mod:`spillkit.mapped`.

Whether a value is mapped is read from ``/proc/self/maps``, the kernel's list of
this process's mappings, so these tests need Linux (CI runs there).
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
from pathlib import Path
from typing import Any

import pytest
from helpers import flip_last_byte

import spillkit.filereads
import spillkit.mapped
from spillkit import Chest, CorruptSpillFile
from spillkit.mapped import map_file

numpy = pytest.importorskip("numpy")
pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/self/maps (Linux)")

MIB = 1 << 20


def array(seed: int, nbytes: int = 2 * MIB) -> numpy.ndarray:
    return numpy.random.default_rng(seed).random(nbytes // 8)


def mapped_files() -> set[str]:
    """Paths of the files mapped into this process (a deleted file keeps its name, plus " (deleted)")."""
    paths = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6:
                paths.add(fields[5].strip().removesuffix(" (deleted)"))
    return paths


def spilled_pair(tmp_path: Path, **options: object) -> Chest:
    """A Chest holding arrays "a" (spilled) and "b" (in memory) under a 3 MiB budget."""
    chest = Chest(path=tmp_path / "c", available_memory="3 MiB", **options)  # type: ignore[arg-type]
    chest["a"] = array(1)
    chest["b"] = array(2)
    assert list(chest.inmem) == ["b"]
    return chest


def test_a_large_value_is_loaded_by_mapping_its_file(tmp_path: Path) -> None:
    chest = spilled_pair(tmp_path, map_loads=True)
    name = chest._store.filename("a")
    assert name not in mapped_files()
    value = chest["a"]
    numpy.testing.assert_array_equal(value, array(1))
    assert name in mapped_files()
    chest.drop()


def test_without_map_loads_values_are_read(tmp_path: Path) -> None:
    chest = spilled_pair(tmp_path)
    name = chest._store.filename("a")
    numpy.testing.assert_array_equal(chest["a"], array(1))
    assert name not in mapped_files()
    chest.drop()


def test_files_below_the_threshold_are_read(tmp_path: Path) -> None:
    chest = spilled_pair(tmp_path, map_loads="4 MiB")
    name = chest._store.filename("a")
    numpy.testing.assert_array_equal(chest["a"], array(1))
    assert name not in mapped_files()
    chest.drop()


def test_true_maps_files_of_one_mib_and_more(tmp_path: Path) -> None:
    chest = Chest(path=tmp_path / "c", available_memory="1 MiB", map_loads=True)
    chest["small"] = array(1, MIB // 2)
    chest["large"] = array(2, 2 * MIB)  # over the budget: straight to disk
    chest.evict()
    assert not chest.inmem
    small, large = chest["small"], chest["large"]
    assert chest._store.filename("large") in mapped_files()
    assert chest._store.filename("small") not in mapped_files()
    numpy.testing.assert_array_equal(small, array(1, MIB // 2))
    numpy.testing.assert_array_equal(large, array(2, 2 * MIB))
    chest.drop()


def test_writing_to_a_mapped_value_copies_the_page_and_leaves_the_file(tmp_path: Path) -> None:
    chest = spilled_pair(tmp_path, map_loads=True)
    before = Path(chest._store.filename("a")).read_bytes()
    value = chest["a"]
    assert value.flags.writeable
    value[:] = -1.0
    assert (value == -1.0).all()
    assert Path(chest._store.filename("a")).read_bytes() == before
    chest.drop()


def test_a_mapped_value_outlives_its_key_and_its_chest_then_is_unmapped(tmp_path: Path) -> None:
    chest = Chest(available_memory="3 MiB", map_loads=True)  # a temporary directory, removed at close
    chest["a"], chest["b"] = array(1), array(2)
    name = chest._store.filename("a")
    value = chest["a"]
    del chest["a"]
    assert not os.path.exists(name)
    chest.close()
    assert not os.path.exists(os.path.dirname(name))
    numpy.testing.assert_array_equal(value, array(1))
    assert name in mapped_files()
    del value
    gc.collect()
    assert name not in mapped_files()


def descriptors_in(directory: str) -> list[str]:
    """The files in ``directory`` this process has descriptors open on: not counted over the whole process,
    where other tests' Chests collected meanwhile, and the blank-making thread (spillkit.blanks), open and close
    theirs; nor the blank files, which that thread opens for an instant."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed since the listing
            continue
        if os.path.dirname(target) == os.path.realpath(directory) and not re.search(r"-b\d+$", target):
            found.append(target)
    return sorted(found)


def test_mapped_values_hold_no_file_descriptors(tmp_path: Path) -> None:
    chest = Chest(path=tmp_path / "c", available_memory="2 MiB", map_loads=True)
    for seed in range(20):
        chest[seed] = array(seed, MIB + 4096)
    assert len(chest.inmem) == 1
    descriptors = descriptors_in(chest.path)  # (its lock file's)
    values = [chest[seed] for seed in range(20)]  # each load evicts the one before; all stay alive here
    assert descriptors_in(chest.path) == descriptors
    assert {chest._store.filename(seed) for seed in range(19)} <= mapped_files()
    for seed, value in enumerate(values):
        numpy.testing.assert_array_equal(value, array(seed, MIB + 4096))
    chest.drop()


def test_a_damaged_mapped_file_names_its_key_and_the_rest_still_load(tmp_path: Path) -> None:
    chest = spilled_pair(tmp_path, map_loads=True)
    chest["c"] = array(3)  # spills b
    flip_last_byte(chest, "a")  # array data: the HMAC's digest refuses it (the CRC covers the pickle stream)
    with pytest.raises(CorruptSpillFile, match="the file is damaged, or") as raised:
        chest["a"]
    assert "'a'" in str(raised.value)
    numpy.testing.assert_array_equal(chest["b"], array(2))
    numpy.testing.assert_array_equal(chest["c"], array(3))
    chest.drop()


@pytest.mark.parametrize(
    ("change", "message"),
    [("truncate", "expected .* bytes, found"), ("append", "longer than what was written")],
)
def test_a_file_of_another_size_is_refused_not_mapped(tmp_path: Path, change: str, message: str) -> None:
    # A mapping past the end of a file would fault (SIGBUS) when read: the size is checked first.
    chest = spilled_pair(tmp_path, map_loads=True)
    name = chest._store.filename("a")
    size = os.path.getsize(name)
    if change == "truncate":
        os.truncate(name, size // 2)
    else:
        with open(name, "ab") as file:
            file.write(b"x" * 4096)
    with pytest.raises(CorruptSpillFile, match=message):
        chest["a"]
    assert name not in mapped_files()
    numpy.testing.assert_array_equal(chest["b"], array(2))
    assert "a" in chest  # the key stays: its value is unreadable, not silently gone
    chest.drop()


@pytest.mark.parametrize("bad", [0, "0 B", -1, "a lot"])
def test_map_loads_must_be_a_boolean_or_a_positive_size(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ValueError, match=r"map_loads|byte count|negative"):
        Chest(path=tmp_path / "c", map_loads=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "c").exists()  # refused before the directory was made


def test_map_file_maps_a_descriptor_that_is_then_closed(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * 16)
    fd = os.open(path, os.O_RDONLY)
    view = map_file(fd, 4096)
    os.close(fd)
    assert bytes(view[:4]) == b"\x00\x01\x02\x03" and len(view) == 4096
    view[0] = 255  # private: the file keeps its byte
    assert path.read_bytes()[0] == 0
    fd = os.open(path, os.O_RDONLY)
    with pytest.raises(ValueError, match="cannot map 0 bytes"):
        map_file(fd, 0)
    os.close(fd)
    with pytest.raises(OSError, match="mmap of 4096 bytes failed"):
        map_file(-1, 4096)


def test_spilling_maps_loads_unless_told_not_to() -> None:
    pytest.importorskip("dask")
    from spillkit.dask import spilling

    for options, expect_mapped in (({}, True), ({"map_loads": False}, False)):
        with spilling(available_memory="3 MiB", **options) as chest:
            chest["a"], chest["b"] = array(1), array(2)
            name = chest._store.filename("a")
            value = chest["a"]
            assert (name in mapped_files()) is expect_mapped
            numpy.testing.assert_array_equal(value, array(1))
        del value


def test_a_file_system_that_cannot_map_gets_the_value_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Some file systems (certain FUSE mounts) refuse mmap with ENODEV: the load reads the file instead.
    import errno

    def refuse(fd: int, size: int, on_unmap: object = None) -> memoryview:
        raise OSError(errno.ENODEV, "No such device")

    chest = spilled_pair(tmp_path, map_loads=True)
    monkeypatch.setattr(spillkit.filereads, "map_file", refuse)
    numpy.testing.assert_array_equal(chest["a"], array(1))
    assert chest._store.filename("a") not in mapped_files()
    # No descriptor left on its file. (Not a count of all descriptors: the blank-file thread opens and
    # closes its own meanwhile, which made that count flaky, 1 run in 12.)
    assert chest._store.filename("a") not in open_files()
    chest.drop()


def open_files() -> set[str]:
    """The files this process has descriptors on."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # (the listing's own descriptor is gone by now)
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
    return found


def test_distributed_worker_storage_maps_loads_unless_told_not_to(tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    from spillkit.distributed import worker_storage

    for options, expect_mapped in (({}, True), ({"map_loads": False}, False)):
        chest = worker_storage(
            str(tmp_path / f"worker-{expect_mapped}"), available_memory="3 MiB", instrument_metrics=False, **options
        )
        chest["a"], chest["b"] = array(1), array(2)
        value = chest["a"]
        assert (chest._store.filename("a") in mapped_files()) is expect_mapped
        numpy.testing.assert_array_equal(value, array(1))
        chest.drop()


@pytest.mark.parametrize("compression", [None, "lz4"])
def test_a_pickle_stream_rewritten_after_the_check_is_not_what_is_unpickled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compression: str | None
) -> None:
    # Before (helper-84): a mapped record was checked, then unpickled from the file's own pages, which a
    # second process rewriting the file could swap for a stream that runs code. Here the "attacker"
    # writes at the worst moment: right after the check, before the unpickling.
    from spillkit.spillfile import _FIXED, HEADER_SIZE, open_record

    chest = Chest(path=tmp_path / "c", available_memory="3 MiB", map_loads=True, compression=compression)
    chest["a"] = {"label": "the real one", "data": array(1)}
    chest["b"] = array(2)
    full = chest._store.filename("a")
    original = Path(full).read_bytes()
    _, _, name_len, body_len, _, signed_len = _FIXED.unpack_from(original, 0)
    start = len(original) - body_len
    assert b"the real one" in original[start : start + signed_len]
    forged = original.replace(b"the real one", b"the fake one")

    def checked_then_rewritten(*args: object) -> memoryview:
        body = open_record(*args)  # type: ignore[arg-type]
        fd = os.open(full, os.O_WRONLY)
        try:
            os.pwrite(fd, forged[: start + signed_len], 0)  # same length: the mapping sees it, unless private
        finally:
            os.close(fd)
        return body

    monkeypatch.setattr(spillkit.filereads, "open_record", checked_then_rewritten)
    got = chest["a"]
    assert got["label"] == "the real one"
    assert full in mapped_files()  # it was mapped, not read
    assert HEADER_SIZE + name_len <= start
    del got
    chest.drop()


def test_the_prefix_to_copy_is_measured_on_the_private_copy_of_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before (helper-86): privatize_prefix read the signed prefix's length from the file's own page, then
    # copied: a header saying "no prefix" while it was read, put back right after, left the stream in
    # pages the file could still change after the check. Now the length comes from the page copied.
    import spillkit.spillfile as spillfile

    chest = Chest(path=tmp_path / "c", available_memory="3 MiB", map_loads=True)
    chest["a"] = {"label": "x" * 6000 + "the real one", "data": array(1)}  # the stream runs past the first page
    chest["b"] = array(2)
    full = chest._store.filename("a")
    genuine = Path(full).read_bytes()[: spillfile._FIXED.size]
    fields = list(spillfile._FIXED.unpack_from(genuine, 0))
    fields[5] = 0  # signed_len
    lying = spillfile._FIXED.pack(*fields)
    real = spillfile._FIXED

    class PutBackAfterPrivatizeReads:
        def __init__(self) -> None:
            self.privatizing = self.put_back = False

        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def unpack_from(self, data: memoryview, offset: int = 0) -> tuple[object, ...]:
            got = real.unpack_from(data, offset)
            if self.privatizing and not self.put_back:  # the attacker puts the genuine header back at once
                _pwrite(full, genuine, 0)
                self.put_back = True
            return got

    fixed = PutBackAfterPrivatizeReads()
    real_privatize = spillfile.privatize_prefix

    def privatize(data: memoryview) -> None:
        fixed.privatizing = True
        try:
            real_privatize(data)
        finally:
            fixed.privatizing = False

    _pwrite(full, lying, 0)
    monkeypatch.setattr(spillfile, "_FIXED", fixed)
    monkeypatch.setattr(spillkit.filereads, "privatize_prefix", privatize)
    with pytest.raises(CorruptSpillFile, match=r"checksum mismatch|authentication failed"):  # the lie is checked
        chest["a"]
    assert fixed.put_back  # privatize_prefix read the header (else the lie was only ever the file's)
    monkeypatch.undo()
    assert chest["a"]["label"].endswith("the real one")  # the file itself is genuine again
    chest.drop()


def _pwrite(path: str, data: bytes, offset: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def four_arrays_two_spilled(tmp_path: Path) -> Chest:
    """A mapping Chest holding four 160 kB arrays, 0 and 1 spilled."""
    chest = Chest(path=tmp_path / "c", available_memory=300_000, pack_threshold=0, map_loads=1)
    for i in range(4):
        chest[i] = numpy.full(20_000, i, dtype=float)
    return chest


def assert_both_spilled_arrays_load(chest: Chest) -> None:
    numpy.testing.assert_array_equal(chest[1], numpy.full(20_000, 1.0))  # before: LoadFailed (KeyError of the pin)
    numpy.testing.assert_array_equal(chest[0], numpy.full(20_000, 0.0))


def test_an_interrupt_after_the_mapping_got_its_finalizer_unmaps_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # helper-126: a KeyboardInterrupt there unmapped the region, then its finalizer unmapped it again and
    # undid the file's pin a second time (the caller undoes it too): the next load of another key failed.
    chest = four_arrays_two_spilled(tmp_path)
    unmapped: list[int] = []
    mapper, unmapper = spillkit.mapped._LIBC

    def counting_unmap(address: int, size: int) -> int:
        unmapped.append(address)
        return int(unmapper(address, size))

    class InterruptedFinalize(spillkit.mapped.weakref.finalize):  # type: ignore[misc]
        def __setattr__(self, name: str, value: object) -> None:
            if name == "atexit":
                raise KeyboardInterrupt  # just after the finalizer was made, as a Ctrl-C may land
            super().__setattr__(name, value)

    monkeypatch.setattr(spillkit.mapped, "_LIBC", (mapper, counting_unmap))
    monkeypatch.setattr(spillkit.mapped.weakref, "finalize", InterruptedFinalize)
    with pytest.raises(KeyboardInterrupt):
        chest[0]
    monkeypatch.undo()
    gc.collect()
    assert len(unmapped) == 1  # before: 2, the same address
    assert_both_spilled_arrays_load(chest)
    chest.close()


def test_an_interrupt_just_after_the_mapping_was_made_undoes_its_pin_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # helper-126's sweep: the load's failure path undid the file's pin, and so did the mapping's finalizer
    # once the view it had made was dropped; the next pin's count found none left (KeyError of the file id).
    chest = four_arrays_two_spilled(tmp_path)
    real = spillkit.mapped.map_file

    def made_then_interrupted(*args: Any) -> Any:
        real(*args)  # (the view is dropped at once: its finalizer runs)
        raise KeyboardInterrupt

    monkeypatch.setattr(spillkit.filereads, "map_file", made_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        chest[0]
    monkeypatch.undo()
    gc.collect()
    assert not spillkit.mapped.any_mapped()  # every pin undone, none twice
    assert_both_spilled_arrays_load(chest)
    chest.close()
