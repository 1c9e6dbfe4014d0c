"""Opening a file the store expects to be a regular file of its own: never blocking, never through a link.

A name in the spill directory may have been replaced by something else: a FIFO,
whose ``open`` blocks until a writer (or reader) comes, forever, and here while the
engine's lock is held; a device or a directory, which no spill file is; or a
symbolic link, which could point a write outside the directory. Such files are
opened with :data:`SAFE_OPEN` added to the flags (no blocking, no final link) and
checked by :func:`ensure_regular`, so such a name costs only what it stands for.
The ``os.open`` stays in the caller's module, where the tests inject disk faults.

:func:`open_input` does the same for a file a user names to a command (a trace, a
results CSV): ``spillkit compare`` given a FIFO with no writer waited forever, and
given ``/dev/zero`` read one endless line into memory.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import IO, Any

__all__ = ["SAFE_OPEN", "ensure_regular", "open_input"]

# O_NONBLOCK changes nothing for a regular file; O_NOFOLLOW makes a final symbolic link fail with ELOOP.
SAFE_OPEN = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def ensure_regular(fd: int, full: str) -> int:
    """Return ``fd`` (opened on ``full``), blocking again, if it is a regular file.

    Otherwise close it and raise ``OSError`` (EINVAL).
    """
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", full)
        os.set_blocking(fd, True)  # a regular file after all: no file system may answer its reads with EAGAIN
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_input(path: str, mode: str = "rb", **options: Any) -> IO[Any]:
    """Open the file a user named, for reading, as ``open(path, mode, **options)`` would.

    A link is followed (it is the user's own name), but a FIFO, device or directory raises
    ``OSError`` (EINVAL, "not a regular file") at once instead of blocking or reading forever.
    """
    fd = ensure_regular(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)), path)
    try:
        return open(fd, mode, **options)  # the caller closes it
    except BaseException:
        os.close(fd)
        raise
