"""spillkit.lockfiles: the steps of taking a directory's lock, each against what can go wrong with it.

(test_dir_lock.py covers the lock as Chests use it; these cases are the ones helper-136's mutants of
the steps survived.)
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import pytest

import spillkit.lockfiles
from spillkit import Chest, ChestLocked, SpillError
from spillkit.dirlock import LOCK_NAME, DirLock
from spillkit.lockfiles import _holder

pytestmark = pytest.mark.skipif(spillkit.lockfiles.fcntl is None, reason="no fcntl: nothing is locked")


@pytest.mark.parametrize(
    ("contents", "pid"),
    [(b"4321\n", 4321), (b"", None), (b"0\n", None), (b"99999999999\n", None), (b"\xff\n", None), (b"12ab", None)],
    ids=["a pid", "empty", "zero", "too large", "not ascii", "not a number"],
)
def test_the_holders_pid_is_read_only_when_it_is_one(tmp_path: Path, contents: bytes, pid: int | None) -> None:
    path = tmp_path / "lock"
    path.write_bytes(contents)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert _holder(fd) == pid  # (a mutant let 0 and 99999999999 through, or raised on \xff)
    finally:
        os.close(fd)


def test_a_fifo_under_the_lock_files_name_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    directory.mkdir()
    os.mkfifo(directory / LOCK_NAME)
    with pytest.raises(SpillError, match="is not a regular file"):
        Chest(path=directory)
    assert stat.S_ISFIFO(os.lstat(directory / LOCK_NAME).st_mode)  # left as it was


def test_a_symlink_under_the_lock_files_name_is_not_followed(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    directory.mkdir()
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep")
    os.symlink(target, directory / LOCK_NAME)
    with pytest.raises(SpillError, match="it is a symbolic link"):
        Chest(path=directory)
    assert target.read_bytes() == b"keep"  # no pid written through the link


def test_a_file_system_without_flock_on_directories_locks_the_file_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = spillkit.lockfiles.fcntl

    class NoDirectoryLocks:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def flock(self, fd: int, operation: int) -> None:
            if stat.S_ISDIR(os.fstat(fd).st_mode) and operation & real.LOCK_EX:
                raise OSError(errno.ENOLCK, "no locks on directories here")
            real.flock(fd, operation)

    monkeypatch.setattr(spillkit.lockfiles, "fcntl", NoDirectoryLocks())
    before = len(os.listdir("/proc/self/fd"))
    lock = DirLock(str(tmp_path))
    assert lock.held and lock._dir_fd == -1  # the file's lock alone (a mutant gave up: "removed 10 times")
    with pytest.raises(ChestLocked):
        DirLock(str(tmp_path))
    lock.release()
    assert len(os.listdir("/proc/self/fd")) == before  # the directory's descriptor was closed (a mutant leaked it)


def test_a_lock_file_removed_between_its_open_and_its_flock_is_locked_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a drop() racing with the open: the lock taken is on a file no longer under the name, so the
    # steps start again and lock the one there now (mutants that skipped the check kept the old inode).
    real_open = spillkit.lockfiles._open
    removed: list[str] = []

    def removed_after_opening(full: str) -> int:
        fd = real_open(full)
        if not removed:
            removed.append(full)
            os.unlink(full)
        return fd

    monkeypatch.setattr(spillkit.lockfiles, "_open", removed_after_opening)
    lock = DirLock(str(tmp_path))
    assert removed
    held, on_disk = os.fstat(lock.fd), os.stat(tmp_path / LOCK_NAME)
    assert (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)
    with pytest.raises(ChestLocked) as raised:
        DirLock(str(tmp_path))
    assert raised.value.pid == os.getpid()
    lock.release()
