"""spillkit.trace_objects.ObjectTokens against a plain model that scans every held object.

The recorder used to find a departing key's object by scanning every object held (O(objects)
per spill, evict or delete: 1 ms an operation with 20,000 values resident); the model below is
that scan, so the tokens a trace writes are the same as before.
"""

from __future__ import annotations

from collections.abc import Hashable

from hypothesis import given, settings
from hypothesis import strategies as st

from spillkit.trace_objects import ObjectTokens


class ScanningTokens:
    """The model: one dict of objects held, searched by token when a key leaves."""

    def __init__(self) -> None:
        self.key_token: dict[Hashable, int] = {}
        self.held: dict[int, list[int]] = {}
        self.issued = 0

    def enter(self, key: Hashable, object_id: int) -> int:
        if object_id not in self.held:
            self.issued += 1
            self.held[object_id] = [self.issued, 0]
        self.held[object_id][1] += 1
        self.key_token[key] = self.held[object_id][0]
        return self.held[object_id][0]

    def leave(self, key: Hashable) -> None:
        token = self.key_token.pop(key, None)
        for object_id, entry in list(self.held.items()):
            if token is not None and entry[0] == token:
                entry[1] -= 1
                if not entry[1]:
                    del self.held[object_id]
                break


steps = st.lists(
    st.tuples(st.sampled_from(["enter", "leave"]), st.integers(0, 6), st.integers(0, 3)), max_size=200
)  # (what, key, object id): few keys and objects, so keys share objects and ids come back


@settings(max_examples=300, deadline=None)
@given(steps)
def test_tokens_match_the_scanning_model(script: list[tuple[str, int, int]]) -> None:
    tokens, model = ObjectTokens(), ScanningTokens()
    for what, key, object_id in script:
        if what == "enter":
            assert tokens.enter(key, object_id) == model.enter(key, object_id)
        else:
            tokens.leave(key)
            model.leave(key)
    for object_id in range(4):  # what each object would be named next
        assert tokens.enter("probe", object_id) == model.enter("probe", object_id)
        tokens.leave("probe")
        model.leave("probe")


def test_shared_object_keeps_its_token_until_the_last_key_leaves() -> None:
    tokens = ObjectTokens()
    assert [tokens.enter(k, 100) for k in "abc"] == [1, 1, 1]
    tokens.leave("a")
    tokens.leave("b")
    assert tokens.enter("d", 100) == 1  # "c" still holds it
    tokens.leave("c")
    tokens.leave("d")
    assert tokens.enter("e", 100) == 2  # no key held it: its id may be another object's now


def test_nothing_is_kept_once_no_key_holds_an_object() -> None:
    # helper-136's surviving mutant: without forgetting a token's object when its last key left, the
    # tokens stayed right but the map grew with every object ever held (a recorder's memory, for good).
    tokens = ObjectTokens()
    for i in range(1000):
        tokens.enter(i, i % 7)
    for i in range(1000):
        tokens.leave(i)
    assert tokens._held == {} and tokens._object_of_token == {} and tokens._token_of_key == {}
