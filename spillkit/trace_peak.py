"""The peak of a trace: the most bytes an unlimited cache would have held at once."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

__all__ = ["peak_bytes"]


def peak_bytes(ops: Sequence[tuple[Any, ...]]) -> int:
    """Most bytes an unlimited cache would have held at once, over a trace's operations (``Trace.ops``).

    An object under two keys counts once (puts and loads name their objects). A value the trace
    starts on disk (``ondisk``) counts from its first read, which loads it.
    """
    holders: dict[Hashable, object] = {}  # key -> what it holds (a shared-object token, or its put)
    counts: dict[object, list[int]] = {}  # holding -> [keys holding it, nbytes]
    named: dict[int, object] = {}  # object token -> holding (a load names the object it gave back)
    on_disk: dict[Hashable, tuple[int, int]] = {}  # key -> (index of its ondisk line, nbytes) until read
    current = peak = 0

    def hold(key: Hashable, holding: object, nbytes: int) -> None:
        nonlocal current, peak
        entry = counts.setdefault(holding, [0, nbytes])
        if not entry[0]:
            current += entry[1]
            peak = max(peak, current)
        entry[0] += 1
        holders[key] = holding

    def release(key: Hashable) -> None:
        nonlocal current
        if key in holders:
            held = holders.pop(key)
            entry = counts[held]
            entry[0] -= 1
            if not entry[0]:
                current -= entry[1]
                del counts[held]

    for index, op in enumerate(ops):
        tag, key = op[0], op[1]
        if tag == "get":
            if key in on_disk:  # its first read loads it (a pop reads it without keeping it)
                started, nbytes = on_disk.pop(key)
                if op[3] != "pop":
                    hold(key, ("put", started), nbytes)
            elif op[3] == "pop":  # a pop removes the key
                release(key)
            if len(op) > 4 and op[4] and key in holders:
                named[op[4]] = holders[key]
        elif tag in ("put", "del", "ondisk"):
            release(key)
            on_disk.pop(key, None)
            if tag == "put":
                loaded = named.get(op[5]) if op[5] else None
                # Only while a key still holds it, at the same size (as replay checks): a value
                # read back and not kept (over the budget) names an object a new one may reuse the id of.
                if loaded is not None and counts.get(loaded, [0, -1])[1] != op[2]:
                    loaded = None
                fresh = ("object", op[5]) if op[5] else ("put", index)
                hold(key, fresh if loaded is None or loaded not in counts else loaded, op[2])
            elif tag == "ondisk":
                on_disk[key] = (index, op[2])
    return peak
