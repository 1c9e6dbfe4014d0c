"""LiveObjects: which spilled values count as alive elsewhere."""

from __future__ import annotations

import gc

from spillkit.liveobjects import LiveObjects


class Array:
    """A value that can be weakly referenced (as numpy arrays can)."""


def test_a_weakly_referenced_value_is_alive_while_held_elsewhere() -> None:
    live, value = LiveObjects(), Array()
    live.remember("a", value)
    assert live["a"]() is value
    del value
    gc.collect()
    assert live.take("a") is None


def test_values_without_weak_references_are_not_remembered_and_replace_an_older_entry() -> None:
    live, value = LiveObjects(), Array()
    live.remember("k", value)
    for other in (12345, (1, 2), [1], {"a": 1}, bytearray(b"x")):
        live.remember("k", other)  # not remembered, and the old object is no longer the key's value
        assert "k" not in live
        live.remember("k", value)


def test_a_value_in_a_reference_cycle_is_let_go_by_the_collector() -> None:
    # Only weak references: the Chest never keeps a spilled value alive, not even one the cyclic
    # collector must free. (Lists in a cycle are not remembered at all: the test above.)
    live = LiveObjects()
    value = Array()
    value.me = value  # type: ignore[attr-defined]
    live.remember("cycle", value)
    del value
    gc.collect()
    assert live.take("cycle") is None
