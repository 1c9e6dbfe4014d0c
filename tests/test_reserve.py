"""The reserve file (spillkit/reserve.py): room held for the next manifest, so that a flush on a full disk
commits without first freeing the files the previous flush's manifest needs.

Real disk throughout (``tmp_path``, and a real full tmpfs where this machine may mount one). The only fakes
inject faults: ``write_manifest`` as spillkit.persistence calls it raises ENOSPC, or "crashes" (copies the
directory as it is at that moment, then raises :class:`Crash`), and the fault injector of
tests/test_resource_faults.py makes ``posix_fallocate`` fail.
"""

from __future__ import annotations

import errno
import os
import shutil
import warnings
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import crash_copy, fill
from test_resource_faults import (
    BUDGET,
    KEYS,
    MODES,
    Lab,
    assert_accounting,
    assert_recovers,
    assert_values,
    mounted_tmpfs,
    payload,
    spill_warnings,
    unit_sizeof,
)

import spillkit.persistence
import spillkit.reserve
from spillkit import Chest, SpillError, SpillWarning
from spillkit.manifest import MANIFEST_NAME, ManifestEntry, write_manifest
from spillkit.reserve import MIN_RESERVE_BYTES, RESERVE_NAME, planned_size

Values = dict[Hashable, Any]


@pytest.fixture(params=MODES)
def lab(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    """A file per value, then packed (a segment per record), as in tests/test_resource_faults.py."""
    made = Lab(tmp_path, monkeypatch, request.param)
    yield made
    made.close()


class Crash(BaseException):
    """The process dies here: nothing after it runs (not an OSError, so no clean-up path catches it)."""


class ManifestWrites:
    """Stands in for ``write_manifest`` in spillkit.persistence; call n does ``script[n-1]`` (then "real"):
    ``"enospc"`` raises ENOSPC as a full disk does, ``"crash"`` copies the directory to ``crash_dir`` and
    raises :class:`Crash`, ``"real"`` writes (and may meet a real full disk). Each call records the names
    in the directory as it found them, and the error a real write raised."""

    def __init__(self, *script: str, crash_dir: Path | None = None) -> None:
        self.script = script
        self.crash_dir = crash_dir
        self.listings: list[set[str]] = []
        self.errors: list[OSError] = []

    def __call__(self, path: str, entries: list[ManifestEntry], secret: bytes, *, sync_parent: bool = False) -> int:
        self.listings.append(set(os.listdir(path)))
        action = self.script[len(self.listings) - 1] if len(self.listings) <= len(self.script) else "real"
        if action == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        if action == "crash":
            assert self.crash_dir is not None
            shutil.copytree(path, self.crash_dir, symlinks=True)  # what a restart would find
            raise Crash
        try:
            return write_manifest(path, entries, secret, sync_parent=sync_parent)
        except OSError as error:
            self.errors.append(error)
            raise

    @property
    def calls(self) -> int:
        return len(self.listings)


def reserve_of(chest: Chest) -> os.stat_result:
    return os.stat(os.path.join(chest.path, RESERVE_NAME))


def assert_reserve_whole(chest: Chest) -> None:
    """The reserve is planned after the manifest on disk, and its blocks are really allocated."""
    planned = planned_size(os.path.getsize(os.path.join(chest.path, MANIFEST_NAME)))
    found = reserve_of(chest)
    assert found.st_size == planned
    assert found.st_blocks * 512 >= planned


def flushed_then_overwritten(lab: Lab) -> tuple[Chest, Values, Values]:
    """A flushed Chest whose every key was overwritten since: the old values' files (or segments) are
    kept for the committed manifest until the next commit. Returns it, the flushed values and the new."""
    chest, old = lab.filled()
    chest.flush()
    new = {key: payload(100 + i) for i, key in enumerate(KEYS)}
    chest.update(new)
    assert chest._store.retained
    return chest, old, new


def reopen_exactly(path: Path | str, expected: Values, pack_threshold: int | None) -> None:
    """A restart on ``path`` gives back exactly ``expected``; a missing file (a warning) fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpillWarning)
        again = Chest(path=path, available_memory=BUDGET, sizeof=unit_sizeof, pack_threshold=pack_threshold)
    try:
        assert_values(again, expected)
        assert RESERVE_NAME not in set(again._store.segment_files()) | set(again._store.inner.names().values())
    finally:
        again.drop()


# ---- when it is made, its size ----------------------------------------------------------------------


def test_the_first_flush_makes_the_reserve_with_its_blocks_allocated(lab: Lab) -> None:
    chest, expected = lab.filled()
    assert RESERVE_NAME not in os.listdir(chest.path)  # a Chest pays for it only once it flushes
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpillWarning)
        chest.flush()
    assert_reserve_whole(chest)
    assert reserve_of(chest).st_size == MIN_RESERVE_BYTES  # six keys: the minimum
    assert chest.stats.reserve_failures == 0
    assert_accounting(chest)  # not a spill file, not counted in disk_bytes
    assert_recovers(chest, expected)


def test_a_chest_that_never_flushes_and_a_temporary_chest_hold_no_reserve(tmp_path: Path) -> None:
    kept = Chest(path=tmp_path / "kept", available_memory=BUDGET, sizeof=unit_sizeof)
    kept.update({key: payload(i) for i, key in enumerate(KEYS)})
    assert RESERVE_NAME not in os.listdir(kept.path)
    kept.drop()
    temporary = Chest(available_memory=BUDGET, sizeof=unit_sizeof)
    temporary.update({key: payload(i) for i, key in enumerate(KEYS)})
    temporary.flush()  # a temporary Chest may flush, but promises nothing across a crash
    assert RESERVE_NAME not in os.listdir(temporary.path)
    temporary.close()


def test_the_reserve_grows_with_the_manifest_and_shrinks_back(tmp_path: Path) -> None:
    chest = Chest(path=tmp_path / "chest", available_memory=10**9)
    chest.update({f"a-long-key-name-for-a-large-manifest-{i:06d}": i for i in range(2000)})
    chest.flush()
    assert os.path.getsize(os.path.join(chest.path, MANIFEST_NAME)) > MIN_RESERVE_BYTES  # so 2x it is planned
    assert_reserve_whole(chest)
    for i in range(10, 2000):
        del chest[f"a-long-key-name-for-a-large-manifest-{i:06d}"]
    chest.flush()
    assert_reserve_whole(chest)  # cut back: it was more than twice what the small manifest needs
    assert reserve_of(chest).st_size == MIN_RESERVE_BYTES
    chest.drop()


class _NoFallocate:
    """``os`` for spillkit.reserve on a system without ``posix_fallocate``, or whose file system refuses it."""

    def __init__(self, missing: bool) -> None:
        self.missing = missing
        self.pwrites = 0

    def __getattr__(self, name: str) -> Any:
        if name == "posix_fallocate" and self.missing:
            raise AttributeError(name)
        return getattr(os, name)

    def posix_fallocate(self, fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        self.pwrites += 1
        return os.pwrite(fd, data, offset)


@pytest.mark.parametrize("missing", [True, False], ids=["no-posix_fallocate", "unsupported"])
def test_without_posix_fallocate_the_reserve_is_written_with_zeros(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: bool
) -> None:
    fake = _NoFallocate(missing)
    if missing:  # getattr(os, "posix_fallocate", None) sees the class attribute otherwise
        monkeypatch.delattr(_NoFallocate, "posix_fallocate")
    monkeypatch.setattr(spillkit.reserve, "os", fake)
    chest = Chest(path=tmp_path / "chest", available_memory=BUDGET, sizeof=unit_sizeof)
    chest.update({key: payload(i) for i, key in enumerate(KEYS)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpillWarning)
        chest.flush()
    assert fake.pwrites > 0
    assert_reserve_whole(chest)
    chest.drop()


# ---- a full disk at the commit ----------------------------------------------------------------------


def test_enospc_at_the_manifest_commits_into_the_reserve_before_anything_is_freed(lab: Lab) -> None:
    chest, _, new = flushed_then_overwritten(lab)
    kept = set(chest._store.retained)
    writes = ManifestWrites("enospc")
    lab.monkeypatch.setattr(spillkit.persistence, "write_manifest", writes)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpillWarning)
        chest.flush()
    assert writes.calls == 2
    assert RESERVE_NAME in writes.listings[0]
    assert RESERVE_NAME not in writes.listings[1]  # the retry wrote into the reserve's room...
    assert kept <= writes.listings[1]  # ...with every file the previous manifest needs still there
    assert not chest._store.retained  # freed once the new manifest was committed
    assert_reserve_whole(chest)  # and the reserve made again
    assert chest.stats.reserve_failures == 0
    assert_recovers(chest, new)


def test_a_crash_after_the_reserve_is_released_leaves_the_previous_flush_whole(lab: Lab) -> None:
    """Fails without the reserve: the files the old manifest needs were freed before the retry."""
    chest, old, _ = flushed_then_overwritten(lab)
    crashed = lab.tmp_path / "crashed"
    writes = ManifestWrites("enospc", "crash", crash_dir=crashed)
    lab.monkeypatch.setattr(spillkit.persistence, "write_manifest", writes)
    with pytest.raises(Crash):
        chest.flush()
    assert writes.calls == 2
    reopen_exactly(crashed, old, chest._store.pack_threshold)  # every key with its flushed value
    assert RESERVE_NAME not in writes.listings[1]  # the crash came after the reserve was released


def test_a_manifest_that_outgrew_the_reserve_frees_the_previous_flush_s_files_as_a_last_resort(lab: Lab) -> None:
    """The case the reserve cannot cover (docs/durability.md): still no room once it is released."""
    chest, _, new = flushed_then_overwritten(lab)
    kept = set(chest._store.retained)
    writes = ManifestWrites("enospc", "enospc")
    lab.monkeypatch.setattr(spillkit.persistence, "write_manifest", writes)
    chest.flush()
    assert writes.calls == 3
    assert kept <= writes.listings[1]  # the reserve was tried first...
    assert not kept & writes.listings[2]  # ...then the old files went, and the third write committed
    assert_reserve_whole(chest)
    assert_recovers(chest, new)


def test_a_commit_that_fails_after_the_early_commit_names_the_keys_the_committed_state_lacks(lab: Lab) -> None:
    """A full disk at a value's write, with files kept for the previous flush, makes the flush commit what
    is written first (freeing them); if the final commit then fails, that early state is the committed one.

    Before: the flush raised the bare OSError, which means "the previous committed state is intact"
    (docs/durability.md), while a restart found a state without the key whose write had failed."""
    chest, _, new = flushed_then_overwritten(lab)
    fault = lab.fault("write", errno.ENOSPC)
    real_check = fault.check

    def once(op: str, target: object = None) -> None:  # one value's write meets the full disk, then room comes back
        try:
            real_check(op, target)
        except OSError:
            fault.clear()
            raise

    fault.check = once  # type: ignore[method-assign]
    writes = ManifestWrites("real", "enospc", "enospc")  # the early commit lands; the final one finds no room
    lab.monkeypatch.setattr(spillkit.persistence, "write_manifest", writes)
    with pytest.raises(SpillError, match="flush could not write 1 value") as info:
        chest.flush()
    assert fault.failures == 1 and writes.calls == 3
    (failed,) = [key for key, _ in chest._flush_failures]
    assert repr(failed) in str(info.value)
    cause = info.value.__cause__
    assert isinstance(cause, OSError) and cause.errno == errno.ENOSPC
    assert any("committed every value written before the disk filled" in note for note in cause.__notes__)
    committed = {key: value for key, value in new.items() if key != failed}
    reopen_exactly(crash_copy(chest), committed, chest._store.pack_threshold)  # what a crash now leaves
    assert_values(chest, new)  # and nothing is lost in the Chest itself
    assert_recovers(chest, new)


def test_enospc_at_the_manifest_with_nothing_retained_commits_into_the_reserve(lab: Lab) -> None:
    chest, expected = lab.filled()
    chest.flush()
    chest["more"] = expected["more"] = payload(77)
    assert not chest._store.retained  # no file to free: without the reserve this flush would raise
    lab.monkeypatch.setattr(spillkit.persistence, "write_manifest", ManifestWrites("enospc"))
    chest.flush()
    assert_reserve_whole(chest)
    assert_recovers(chest, expected)


def test_a_reserve_that_cannot_be_made_again_is_a_warning_and_every_value_stays(lab: Lab) -> None:
    chest, _, new = flushed_then_overwritten(lab)
    lab.monkeypatch.setattr(spillkit.persistence, "write_manifest", ManifestWrites("enospc"))
    fault = lab.fault("allocate", errno.ENOSPC)
    with spill_warnings() as messages:
        chest.flush()  # committed: the failure to make the reserve again is not raised
    assert fault.failures == 1
    assert len(messages) == 1 and "could not make the reserve" in messages[0] and "No space left" in messages[0]
    assert chest.stats.reserve_failures == 1
    assert reserve_of(chest).st_blocks == 0  # made again empty: the room is not held
    assert_values(chest, new)
    assert_accounting(chest)
    fault.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpillWarning)
        chest.flush()  # the next flush makes it whole
    assert_reserve_whole(chest)
    assert_recovers(chest, new)


def test_a_first_flush_that_cannot_make_the_reserve_warns_and_commits(lab: Lab) -> None:
    chest, expected = lab.filled()
    fault = lab.fault("allocate", errno.ENOSPC)
    with spill_warnings() as messages:
        chest.flush()
    assert fault.failures == 1 and len(messages) == 1 and chest.stats.reserve_failures == 1
    fault.clear()
    assert_recovers(chest, expected)


def test_a_failed_commit_notes_a_reserve_it_cannot_make_again(lab: Lab) -> None:
    chest, expected = lab.filled()
    chest.flush()
    chest[KEYS[0]] = expected[KEYS[0]] = payload(99)  # a change, so that the next flush commits
    lab.monkeypatch.setattr(spillkit.persistence, "write_manifest", ManifestWrites(*["enospc"] * 5))
    fault = lab.fault("allocate", errno.ENOSPC)
    with spill_warnings() as messages, pytest.raises(OSError) as info:
        chest.flush()  # nothing retained to free: the flush raises the disk's error
    assert info.value.errno == errno.ENOSPC
    assert messages == []  # the error says it, once
    assert any("could not make the reserve" in note for note in info.value.__notes__)
    assert chest.stats.reserve_failures == 1
    fault.clear()
    lab.monkeypatch.setattr(spillkit.persistence, "write_manifest", write_manifest)
    assert_recovers(chest, expected)


# ---- reopen, close and drop -------------------------------------------------------------------------


def test_close_and_reopen_keep_the_reserve_and_drop_removes_it(lab: Lab) -> None:
    chest, expected = lab.filled()
    chest.close()
    before = reserve_of(chest)  # close() flushed, so it holds one, and leaves it
    again = lab.chest()
    assert_values(again, expected)  # neither a key nor a segment...
    assert RESERVE_NAME not in set(again._store.segment_files())
    after = reserve_of(again)  # ...nor a leftover: the same file, untouched
    assert (after.st_ino, after.st_size, after.st_blocks) == (before.st_ino, before.st_size, before.st_blocks)
    again.flush()
    assert reserve_of(again).st_ino == before.st_ino  # the next flush finds its room still held
    assert_reserve_whole(again)
    again.drop()
    assert not os.path.exists(again.path)


# ---- a real full disk ---------------------------------------------------------------------------


@pytest.mark.parametrize("crash", [False, True], ids=["commits", "crash-at-the-retry"])
def test_a_real_full_tmpfs_commits_through_the_reserve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash: bool
) -> None:
    """Values are 16 KiB files, all written straight to disk; the old ones stay for the committed
    manifest; then the disk is filled to the last block. The real manifest write fails with ENOSPC;
    the retry commits (or the process dies there: the restart gets the previous flush, whole)."""
    with mounted_tmpfs(tmp_path / "mnt", "size=1m") as mnt:
        chest = Chest(path=mnt / "chest", available_memory=1, sizeof=len, pack_threshold=0)
        try:
            old = {f"k{i}": bytes([i]) * 16384 for i in range(8)}
            chest.update(old)
            chest.flush()
            new = {f"k{i}": bytes([100 + i]) * 16384 for i in range(8)}
            chest.update(new)
            assert not chest.inmem and chest._store.retained
            fill(mnt)
            crashed = tmp_path / "crashed"
            writes = ManifestWrites("real", "crash" if crash else "real", crash_dir=crashed)
            monkeypatch.setattr(spillkit.persistence, "write_manifest", writes)
            if crash:
                with pytest.raises(Crash):
                    chest.flush()
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("error", SpillWarning)
                    chest.flush()
            assert writes.calls == 2
            assert [error.errno for error in writes.errors] == [errno.ENOSPC]  # the first write: the disk
            if crash:
                reopen_exactly(crashed, old, 0)
                assert RESERVE_NAME in writes.listings[0] and RESERVE_NAME not in writes.listings[1]
                return
            assert_reserve_whole(chest)  # room again: the old values' files are gone
            monkeypatch.setattr(spillkit.persistence, "write_manifest", write_manifest)
            chest.close()
            reopen_exactly(chest.path, new, 0)
        finally:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                chest.drop()
