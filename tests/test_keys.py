"""spillkit.keys: keys as JSON (any size of int included), keys in messages, and keys' spellings for names."""

from __future__ import annotations

import json
import math
from collections.abc import Hashable
from typing import Any

import pytest
from helpers import MutableKey, ReprRaises
from hypothesis import given, settings
from hypothesis import strategies as st

from spillkit import Chest, SpillError
from spillkit.keys import (
    BIG_INT_BITS,
    SpelledKey,
    decode_key,
    describe_key,
    encode_key,
    spell_key,
    unfindable_key,
)
from spillkit.naming import candidate_name

HUGE = 10**5000  # past Python's 4,300-digit limit: str(HUGE) and json.dumps(HUGE) raise ValueError


def json_round_trip(key: Hashable) -> Hashable:
    return decode_key(json.loads(json.dumps(encode_key(key))))


SCALARS = st.one_of(
    st.text(max_size=10),
    st.integers(),
    st.integers(min_value=2**BIG_INT_BITS - 4, max_value=2**BIG_INT_BITS + 4),  # either side of the switch
    st.integers(min_value=1, max_value=20_000).map(lambda bits: -(2**bits) + 1),  # negative, up to 20,000 bits
    st.floats(allow_nan=False),
    st.binary(max_size=10),
    st.none(),
    st.booleans(),
)
TREES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3).map(tuple), max_leaves=6)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(key=TREES)
def test_every_dask_like_key_survives_the_json_round_trip_with_its_type(key: Hashable) -> None:
    back = json_round_trip(key)
    assert back == key
    assert repr_types(back) == repr_types(key)


def repr_types(key: Any) -> Any:
    return tuple(repr_types(k) for k in key) if isinstance(key, tuple) else type(key)


@pytest.mark.parametrize(
    "key", [HUGE, -HUGE, ("x", HUGE, 0), 2**20_000 + 1], ids=["huge", "-huge", "tuple", "2**20000+1"]
)
def test_ints_too_long_for_str_are_written_in_hexadecimal(key: Hashable) -> None:
    text = json.dumps(encode_key(key))  # raised ValueError before: json writes ints in decimal
    assert len(text) < 20_000 and json_round_trip(key) == key


def test_an_int_just_below_the_switch_stays_a_plain_json_number() -> None:
    small = 2**BIG_INT_BITS - 1
    assert encode_key(small) == small and encode_key(small + 1) == {"x": format(small + 1, "x")}


@pytest.mark.parametrize("damaged", [{"x": "zz"}, {"x": ""}, {"x": 12}, {"x": None}])
def test_a_damaged_hexadecimal_int_is_refused(damaged: Any) -> None:
    with pytest.raises(ValueError, match="not an encoded key"):
        decode_key(damaged)


def test_a_key_whose_repr_raises_is_written_as_a_spelling_and_read_back_as_one() -> None:
    key = ReprRaises()
    back = json_round_trip(key)
    assert isinstance(back, SpelledKey) and "ReprRaises" in repr(back) and "repr raised" in repr(back)
    assert json_round_trip(back) == back  # written again, it reads back the same


def test_a_spelled_key_is_equal_to_no_string_spelt_like_it() -> None:
    # Before (helper-106): {"r": "X"} read back as the str "<X>", so a str key "<X>" was the same key.
    back = json_round_trip(Spelt())
    assert back == SpelledKey("Spelt()") and back != "<Spelt()>" and back != "Spelt()"
    assert len({back, "<Spelt()>", "Spelt()", SpelledKey("Spelt()", 1)}) == 4


class Spelt:
    def __repr__(self) -> str:
        return "Spelt()"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (("x", 0), "('x', 0)"),
        ("plain", "'plain'"),
        (HUGE, "<int of 16610 bits>"),
        (("big", -HUGE), "('big', <int of 16610 bits>)"),
        (ReprRaises(), "<ReprRaises instance at"),  # reprlib's own fallback for a raising repr
    ],
    ids=["tuple", "str", "huge", "tuple-huge", "repr-raises"],
)
def test_describe_key_is_the_repr_when_short_and_a_description_otherwise(key: Hashable, expected: str) -> None:
    assert describe_key(key).startswith(expected)


@pytest.mark.parametrize(
    "key",
    ["x" * 1_000_000, tuple(range(100_000)), (("a",) * 50,) * 50, HUGE, b"\0" * 1_000_000, math.inf],
    ids=["1M-str", "100k-tuple", "nested", "huge", "1M-bytes", "inf"],
)
def test_describe_key_stays_short_however_big_the_key(key: Hashable) -> None:
    assert len(describe_key(key)) < 400


def test_describe_key_never_raises_even_when_reprlib_would() -> None:
    # reprlib picks its method by the type's name: a class named "str" is sliced like a string, and raises.
    Impostor = type("str", (), {"__hash__": lambda self: 1, "__repr__": lambda self: "fine"})
    assert describe_key(Impostor()) == "<str key whose repr raised>"


def test_spell_key_is_repr_when_repr_works_and_unique_while_it_does_not() -> None:
    assert spell_key(("x", 0)) == repr(("x", 0))
    assert spell_key(HUGE) == f"0x{HUGE:x}" and spell_key(-HUGE) == f"-0x{HUGE:x}"
    assert spell_key(("x", HUGE)) == f"('x', 0x{HUGE:x}, )"
    deep: tuple[object, ...] = ()
    for _ in range(5_000):
        deep = (deep,)  # repr raises RecursionError; the spelling gives up on it 32 levels down
    assert spell_key(deep).startswith("((((") and "key at 0x" in spell_key(deep)
    first, second = ReprRaises(), ReprRaises()
    assert spell_key(first) != spell_key(second)  # the id tells them apart while both live


@pytest.mark.parametrize(
    "key",
    [HUGE, -HUGE, ("x", HUGE), ReprRaises(), (ReprRaises(), 1)],
    ids=["huge", "-huge", "tuple", "obj", "in-tuple"],
)
def test_hostile_keys_get_hashed_file_names(key: Hashable) -> None:
    name = candidate_name(key)
    assert name.startswith("%") and len(name) == 33 and candidate_name(key, 1) == name + "-1"


def test_unfindable_key_is_a_type_error_to_raise_saying_the_key_changed_after_it_was_stored() -> None:
    # Catches: raising inside (its callers collect it per key and raise later), another type than a dict's
    # lookups give (TypeError), or a message that does not tell the user what happened (a mutable key).
    error = unfindable_key()
    assert type(error) is TypeError
    message = str(error)
    assert "no longer found by its own hash and ==" in message
    assert "changed after it was stored" in message and "mutable key" in message
    assert unfindable_key() is not error  # a fresh error each time: raising one never chains into the next


def test_a_chest_gives_the_unfindable_key_message_for_a_key_changed_after_it_was_stored() -> None:
    # Catches: the Chest's error for such a key drifting away from this one (its only source).
    chest = Chest(available_memory=10**6)
    key = MutableKey(1)
    chest[key] = "value"
    key.n = 2
    with pytest.raises(SpillError) as raised:
        chest.clear()
    assert str(unfindable_key()) in str(raised.value)
    chest.close()
