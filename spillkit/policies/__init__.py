"""Eviction policies, one per module, and the name registry behind ``Chest(policy="lru")``."""

from __future__ import annotations

from collections.abc import Callable

from .arc import ARC
from .base import Policy
from .cachey import CacheyScore
from .cost import CostAware
from .fifo import FIFO
from .lfu import LFU
from .lru import LRU
from .nextuse import LRC, GraphAware, NextUse
from .s3fifo import S3FIFO
from .sieve import SIEVE
from .size import SizeAware

__all__ = [
    "ARC",
    "FIFO",
    "LFU",
    "LRC",
    "LRU",
    "S3FIFO",
    "SIEVE",
    "CacheyScore",
    "CostAware",
    "GraphAware",
    "NextUse",
    "Policy",
    "SizeAware",
    "make_policy",
    "policy_names",
    "register_policy",
]

_REGISTRY: dict[str, Callable[[], Policy]] = {
    "lru": LRU,
    "lfu": LFU,
    "size": SizeAware,
    "cost": CostAware,
    "nextuse": NextUse,
    "lrc": LRC,
    "fifo": FIFO,
    "sieve": SIEVE,
    "s3fifo": S3FIFO,
    "arc": ARC,
    "cachey": CacheyScore,
}


def register_policy(name: str, factory: Callable[[], Policy]) -> None:
    """Make ``Chest(policy=name)`` build a fresh policy with ``factory()`` (names are case-insensitive)."""
    if name.lower() in _REGISTRY:
        raise ValueError(f"a policy named {name!r} is already registered")
    _REGISTRY[name.lower()] = factory


def policy_names() -> list[str]:
    """The registered policy names, in registration order."""
    return list(_REGISTRY)


def make_policy(policy: Policy | str | None) -> Policy:
    """Return ``policy`` itself, a fresh registered policy for a name, or ``LRU()`` for None."""
    if policy is None:
        return LRU()
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, str):
        try:
            return _REGISTRY[policy.lower()]()
        except KeyError:
            raise ValueError(f"unknown policy {policy!r}; choose one of {policy_names()}") from None
    raise TypeError(f"policy must be a Policy or a registered name, not {type(policy).__name__}")
