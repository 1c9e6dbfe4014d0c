"""Broadcast arrays spill as the elements they hold and load back broadcast, at the size counted.

``dask.sizeof`` counts ``np.broadcast_to(x, shape)`` by ``x``'s bytes (dask.array's ``ones``,
``zeros`` and ``full`` chunks are such arrays). Before spillkit.broadcasts, a spill wrote every
repeated element and a load brought back a contiguous copy, held in memory at the few bytes
counted: a Chest over its budget by the difference.
"""

from __future__ import annotations

import copyreg
import gc
import subprocess
import sys
import threading
import tracemalloc
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import join_frames, run_threads
from hypothesis import given, settings
from hypothesis import strategies as st

from spillkit import Chest, PickleCodec, picklers
from spillkit.broadcasts import rebroadcast
from spillkit.compression import CompressedCodec

SHAPE = (1000, 4000)  # 32 MB of float64 when materialized


def round_trip(value: Any, codec: Any = None) -> tuple[Any, int]:
    codec = codec or PickleCodec()
    data = join_frames(codec.encode(value))
    return codec.decode(memoryview(data)), len(data)


def cases() -> Iterator[tuple[str, Any]]:
    yield "scalar", np.broadcast_to(np.float64(2.5), SHAPE)
    yield "row", np.broadcast_to(np.arange(4000.0), SHAPE)  # 32 KB held: in-band
    yield "big-row", np.broadcast_to(np.arange(200_000.0), (40, 200_000))  # 1.6 MB held: out of band
    yield "column", np.broadcast_to(np.arange(1000.0)[:, None], SHAPE)
    yield "int-new-axis", np.broadcast_to(np.arange(6, dtype=np.int16).reshape(2, 1, 3), (2, 5000, 3))
    yield "of-a-strided-view", np.broadcast_to(np.arange(20_000.0)[::5], (300, 4000))
    yield "structured", np.broadcast_to(np.array([(1, 2.0)], dtype=[("a", "i4"), ("b", "f8")]), (1000, 1000))


CASES = dict(cases())


@pytest.mark.parametrize("name", list(CASES))
def test_a_broadcast_array_round_trips_as_a_broadcast_of_the_elements_it_holds(name: str) -> None:
    value = CASES[name]
    result, written = round_trip(value)
    assert result.shape == value.shape
    assert result.dtype == value.dtype
    np.testing.assert_array_equal(result, value)
    # the repeated axes repeat again: stride zero exactly where the value had it
    assert [s == 0 for s in result.strides] == [s == 0 for s in value.strides]
    assert not result.flags.writeable  # np.broadcast_to's arrays are read-only, and stay so
    held = value[tuple(slice(0, 1) if s == 0 else slice(None) for s in value.strides)]
    assert written < held.nbytes + 1000  # the held elements and a header, not the whole shape
    assert written < value.nbytes / 20


def test_a_writable_zero_stride_array_stays_writable_with_its_elements_shared() -> None:
    base = np.arange(3.0)
    value = np.lib.stride_tricks.as_strided(base, shape=(4, 3), strides=(0, 8), writeable=True)
    result, _ = round_trip(value)
    assert result.flags.writeable
    assert result.strides == (0, 8)
    result[0, 1] = 99.0  # one element held, so every row sees the write, as before the spill
    np.testing.assert_array_equal(result[:, 1], [99.0] * 4)
    np.testing.assert_array_equal(base, [0.0, 1.0, 2.0])  # the original is not touched


def test_arrays_that_repeat_nothing_pickle_as_numpy_does() -> None:
    for value in (np.zeros((1, 5))[:, :], np.ones((3, 1)), np.zeros((0, 4)), np.array(1.0)):
        strides = tuple(0 if n <= 1 else s for s, n in zip(value.strides, value.shape, strict=True))
        ordinary = np.lib.stride_tricks.as_strided(value, strides=strides)  # stride 0 on its length-1 axes
        for array in (value, ordinary):
            result, _ = round_trip(array)
            np.testing.assert_array_equal(result, array)
            assert result.flags.writeable  # not rebuilt through broadcast_to


def test_inside_containers_and_beside_a_lambda_and_compressed() -> None:
    value = {"a": [CASES["scalar"], CASES["row"]], "f": lambda x: x.sum()}  # the lambda: cloudpickle
    result, written = round_trip(value)
    assert written < 100_000
    np.testing.assert_array_equal(result["a"][1], CASES["row"])
    assert result["a"][0].strides == (0, 0)
    assert result["f"](result["a"][0]) == 2.5 * 4_000_000
    packed, _ = round_trip(CASES["big-row"], CompressedCodec(PickleCodec(), "lz4", min_size=1))
    assert packed.strides == (0, 8)
    np.testing.assert_array_equal(packed, CASES["big-row"])


def test_arrays_of_objects_pickle_as_numpy_does_even_one_that_holds_itself() -> None:
    # helper-99: reduced by its elements, an object array holding itself recursed without end.
    value = np.broadcast_to(np.array([{"k": 1}, "s"], dtype=object), (5000, 2))
    result, _ = round_trip(value)
    np.testing.assert_array_equal(result, value)
    cell = np.empty(1, dtype=object)
    looped = np.broadcast_to(cell, (3,))
    cell[0] = looped
    result, _ = round_trip([looped])
    assert result[0][0] is result[0]  # as numpy's own pickling gives it: the copy holds itself
    inner = {"a": CASES["scalar"]}  # but a broadcast inside an object array is kept
    result, _ = round_trip(np.array([inner, None], dtype=object))
    assert result[0]["a"].strides == (0, 0)


def test_np_broadcast_arrays_results_come_back_read_only_without_a_warning() -> None:
    # numpy warns at a write to these (and at reading their writeable flag), and says they will
    # become read-only; so they come back read-only, and pickling them warns of nothing.
    a, _ = np.broadcast_arrays(np.arange(3.0), np.zeros((4, 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result, written = round_trip({"a": a})
    assert result["a"].strides == (0, 8)
    assert written < 1000
    np.testing.assert_array_equal(result["a"], np.broadcast_to(np.arange(3.0), (4, 3)))
    with pytest.raises(ValueError, match="read-only"):
        result["a"][0, 0] = 1.0


class Reentrant:
    """Pickles another value through the codec from its own __reduce__, on the same thread."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __reduce__(self) -> Any:
        frames = PickleCodec().encode({"again": CASES["row"], "inner": self.inner})
        return Reentrant, (bytes(join_frames(frames)),)


def test_a_reducer_that_encodes_on_the_same_thread_gets_a_pickler_of_its_own() -> None:
    value = {"first": CASES["scalar"], "r": Reentrant([1, 2]), "last": CASES["column"]}
    result, _ = round_trip(value)
    assert result["first"].strides == (0, 0)
    assert result["last"].strides == (8, 0)
    inner = PickleCodec().decode(memoryview(bytearray(result["r"].inner)))
    assert inner["inner"] == [1, 2] and inner["again"].strides == (0, 8)


def test_the_pickler_kept_for_the_thread_holds_nothing_after_a_value_or_a_failure() -> None:
    class Tracked:
        pass

    obj = Tracked()
    alive = weakref.ref(obj)
    round_trip({"obj": obj, "b": CASES["scalar"]})
    del obj
    gc.collect()
    assert alive() is None  # the memo was cleared
    with pytest.raises(TypeError):
        PickleCodec().encode({"lock": threading.Lock(), "x": [1]})  # cloudpickle refuses it too
    result, _ = round_trip({"after": [CASES["scalar"], 3]})  # and the next value pickles whole
    assert result["after"][1] == 3 and result["after"][0].strides == (0, 0)


def test_a_long_value_leaves_no_pickler_behind_and_a_short_one_an_empty_one() -> None:
    # helper-100: a reused pickler's memo table never shrinks; after a list of 2,000,000 strings a
    # small dict took 4 ms to encode on that thread, and the table held 65 MB. Only a pickler
    # that pickled a short stream (few objects) is kept now, with its memo cleared.
    PickleCodec().encode({"short": [1, 2]})
    kept = picklers._threads.slot
    assert kept is not None and not kept.pickler.memo.copy()
    PickleCodec().encode({"long": [str(i) for i in range(20_000)]})
    assert picklers._threads.slot is None
    PickleCodec().encode({"short": [CASES["scalar"]]})
    assert picklers._threads.slot is not None and not picklers._threads.slot.pickler.memo.copy()


class Refuses:
    def __reduce__(self) -> Any:
        raise TypeError("no")


def test_a_failed_dump_lets_go_of_its_partial_stream_while_its_error_lives() -> None:
    # The traceback keeps dumps' frame, and so the thread's pickler: its file held the 10 MB
    # pickled before the failure as long as a caller kept the error.
    value = [CASES["scalar"], bytes(10_000_000), Refuses()]  # (the broadcast: the pickler's path)
    gc.collect()
    tracemalloc.start()
    try:
        try:
            picklers.dumps(value, lambda b: True)
        except TypeError as error:
            kept = error  # as a caller that reports the error later would
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(kept, TypeError)
    assert held < 2_000_000


def test_a_pickler_dropped_after_a_failure_is_freed_without_the_cycle_collector() -> None:
    def slots() -> int:
        return sum(type(obj) is picklers._Slot for obj in gc.get_objects())

    gc.collect()
    gc.disable()
    try:
        before = slots()
        for _ in range(50):
            with pytest.raises(TypeError):
                picklers.dumps({"lock": threading.Lock()}, lambda buffer: True)
        assert slots() <= before + 1
    finally:
        gc.enable()


def test_threads_encoding_at_once_each_get_their_own_values() -> None:
    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(300):
            row = rng.random(int(rng.integers(2, 50)))
            value = {"seed": seed, "b": np.broadcast_to(row, (7, row.size)), "l": [seed] * 3}
            result, _ = round_trip(value)
            assert result["seed"] == seed and result["l"] == [seed] * 3
            np.testing.assert_array_equal(result["b"], value["b"])
            assert result["b"].strides == (0, 8)

    run_threads(work, 4)  # re-raises what a thread raised


class Celsius:
    def __init__(self, degrees: float) -> None:
        self.degrees = degrees


def test_reducers_registered_with_copyreg_still_apply() -> None:
    calls: list[float] = []

    def reduce_celsius(obj: Celsius) -> Any:
        calls.append(obj.degrees)
        return Celsius, (obj.degrees + 1,)

    copyreg.pickle(Celsius, reduce_celsius)
    try:
        result, _ = round_trip([Celsius(20.0), np.ones(3)])
    finally:
        del copyreg.dispatch_table[Celsius]
    assert calls == [20.0]
    assert result[0].degrees == 21.0


def test_rebroadcast_refuses_a_shape_its_elements_do_not_broadcast_to() -> None:
    with pytest.raises(ValueError):
        rebroadcast(np.arange(3.0), (4, 5), False)


OPTIONS = {
    "defaults": {},
    "mapped-loads": {"map_loads": True},
    "write-behind": {"write_behind": True},
    "a-file-each": {"pack_threshold": 0},
    "lz4": {"compression": "lz4"},
}


@pytest.mark.parametrize("options", list(OPTIONS))
def test_a_chest_spills_and_loads_broadcasts_at_the_size_it_counted(tmp_path: Path, options: str) -> None:
    """The reported defect: 20 chunks of dask.array.zeros through a 2 MB Chest."""
    kwargs: dict[str, Any] = OPTIONS[options]
    chest = Chest(path=str(tmp_path), available_memory=2_000_000, **kwargs)
    for i in range(20):
        chest[i] = np.broadcast_to(np.float64(i), SHAPE)
    chest["row"] = np.broadcast_to(np.arange(200_000.0), (40, 200_000))  # 1.6 MB held, counted (dask.sizeof)
    for j in range(3):
        chest[f"big{j}"] = np.ones(100_000)  # 800 kB each: the broadcasts are spilled
    chest.flush()
    assert chest.stats.spills >= 21
    assert chest.stats.spill_bytes < 5_000_000  # was 704 MB: every repeated element
    gc.collect()
    tracemalloc.start()
    try:
        loaded = [chest[i] for i in range(20)]
        grew, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert grew < 1_000_000  # was 640 MB of copies, counted at 8 bytes each
    assert chest.memory_bytes <= 2_000_000
    for i, value in enumerate(loaded):
        assert value.strides == (0, 0)
        assert value.shape == SHAPE
        assert value[999, 3999] == i
    row = chest["row"]
    assert row.strides == (0, 8)
    np.testing.assert_array_equal(row[39], np.arange(200_000.0))
    del row, loaded
    chest.close()
    again = Chest(path=str(tmp_path), available_memory=2_000_000, **kwargs)  # and from the files, reopened
    try:
        assert again[7].strides == (0, 0)
        assert float(again[7].sum()) == 7.0 * 4_000_000
        assert again["row"].strides == (0, 8)
    finally:
        again.close()


@st.composite
def strided_arrays(draw: st.DrawFn) -> Any:
    """Arrays of 0-4 axes: views with steps, transposes, new axes, broadcasts and zero lengths."""
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from(["f8", "i2", "u1", "c16", "M8[s]", "O"]))
    base = np.arange(int(np.prod(shape, dtype=np.int64)) or 0).astype(dtype).reshape(shape)
    view = base[tuple(slice(None, None, draw(st.sampled_from([1, 2, -1]))) for _ in shape)] if ndim else base
    if draw(st.booleans()) and view.ndim:
        view = view.transpose(draw(st.permutations(range(view.ndim))))
    if draw(st.booleans()):  # broadcast some length-1 axes, and maybe prepend new ones
        kept = tuple(1 if n and draw(st.booleans()) else n for n in view.shape)
        view = view[tuple(slice(0, 1) if k == 1 else slice(None) for k in kept)]
        extra = tuple(draw(st.lists(st.integers(1, 5), max_size=2)))
        target = extra + tuple(draw(st.integers(1, 5)) if k == 1 else k for k in kept)
        view = np.broadcast_to(view, target)
    return view


@settings(max_examples=300, deadline=None)
@given(strided_arrays())
def test_every_strided_array_round_trips_equal_with_its_repeated_axes(value: Any) -> None:
    result, _ = round_trip({"v": value})  # in a dict: the dispatch-table path
    result = result["v"]
    assert result.shape == value.shape and result.dtype == value.dtype
    np.testing.assert_array_equal(result, value)
    if value.size and value.dtype != object:  # (arrays of objects pickle as numpy pickles them)
        repeated = [s == 0 and n > 1 for s, n in zip(value.strides, value.shape, strict=True)]
        assert [s == 0 and n > 1 for s, n in zip(result.strides, result.shape, strict=True)] == repeated


def test_without_dask_the_size_estimate_counts_a_broadcast_by_its_elements_as_dask_does() -> None:
    from dask.sizeof import sizeof

    from spillkit.sizeof import deep_sizeof

    for name, value in CASES.items():
        assert deep_sizeof(value) == sizeof(value), name
    assert deep_sizeof([CASES["scalar"]] * 3) == sys.getsizeof([None] * 3) + 3 * 8  # (was 96 MB)


def test_the_cloudpickle_path_keeps_broadcasts_when_it_is_the_first_to_pickle() -> None:
    # In a fresh process: cloud_dumps, not dumps, is the first to meet an array.
    code = (
        "import pickle, numpy as np\n"
        "from spillkit import picklers\n"
        "s = picklers.cloud_dumps({'f': lambda x: x, 'b': np.broadcast_to(1.0, (1000, 1000))}, lambda b: True)\n"
        "assert len(s) < 10_000 and pickle.loads(s)['b'].strides == (0, 0), len(s)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
