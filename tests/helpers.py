"""Helpers shared by several test modules: hostile keys, draining a policy."""

from __future__ import annotations

from collections.abc import Hashable

from spillkit.policies import Policy


class ConstRepr:
    """Distinct keys whose repr is identical (and whose hashes differ)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return "ConstRepr()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ConstRepr) and other.n == self.n

    def __hash__(self) -> int:
        return hash(("ConstRepr", self.n))


def drain(policy: Policy) -> list[Hashable]:
    """Spill every key the policy holds, in the order it offers them."""
    order = []
    while len(policy):
        order.append(policy.victim())
        policy.evicted(order[-1])
    return order
