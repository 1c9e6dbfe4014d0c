"""The one interface every eviction policy implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable
from typing import ClassVar

__all__ = ["Policy"]


def no_copy(key: Hashable) -> bool:
    """The ``has_copy`` of a caller that knows of no copies on disk."""
    return False


class Policy(ABC):
    """Orders resident keys; the engine asks it which key to spill next.

    A policy sees keys, sizes and costs: never values, tiers, clocks, locks or
    listeners.

    The engine's calls:

    ``admitted(key, nbytes, cost)``
        a key entered memory (a put, or loaded back from disk);
    ``touched(key)``
        a resident key was read;
    ``removed(key)``
        a resident key was deleted or overwritten (an overwrite is ``removed``
        then ``admitted``);
    ``evicted(key)``
        the engine spilled the key it was offered (default: ``removed``);
    ``victim() -> key``
        the key to spill next; a peek that forgets nothing; ``KeyError`` when
        no key is resident;
    ``victim_for(need, has_copy) -> key``
        the same question when the engine knows it still has ``need`` bytes
        to free (making room for a put, or settling); ``has_copy(key)`` says
        whether spilling the key writes nothing (an unchanged copy is on
        disk), i.e. costs only its reload. Default: ``victim()``. A policy
        that weighs sizes may pick a smaller key over one far larger than
        ``need`` (see :class:`~spillkit.policies.NextUse`);
    ``recosted(key, nbytes, cost)``
        a resident key's cost changed (default: ``removed`` then ``admitted``);
    ``forgotten(key)``
        a key the policy was told ``evicted`` will not come back from disk: it
        was deleted or overwritten while spilled; its write (in the background)
        failed, or was the parent's in a forked child, and the value is
        admitted again as it was; or the Chest is closed or dropped with the
        key on disk (the policy may serve another Chest). A policy that
        remembers evicted keys (a ghost list) forgets this one, so a later put
        of the key is no return of a spilled value. Never raises; the default
        does nothing.

    Raises
    ------
    KeyError
        From ``touched``, ``removed`` and ``evicted`` for a key the policy
        does not hold (and from ``recosted`` in every built-in policy); from
        ``victim`` and ``victim_for`` when no key is resident.

    Notes
    -----
    Thread-safety: the engine calls a policy under its own lock, so policies
    hold none and are not thread-safe on their own. One policy object serves
    one open Chest at a time: once that Chest is closed or dropped (or its
    constructor raised), it has removed every key from the policy, which may
    serve another.

    Failure behaviour: the built-in policies raise these errors before
    changing anything, so a call that raised leaves the policy as it was.
    """

    name: ClassVar[str] = "policy"

    @abstractmethod
    def admitted(self, key: Hashable, nbytes: int, cost: float) -> None: ...

    @abstractmethod
    def touched(self, key: Hashable) -> None: ...

    @abstractmethod
    def removed(self, key: Hashable) -> None: ...

    def evicted(self, key: Hashable) -> None:
        self.removed(key)

    @abstractmethod
    def victim(self) -> Hashable: ...

    def victim_for(self, need: int, has_copy: Callable[[Hashable], bool] = no_copy) -> Hashable:
        return self.victim()

    def recosted(self, key: Hashable, nbytes: int, cost: float) -> None:
        self.removed(key)
        self.admitted(key, nbytes, cost)

    def forgotten(self, key: Hashable) -> None:  # noqa: B027 - an optional hook: most policies remember nothing
        pass

    @abstractmethod
    def __len__(self) -> int: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
