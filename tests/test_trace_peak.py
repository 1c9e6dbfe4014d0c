"""peak_bytes (spillkit.trace_peak): the most bytes an unlimited cache holds at once over a trace.

Checked against a brute-force recomputation on random small traces: after every operation the bytes
held are summed again from scratch over the distinct objects the keys hold (peak_bytes keeps reference
counts and a running total instead), plus hand-computed cases of what its docstring promises.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from typing import Any

import pytest

from spillkit.trace_peak import peak_bytes


class Obj:
    """One object in the model: its identity is the Python object's, its size the one it was put with."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes


def brute_peak(ops: Sequence[tuple[Any, ...]]) -> int:
    """The peak as the trace format (spillkit.trace) describes it, recomputed from scratch after each operation.

    A put's ``object`` names the object another resident key holds under the same token; a load names the
    object it gave back, which a later put of that token (at the same size, while still held) stores again.
    A value that starts on disk is held from its first read (not for a pop). Operations of other kinds hold
    nothing.
    """
    held: dict[Hashable, Obj] = {}
    on_disk: dict[Hashable, int] = {}
    loaded: dict[int, Obj] = {}  # token -> object a load gave back
    put_under: dict[int, Obj] = {}  # token -> object a put made under it
    peak = 0

    def alive(obj: Obj) -> bool:
        return any(value is obj for value in held.values())

    for op in ops:
        tag, key = op[0], op[1]
        if tag == "get":
            if key in on_disk:
                nbytes = on_disk.pop(key)
                if op[3] != "pop":
                    held[key] = Obj(nbytes)
            elif op[3] == "pop":
                held.pop(key, None)
            if len(op) > 4 and op[4] and key in held:
                loaded[op[4]] = held[key]
        elif tag in ("put", "del", "ondisk"):
            held.pop(key, None)
            on_disk.pop(key, None)
            if tag == "ondisk":
                on_disk[key] = op[2]
            elif tag == "put":
                nbytes, token = op[2], op[5]
                same = loaded.get(token) if token else None
                if same is not None and alive(same) and same.nbytes == nbytes:
                    held[key] = same
                elif token and token in put_under and alive(put_under[token]):
                    held[key] = put_under[token]
                else:
                    held[key] = Obj(nbytes)
                    if token:
                        put_under[token] = held[key]
        distinct = {id(obj): obj for obj in held.values()}
        peak = max(peak, sum(obj.nbytes for obj in distinct.values()))
    return peak


def random_ops(rng: random.Random, length: int) -> list[tuple[Any, ...]]:
    keys = ["a", "b", "c", ("t", 1), 7][: rng.randrange(2, 6)]
    ops: list[tuple[Any, ...]] = []
    t = 0.0
    for _ in range(length):
        t += 1.0
        key = rng.choice(keys)
        kind = rng.random()
        token = rng.choice([0, 0, 1, 2, 3])
        if kind < 0.35:
            ops.append(("put", key, rng.choice([1, 2, 3, 5, 8]), rng.choice([None, 0.5]), t, token))
        elif kind < 0.65:
            outcome = rng.choice(["hit", "miss", "load", "reuse", "pop"])
            if outcome in ("load", "reuse") and rng.random() < 0.8:
                ops.append(("get", key, t, outcome, rng.choice([1, 2, 3])))
            else:
                ops.append(("get", key, t, outcome))
        elif kind < 0.78:
            ops.append(("del", key, t))
        elif kind < 0.88:
            ops.append(("ondisk", key, rng.choice([1, 4, 6]), t))
        else:  # operations that hold nothing
            ops.append(rng.choice([("settle", t), ("cost", key, 1.0, t), ("pin", key, t), ("spill", key, t)]))
    return ops


@pytest.mark.parametrize("seed", range(4))
def test_the_peak_equals_a_brute_force_recomputation_on_random_small_traces(seed: int) -> None:
    # Catches: a reference count off by one (a shared object counted twice, or freed while a key holds it),
    # a release forgotten on del/pop/put/ondisk, the peak taken before the total is updated, or a load's
    # naming applied at another size.
    rng = random.Random(seed)
    for _ in range(500):
        ops = random_ops(rng, rng.randrange(0, 25))
        assert peak_bytes(ops) == brute_peak(ops), ops


def put(key: Hashable, nbytes: int, token: int = 0) -> tuple[Any, ...]:
    return ("put", key, nbytes, None, 0.0, token)


@pytest.mark.parametrize(
    ("ops", "peak"),
    [
        ([], 0),
        ([put("a", 10), put("b", 20), ("del", "a", 0.0), put("c", 5)], 30),
        ([put("a", 10), put("a", 3)], 10),  # an overwrite replaces the value: the peak was the old one
        ([put("a", 10, 1), put("b", 10, 1)], 10),  # one object under two keys counts once
        ([put("a", 10, 1), ("del", "a", 0.0), put("b", 10, 1)], 10),  # ... and once gone, the token is free
        ([put("a", 10, 1), ("get", "a", 0.0, "load", 2), put("b", 10, 2)], 10),  # a load names the object
        ([put("a", 10, 1), ("get", "a", 0.0, "load", 2), put("b", 12, 2)], 22),  # not at another size
        ([("ondisk", "a", 10, 0.0), put("b", 5)], 5),  # on disk: not held until read
        ([("ondisk", "a", 10, 0.0), put("b", 5), ("get", "a", 0.0, "load")], 15),  # its first read loads it
        ([("ondisk", "a", 10, 0.0), put("b", 5), ("get", "a", 0.0, "pop")], 5),  # a pop does not keep it
        ([put("a", 10), ("get", "a", 0.0, "pop"), put("b", 7)], 10),  # a pop removes the key
    ],
)
def test_hand_computed_peaks(ops: list[tuple[Any, ...]], peak: int) -> None:
    # Catches: each rule of the docstring and the trace format broken on its own (and the model being
    # wrong the same way as the code: these are computed by hand).
    assert peak_bytes(ops) == peak
    assert brute_peak(ops) == peak
