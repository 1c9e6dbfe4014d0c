"""Things planted in a Chest's directory (:mod:`spillkit.regularfile`), and records too large for one read.

Whoever can write into the directory may replace a name with a FIFO (whose open would block
forever, with the engine's lock held), a symbolic link (which would point a write outside), or a
file whose name is no UTF-8. Each costs only the keys it stands for: never a hang, never a write
outside, never the whole directory.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest

import spillkit
import spillkit.segfiles
from spillkit import Chest, CorruptSpillFile, SpillError, SpillWarning
from spillkit.manifest import MANIFEST_NAME
from spillkit.reserve import RESERVE_NAME
from spillkit.segfiles import is_segment_name

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and O_NOFOLLOW are POSIX"),
    pytest.mark.timeout(120),  # before the fixes these hung in open(): fail instead of stalling the suite
]

VALUES = {f"k{i}": bytes([i]) * 3000 for i in range(12)}
KEPT = {"k0", "k1"}  # with 16 KiB segments, the first holds k0-k5: mostly dead, a flush compacts it


def packed_chest(path: Path, segment_bytes: int = 8 * 1024) -> Chest:
    """Twelve packed values in several segment files, flushed; closed by the caller."""
    chest = Chest(path=path, available_memory=0)  # every value spilled, packed (below pack_threshold)
    chest._store.segment_bytes = segment_bytes  # a few records per segment (there is no setting for it)
    chest.update(VALUES)
    chest.flush()
    return chest


def chest_holding_a(tmp_path: Path) -> tuple[Path, Chest]:
    """A Chest at ``tmp_path / "c"`` holding 100 bytes under "a", spilled."""
    path = tmp_path / "c"
    chest = Chest(path=path, available_memory=0)
    chest["a"] = b"a" * 100
    return path, chest


def test_a_fifo_planted_under_a_segments_name_costs_only_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "c"
    chest = packed_chest(path)
    lost = {key for key in VALUES if chest._store.location(key)[0] == chest._store.location("k0")[0]}
    segment = Path(chest._store.filename("k0"))
    chest.close()
    segment.unlink()
    os.mkfifo(segment)
    with pytest.warns(SpillWarning, match="is no regular file") as caught:
        again = Chest(path=path, available_memory=0)  # before: blocked forever in open()
    assert len(caught) == len(lost)
    assert set(again) == VALUES.keys() - lost
    assert all(again[key] == VALUES[key] for key in again)
    assert segment.exists()  # not ours: left alone, not removed as a leftover segment
    again.close()


def test_a_symlink_planted_under_a_segments_name_is_not_followed(tmp_path: Path) -> None:
    path = tmp_path / "c"
    chest = packed_chest(path)
    segment = Path(chest._store.filename("k0"))
    chest.close()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(segment.read_bytes())  # the same bytes: only the link is wrong
    segment.unlink()
    segment.symlink_to(elsewhere)
    with pytest.warns(SpillWarning, match="is no regular file"):
        again = Chest(path=path, available_memory=0)
    assert "k0" not in again and len(again) >= 1
    again.close()


def test_a_fifo_planted_as_the_reserve_is_warned_about_and_the_flush_commits(tmp_path: Path) -> None:
    path, chest = chest_holding_a(tmp_path)
    (path / RESERVE_NAME).unlink(missing_ok=True)
    os.mkfifo(path / RESERVE_NAME)
    with pytest.warns(SpillWarning, match="could not make the reserve"):
        chest.flush()  # before: blocked forever in open(), holding the engine's lock
    with pytest.warns(SpillWarning, match="could not make the reserve"):  # each flush tries again
        chest.close()
    again = Chest(path=path, available_memory=0)
    assert again["a"] == b"a" * 100
    again["b"] = b"b"  # a change: the close commits a manifest, then makes the reserve (a close without one does not)
    with pytest.warns(SpillWarning, match="could not make the reserve"):
        again.close()


def test_a_fifo_planted_under_a_keys_file_reads_as_damaged_and_costs_only_that_key(tmp_path: Path) -> None:
    path = tmp_path / "c"
    chest = Chest(path=path, available_memory=0, pack_threshold=0)  # a file per value
    chest.update({"a": b"a" * 100, "b": b"b" * 100})
    name = Path(chest._store.filename("a"))
    name.unlink()
    os.mkfifo(name)
    with pytest.raises(CorruptSpillFile, match="'a'"):
        chest["a"]  # before: blocked forever in open(), holding the engine's lock
    assert chest["b"] == b"b" * 100
    chest.drop()


def test_a_symlink_planted_under_a_keys_file_is_not_followed_out_of_the_directory(tmp_path: Path) -> None:
    # Before: the read followed the link and returned what the file outside held (here the key's own
    # authentic record, moved out), and a reopen adopted the link without a word.
    path = tmp_path / "c"
    chest = Chest(path=path, available_memory=0, pack_threshold=0)  # a file per value
    chest.update({"a": b"a" * 100, "b": b"b" * 100})
    chest.flush()
    name = Path(chest._store.filename("a"))
    outside = tmp_path / "outside"
    name.rename(outside)
    name.symlink_to(outside)
    with pytest.raises(CorruptSpillFile, match=r"'a'.*symbolic link"):
        chest["a"]
    assert chest["b"] == b"b" * 100
    chest.close()
    with pytest.warns(SpillWarning, match="key 'a' is no regular file"):
        again = Chest(path=path, available_memory=0, pack_threshold=0)
    assert dict(again) == {"b": b"b" * 100} and outside.exists()
    again.drop()


def test_a_directory_planted_under_a_keys_file_reads_as_damaged(tmp_path: Path) -> None:
    # Before: IsADirectoryError naming a file descriptor ("Is a directory: 4"), not the key.
    path = tmp_path / "c"
    chest = Chest(path=path, available_memory=0, pack_threshold=0)
    chest.update({"a": b"a" * 100, "b": b"b" * 100})
    name = Path(chest._store.filename("a"))
    name.unlink()
    name.mkdir()
    with pytest.raises(CorruptSpillFile, match=r"'a'.*not a regular file"):
        chest["a"]
    assert chest["b"] == b"b" * 100
    name.rmdir()
    chest.drop()


@pytest.mark.parametrize("write_behind", [False, True], ids=["synchronous", "write-behind"])
def test_a_foreign_file_under_a_keys_name_is_left_alone(tmp_path: Path, write_behind: bool) -> None:
    # Before: the spill moved its file over the user's (report.txt), and the key's delete removed it.
    path = tmp_path / "c"
    Chest(path=path).close()  # a Chest directory, reopened below
    foreign = path / "report.txt"
    foreign.write_text("the user's notes\n")
    chest = Chest(path=path, available_memory=1, sizeof=lambda v: 1, pack_threshold=0, write_behind=write_behind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SpillWarning)
        chest["report.txt"] = ["a value"] * 10
        chest["other"] = [1]  # report.txt is the victim: its write meets the foreign file
        chest.wait_for_writes()
        # Nothing failed: a synchronous write takes another name at once, a background one at the next
        # round; no warning, no disk error counted, no failing disk assumed (helpers 78, 82).
        assert not caught and chest.stats.spill_failures == chest.stats.disk_errors == 0
        if write_behind:
            assert not chest.engine._writer.disk_failing
            assert chest.memory_bytes <= chest.available_memory  # wait_for_writes wrote it under another name
    assert chest["report.txt"] == ["a value"] * 10 and len(chest.inmem) == 1  # the other one is on disk
    assert foreign.read_text() == "the user's notes\n"
    chest.flush()
    del chest["report.txt"]
    assert foreign.read_text() == "the user's notes\n"
    chest.close()
    again = Chest(path=path)
    assert dict(again) == {"other": [1]} and foreign.read_text() == "the user's notes\n"
    again.close()


def test_a_symlink_planted_at_the_manifests_temporary_name_is_not_written_through(tmp_path: Path) -> None:
    path, chest = chest_holding_a(tmp_path)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"keep me")
    (path / f"{MANIFEST_NAME}.tmp-{os.getpid()}").symlink_to(victim)  # the name flush used to write
    chest.flush()
    assert victim.read_bytes() == b"keep me"  # before: the manifest's bytes
    assert not (path / MANIFEST_NAME).is_symlink()
    chest.close()
    again = Chest(path=path, available_memory=0)
    assert again["a"] == b"a" * 100
    again.close()


def test_a_symlink_planted_as_the_manifest_is_refused_not_read(tmp_path: Path) -> None:
    path, chest = chest_holding_a(tmp_path)
    chest.close()
    manifest = path / MANIFEST_NAME
    elsewhere = tmp_path / "manifest-copy"
    elsewhere.write_bytes(manifest.read_bytes())
    manifest.unlink()
    manifest.symlink_to(elsewhere)
    with pytest.raises(SpillError, match=r"manifest .* is no regular file .*Too many levels of symbolic links"):
        Chest(path=path, available_memory=0)  # (a bare OSError before; durability.md promises SpillError)
    assert manifest.is_symlink() and elsewhere.exists()  # nothing touched


@pytest.mark.parametrize("planted", ["fifo", "directory"])
def test_a_fifo_or_directory_planted_as_the_manifest_is_a_spill_error_and_nothing_is_removed(
    tmp_path: Path, planted: str
) -> None:
    # helper-117: a bare OSError (EINVAL) before, where durability.md promises SpillError for a damaged manifest.
    path, chest = chest_holding_a(tmp_path)
    chest.close()
    manifest = path / MANIFEST_NAME
    manifest.unlink()
    os.mkfifo(manifest) if planted == "fifo" else manifest.mkdir()
    before = sorted(os.listdir(path))
    with pytest.raises(SpillError, match=r"manifest .* is no regular file"):
        Chest(path=path, available_memory=0)
    assert sorted(os.listdir(path)) == before


def test_a_stray_file_whose_name_is_no_utf8_leaves_the_directory_openable(tmp_path: Path) -> None:
    path = tmp_path / "c"
    chest = Chest(path=path, available_memory=0, pack_threshold=0)
    chest.update({"a": b"a" * 100, "b": b"b" * 100})
    chest.close()
    stray = os.path.join(os.fsencode(path), b"stray-\xff")
    with open(stray, "wb") as file:
        file.write(b"not ours")
    again = Chest(path=path, available_memory=0)  # before: UnicodeEncodeError
    assert again["a"] == b"a" * 100 and again["b"] == b"b" * 100
    again.close()
    assert os.path.exists(stray)  # no spill file: left alone


def test_a_record_that_takes_several_reads_is_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Linux reads at most 0x7ffff000 bytes per pread: a packed record of 2 GiB or more takes several.
    # The fault: every pread returns at most 1000 bytes, as such a read would; the files are real.
    path = tmp_path / "c"
    chest = packed_chest(path, segment_bytes=16 * 1024)
    real = os.pread

    class ShortReads:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def pread(self, fd: int, length: int, offset: int) -> bytes:
            return real(fd, min(length, 1000), offset)

    monkeypatch.setattr(spillkit.segfiles, "os", ShortReads())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no record may look damaged
        assert all(chest[key] == value for key, value in VALUES.items())  # before: "the segment is truncated"
        for key in VALUES.keys() - KEPT:
            del chest[key]
        chest.flush()  # compacts the mostly dead segments: each live record read whole, then moved
    assert chest._store.compactions > 0
    assert [name for name in os.listdir(path) if is_segment_name(name)]
    assert all(chest[key] == VALUES[key] for key in KEPT)
    chest.close()


def test_a_fifo_planted_as_the_key_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    path, chest = chest_holding_a(tmp_path)
    chest.close()
    (path / ".spillkit-key").unlink()
    os.mkfifo(path / ".spillkit-key", 0o600)
    with pytest.raises(spillkit.SpillError, match="not a regular file"):
        Chest(path=path)  # before: blocked forever in open(), holding the directory's lock


def test_a_fifo_planted_under_a_file_awaiting_its_fsync_fails_the_flush_not_hangs_it(tmp_path: Path) -> None:
    path = tmp_path / "c"
    chest = Chest(path=path, available_memory=10, sizeof=lambda v: 100, pack_threshold=0)
    chest["a"] = b"x" * 100  # over the budget: its own file, not fsynced yet
    chest["b"] = b"y" * 100
    (path / "a").unlink()
    os.mkfifo(path / "a", 0o600)
    with pytest.raises(OSError, match="not a regular file"):
        chest.flush()  # before: blocked forever in the fsync's open(), with the engine's lock held
    assert chest["b"] == b"y" * 100
    chest.drop()
