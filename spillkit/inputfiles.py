"""Opening a file a user names to a command (a trace, a results CSV) without blocking on it.

``spillkit compare`` given a FIFO with no writer waited forever in ``open``, and given
``/dev/zero`` read one endless line into memory (helper-97). :func:`open_input` opens
without blocking and takes a regular file or a pipe (``cat t.gz | spillkit compare
/dev/stdin``; one with no writer reads as empty); anything else is refused at once. No
spill data is read here.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import IO, Any

__all__ = ["open_input"]


def open_input(path: str, mode: str = "rb", **options: Any) -> IO[Any]:
    """Open the file a user named, for reading, as ``open(path, mode, **options)`` would.

    A link is followed (it is the user's own name). A device, directory or socket raises
    ``OSError`` (EINVAL, "not a regular file or a pipe") instead of blocking or reading forever.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        kind = os.fstat(fd).st_mode
        if not (stat.S_ISREG(kind) or stat.S_ISFIFO(kind)):
            raise OSError(errno.EINVAL, "not a regular file or a pipe", path)
        os.set_blocking(fd, True)  # a pipe's reads wait for its writer again (one with none reads as empty)
        return open(fd, mode, **options)  # the caller closes it
    except BaseException:
        os.close(fd)
        raise
