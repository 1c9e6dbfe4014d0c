"""Temporary Chest directories that name their owner, and a sweep that removes those whose owner is gone.

A temporary Chest removes its directory at close, garbage collection and exit,
but a process killed with SIGKILL (or by the OOM killer, or a power cut) runs
none of that. So the directory's name records who made it::

    spillkit-<pid>-<start>-<pidns>-<random>

``<start>`` is the owner's start time (Linux: clock ticks after boot, from
``/proc/<pid>/stat``; elsewhere psutil's creation time in centiseconds when
psutil is installed; ``x`` when unknown), so a recycled pid is not mistaken
for the owner. ``<pidns>`` is the inode of the owner's pid namespace (``x``
off Linux): a pid means nothing in another namespace, e.g. a container that
shares ``/tmp``, so such directories are never judged. The name is the whole
record: a sweep reads nothing inside, where the spill files and the Chest's
lock file (:mod:`spillkit.dirlock`) live.

:func:`sweep_stale` removes a directory only if all of these hold: its name
has exactly that form; it is a real directory (never a symlink, which is not
followed); it belongs to this user; it was made in this pid namespace; and
its owner is gone, meaning no process has that pid, the process is a zombie,
or the process with that pid started at another time. When the owner's start
time cannot be read, a live pid counts as the owner and the directory stays.
Windows without psutil judges nothing (``os.kill(pid, 0)`` would terminate).

When it runs: once per process and temp parent, when the first temporary
Chest is created there (one ``listdir``; failures are ignored, a Chest is
never refused because of a sweep), and on demand with ``spillkit sweep``.

Limitation: a forked child that outlives its parent keeps using the parent's
directory, whose owner is then gone; a sweep by another process removes it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import shutil
import stat
import sys
import tempfile
import threading
import warnings
from typing import Any

from .errors import SpillWarning

__all__ = ["PREFIX", "create", "owner_prefix", "remove_all", "stale", "sweep_stale"]

PREFIX = "spillkit-"
_NAME = re.compile(r"spillkit-([1-9][0-9]{0,9})-([0-9]{1,20}|x)-([0-9]{1,20}|x)-[a-z0-9_]{1,32}")
_GONE = "gone"  # what _identify returns for a pid that no process has (or a zombie's)
_UNKNOWN = "x"

_swept: set[str] = set()  # temp parents already swept by this process
_swept_lock = threading.Lock()
_prefix_cache: tuple[int, str] | None = None  # (pid, prefix): recomputed in a forked child


def _psutil() -> Any:
    try:  # optional, and untyped: imported by name so mypy needs no stubs
        return importlib.import_module("psutil")
    except ImportError:
        return None


def _pid_namespace() -> str:
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return _UNKNOWN


def _identify(pid: int) -> str | None:
    """The start token of the process ``pid``; ``_GONE`` if none runs; None if it runs but its start is unknown."""
    if os.name != "nt":
        try:
            os.kill(pid, 0)  # signal 0 checks existence; it delivers nothing
        except ProcessLookupError:
            return _GONE
        except PermissionError:
            pass  # another user's process: alive
        except (OverflowError, OSError):
            return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rpartition(b")")[2].split()  # the command name may hold spaces and ')'
        if fields[0] in (b"Z", b"X"):  # a zombie runs no cleanup: its directories are stale
            return _GONE
        return fields[19].decode("ascii")  # field 22, starttime, counted from field 3 (state)
    except (OSError, IndexError, UnicodeDecodeError):
        pass  # not Linux, or /proc hides that process: fall back
    if os.path.isdir("/proc/self"):
        return None  # Linux: never mix a psutil token with /proc tokens
    psutil = _psutil()
    if psutil is None:
        return None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return _GONE
        return str(round(process.create_time() * 100))
    except psutil.NoSuchProcess:
        return _GONE
    except Exception:  # AccessDenied and the like: alive, start unknown
        return None


def owner_prefix() -> str:
    """``spillkit-<pid>-<start>-<pidns>-`` for this process (recomputed after a fork)."""
    global _prefix_cache
    pid = os.getpid()
    if _prefix_cache is None or _prefix_cache[0] != pid:
        start = _identify(pid)
        token = start if start is not None and start != _GONE else _UNKNOWN
        _prefix_cache = (pid, f"{PREFIX}{pid}-{token}-{_pid_namespace()}-")
    return _prefix_cache[1]


def create(parent: str | None = None) -> str:
    """Make a private (0700) directory named after this process, sweeping ``parent`` first if not yet done."""
    parent = tempfile.gettempdir() if parent is None else parent
    _sweep_once(parent)
    return tempfile.mkdtemp(prefix=owner_prefix(), dir=parent)


def _sweep_once(parent: str) -> None:
    with _swept_lock:
        if parent in _swept:
            return
        _swept.add(parent)
    # A leftover directory must never stop a Chest from being made: errors are dropped here,
    # and `spillkit sweep` reports them.
    with contextlib.suppress(OSError):
        sweep_stale(parent)


def _is_stale(name: str, parent_fd: int | None, parent: str, namespace: str) -> bool:
    match = _NAME.fullmatch(name)
    if match is None:
        return False
    pid, start, owner_namespace = int(match[1]), match[2], match[3]
    if owner_namespace != namespace:
        return False
    try:
        info = os.stat(name if parent_fd is not None else os.path.join(parent, name), dir_fd=parent_fd,
                       follow_symlinks=False)  # fmt: skip
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        return False
    current = _identify(pid)
    if current == _GONE:
        return True
    if current is None or start == _UNKNOWN:
        return False  # a live pid whose start cannot be compared: assume it is the owner
    return current != start  # the pid was recycled by a later process


def _exists(target: str, parent_fd: int | None) -> bool:
    try:
        os.stat(target, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _scan(parent: str, remove: bool) -> list[str]:
    namespace = _pid_namespace()
    use_fd = shutil.rmtree.avoids_symlink_attacks and os.stat in os.supports_dir_fd
    parent_fd = os.open(parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)) if use_fd else None
    found: list[str] = []
    try:
        names = os.listdir(parent_fd if parent_fd is not None else parent)
        for name in sorted(n for n in names if n.startswith(PREFIX)):
            if not _is_stale(name, parent_fd, parent, namespace):
                continue
            path = os.path.join(parent, name)
            target = name if parent_fd is not None else path
            if remove:
                # Relative to the parent's descriptor: the parent cannot be swapped under us, and the
                # fd-based rmtree refuses a directory that became a symlink since it was checked.
                shutil.rmtree(target, ignore_errors=True, dir_fd=parent_fd)
                if _exists(target, parent_fd):
                    continue  # something inside could not be removed: not reported, found again next time
            found.append(path)
    finally:
        if parent_fd is not None:
            os.close(parent_fd)
    return found


def stale(parent: str | None = None) -> list[str]:
    """Paths of the spillkit temporary directories in ``parent`` whose owner is gone (nothing is removed)."""
    return _scan(tempfile.gettempdir() if parent is None else parent, remove=False)


def sweep_stale(parent: str | None = None) -> list[str]:
    """Remove the spillkit temporary directories in ``parent`` whose owner process is gone; return their paths.

    ``parent`` defaults to ``tempfile.gettempdir()``. Only directories named by
    :func:`create`, owned by this user, made in this pid namespace and whose
    owner is gone are removed; symlinks are never followed. A directory that
    cannot be fully removed is left out of the result. Raises ``OSError`` if
    ``parent`` cannot be listed. Safe to run from several processes at once.
    """
    return _scan(tempfile.gettempdir() if parent is None else parent, remove=True)


def remove_all(path: str) -> None:
    """``shutil.rmtree(path)``; what it cannot remove is left, and warned about (a ``SpillWarning``)."""
    failed: list[tuple[str, BaseException]] = []

    def note(_function: Any, failed_path: str, error: Any) -> None:
        caught = error if isinstance(error, BaseException) else error[1]  # (onerror gives exc_info)
        if not isinstance(caught, FileNotFoundError):  # (gone already: what was wanted)
            failed.append((failed_path, caught))

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=note)
    else:
        shutil.rmtree(path, onerror=note)
    warn_left(path, failed)


def warn_left(path: str, failed: list[tuple[str, BaseException]]) -> None:
    """Warn (a ``SpillWarning``) that the entries in ``failed`` of ``path`` could not be removed, if any."""
    if failed:
        where, error = failed[0]
        message = f"could not remove {len(failed)} entries of the directory {path!r}, left on disk; the first: "
        warnings.warn(f"{message}{where!r}: {error!r}", SpillWarning, stacklevel=7)  # (drop: its caller)
