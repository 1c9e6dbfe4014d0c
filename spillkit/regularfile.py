"""Opening a file the store expects to be a regular file of its own: never blocking, never through a link.

A name in the spill directory may have been replaced by something else: a FIFO,
whose ``open`` blocks until a writer (or reader) comes, forever, and here while the
engine's lock is held; a device or a directory, which no spill file is; or a
symbolic link, which could point a write outside the directory. Such files are
opened with :data:`SAFE_OPEN` added to the flags (no blocking, no final link) and
checked by :func:`ensure_regular`, so such a name costs only what it stands for.
The ``os.open`` stays in the caller's module, where the tests inject disk faults.
"""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["SAFE_OPEN", "ensure_regular"]

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
