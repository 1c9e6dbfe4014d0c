"""Keys that try to break file naming, shared by the fault and storage tests."""

from __future__ import annotations


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
