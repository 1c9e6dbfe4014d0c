"""Engine locks held across ``fork()``, so that a forked child never inherits one held by a thread it lacks.

A thread in the middle of an engine operation (a put spilling a value, the
write-behind thread committing a write) holds the engine's lock. ``fork()``
copies that lock as held, by a thread the child does not have: every operation
of the child's copy of the Chest would wait for it forever, over state the
operation had half changed. So, just before a fork, the forking thread takes
the lock of every live engine (waiting for the operations under way to end),
and releases them right after, in the parent and in the child.

Lock order: engine locks come before spillkit.mapped's pins lock, which that
module also holds across a fork and which engine operations take under their
lock. ``os.register_at_fork`` runs ``before`` hooks in the reverse order of
registration, so this module registers after spillkit.mapped (imported first).
Engines are taken in the order they were made; a thread that holds one engine's
lock while it waits for another's (a listener of one Chest using another) could
make a fork wait for it, as with any pair of locks taken in two orders.

Thread-safety: :func:`register` may be called from any thread (the registry is
a ``WeakSet``, and a fork in between only misses an engine made meanwhile).
Nothing here raises.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from typing import Protocol

from . import mapped as _mapped  # noqa: F401 - registers its fork hooks first (see the lock order above)

__all__ = ["register"]


class _HasLock(Protocol):
    lock: threading.RLock


_engines: weakref.WeakKeyDictionary[_HasLock, int] = weakref.WeakKeyDictionary()  # engine -> creation order
_order = itertools.count()
_held: list[threading.RLock] = []  # the locks the forking thread took, to release after the fork


def register(engine: _HasLock) -> None:
    """Hold ``engine.lock`` across every later fork of this process (see the module docstring)."""
    _engines[engine] = next(_order)


def _before_fork() -> None:
    engines = sorted(list(_engines.items()), key=lambda item: item[1])
    for engine, _ in engines:
        engine.lock.acquire()  # waits for the operation under way (re-entrant: the forking thread's own)
        _held.append(engine.lock)


def _after_fork() -> None:  # in the parent and in the child: the forking thread holds them in both
    while _held:
        _held.pop().release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)
