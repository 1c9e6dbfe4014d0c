"""The steps of taking a :class:`~spillkit.dirlock.DirLock`, each of which a racing ``drop()`` may undo.

Open the lock file (never through a symbolic link, refused unless a regular
file, read-only where the directory is), ``flock`` it without waiting, check
it is still the file under the name (a ``drop()`` may have removed it between
the open and the lock: then start again), lock the directory itself the same
way, and record the holder's pid in the file for other Chests' error
messages. ``dirlock``'s docstring says why each step is there.

Thread-safety: no state of its own; each call works on descriptors it opened.
Failures: :class:`~spillkit.errors.ChestLocked` when another holder has either
lock, :class:`~spillkit.errors.SpillError` when the file cannot be opened or
locked; every descriptor opened is closed before the error leaves.
"""

from __future__ import annotations

import contextlib
import errno
import os

from .errors import ChestLocked, SpillError
from .regularfile import SAFE_OPEN, ensure_regular

try:
    import fcntl
except ImportError:  # Windows is no target: Chests there are not locked
    fcntl = None  # type: ignore[assignment]

__all__ = ["ATTEMPTS", "acquire", "fcntl"]

ATTEMPTS = 10  # how often the file may vanish under us (a drop() racing with the open) before we give up


def acquire(directory: str, full: str) -> tuple[int, int]:
    """Lock ``full`` (recording our pid in it), then ``directory``, without waiting; return both descriptors.

    The directory's is -1 where its file system refuses ``flock`` on a directory.
    """
    assert fcntl is not None
    for _ in range(ATTEMPTS):
        try:
            fd = _open(full)
        except FileNotFoundError:  # drop() removed the directory between the Chest's makedirs and this open
            os.makedirs(directory, mode=0o700, exist_ok=True)
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ChestLocked(directory, _holder(fd)) from None
            except OSError as error:
                raise SpillError(f"cannot lock {full!r} ({error}); the file system may not support flock") from error
            if _still_there(fd, full):
                dir_fd = _lock_directory(directory)
                if dir_fd is not None:
                    _record_pid(fd)
                    return fd, dir_fd
        except BaseException:
            os.close(fd)
            raise
        # drop() removed the file (and the directory) between our open and our lock: lock what is there now.
        os.close(fd)
        os.makedirs(directory, mode=0o700, exist_ok=True)
    raise SpillError(f"cannot lock {full!r}: it (or its directory) was removed {ATTEMPTS} times while being locked")


def _lock_directory(directory: str) -> int | None:
    """Lock the directory itself; its descriptor, -1 if it cannot be locked so, None if it went meanwhile."""
    assert fcntl is not None
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        # Its lock file was unlinked while it held it (we locked a new one, without its pid), or another
        # program flocks the directory (flock(1), a backup tool): held either way.
        holder = "another open Chest whose lock file was removed, or another program's flock on the directory"
        raise ChestLocked(directory, None, holder) from None
    except OSError:
        os.close(fd)
        return -1  # a file system without flock on directories: the lock file's alone serves
    if not _still_there(fd, directory, follow=True):  # drop() removed it meanwhile: lock what is there now
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        return None
    return fd


def _open(full: str) -> int:
    # As every name a planted file may take (spillkit.regularfile): the pid is written into it, so never
    # through a symlink, and a FIFO must not block the open.
    try:
        fd = os.open(full, os.O_RDWR | os.O_CREAT | SAFE_OPEN, 0o600)
    except FileNotFoundError:  # no directory: acquire makes it again
        raise
    except OSError as error:
        fd = -1
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            # A read-only directory or file system whose lock file exists: flock needs no write access.
            with contextlib.suppress(OSError):
                fd = os.open(full, os.O_RDONLY | SAFE_OPEN)
        if fd < 0:
            reason = "it is a symbolic link" if error.errno == errno.ELOOP else str(error)
            raise SpillError(
                f"cannot create or open the lock file {full!r} ({reason}); a Chest needs it to keep "
                "other Chests out of its directory"
            ) from error
    try:
        return ensure_regular(fd, full)  # (closes it otherwise)
    except OSError as error:
        raise SpillError(f"the lock file {full!r} is not a regular file; refusing it") from error


def _still_there(fd: int, full: str, follow: bool = False) -> bool:
    try:
        now = os.stat(full, follow_symlinks=follow)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)


def _record_pid(fd: int) -> None:
    data = f"{os.getpid()}\n".encode()
    # At offset 0 (the descriptor is new). Write, then cut: the file is never empty on the way.
    # Best effort: a read-only file keeps the old pid, which only the error message shows.
    with contextlib.suppress(OSError):
        os.write(fd, data)
        os.ftruncate(fd, len(data))


def _holder(fd: int) -> int | None:
    """The pid the holder recorded, or None (not written yet, unreadable, or not a pid)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and 0 < int(text) < 2**31 else None
