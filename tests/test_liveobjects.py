"""LiveObjects: which spilled values count as alive elsewhere, and when the held ones are let go."""

from __future__ import annotations

import gc

from spillkit.liveobjects import LiveObjects, _Held


class Array:
    """A value that can be weakly referenced (as numpy arrays can)."""


def test_a_weakly_referenced_value_is_alive_while_held_elsewhere() -> None:
    live, value = LiveObjects(), Array()
    live.remember("a", value)
    assert live["a"]() is value
    del value
    gc.collect()
    assert live.take("a") is None


def test_a_list_dict_set_or_bytearray_is_alive_while_something_else_holds_it() -> None:
    live = LiveObjects()
    values = [[1], {"a": 1}, {1}, bytearray(b"x")]
    for i, value in enumerate(values):
        live.remember(i, value)
    for i, value in enumerate(values):
        assert live.take(i) is value  # held by ``values``: the very object
    live.remember("gone", [2])  # nothing else holds this one
    assert live["gone"]() is None


def test_a_held_value_nothing_else_holds_is_let_go_at_the_next_remember_of_any_value() -> None:
    live = LiveObjects()
    rows = [1, 2]
    live.remember("rows", rows)
    del rows
    assert isinstance(live["rows"], _Held)  # still held: nothing has looked since
    live.remember("array", Array())  # the next spill, of a value with weak references
    assert "rows" not in live


def test_many_held_values_are_let_go_within_as_many_remembers_as_there_are() -> None:
    live = LiveObjects()
    kept = [[i] for i in range(100)]
    for i, value in enumerate(kept):
        live.remember(i, value)
    assert len(live) == 100 and all(isinstance(ref, _Held) for ref in live.values())
    kept.clear()
    del value  # nothing else holds any of them now
    for i in range(100):
        live.remember(("array", i), Array())
    assert not any(isinstance(ref, _Held) for ref in live.values())  # swept once in those 100 calls
    assert live._held == set()


def test_a_value_that_cannot_change_in_place_is_not_remembered_and_replaces_an_older_entry() -> None:
    live, value = LiveObjects(), Array()
    live.remember("k", value)
    live.remember("k", 12345)  # an int: not remembered, and the old object is no longer the key's value
    assert "k" not in live
    live.remember("t", (1, 2))
    assert "t" not in live
