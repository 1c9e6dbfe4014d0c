"""Read buffers: numpy-backed (no zero-fill) when numpy is loaded, bytearray otherwise; loads agree either way."""

from __future__ import annotations

import mmap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

import spillkit.filereads
from spillkit import Chest, PickleCodec, buffers
from spillkit.buffers import UNINITIALIZED_FROM, read_buffer, release_pages


def hide_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make read_buffer see a process without numpy (sys.modules itself stays: pickle imports from it)."""
    monkeypatch.setattr(buffers, "sys", SimpleNamespace(modules={}))


@pytest.mark.parametrize("size", [0, 1, UNINITIALIZED_FROM - 1, UNINITIALIZED_FROM, 3 * UNINITIALIZED_FROM + 7])
def test_buffer_is_writable_and_sized(size: int) -> None:
    view = read_buffer(size)
    assert view.nbytes == size and not view.readonly and view.format == "B" and view.c_contiguous
    view[:] = b"\x07" * size
    assert bytes(view) == b"\x07" * size
    backed_by_numpy = isinstance(view.obj, np.ndarray)
    assert backed_by_numpy == (size >= UNINITIALIZED_FROM)


def test_without_numpy_loaded_a_bytearray_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_numpy(monkeypatch)
    view = read_buffer(4 * UNINITIALIZED_FROM)
    assert isinstance(view.obj, bytearray) and not view.readonly


def test_a_numpy_still_being_imported_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    # Found in review: another thread's `import numpy` puts the module in sys.modules before it has `empty`.
    half_imported = SimpleNamespace()
    monkeypatch.setattr(buffers, "sys", SimpleNamespace(modules={"numpy": half_imported}))
    view = read_buffer(4 * UNINITIALIZED_FROM)
    assert isinstance(view.obj, bytearray) and view.nbytes == 4 * UNINITIALIZED_FROM


@pytest.mark.parametrize("numpy_loaded", [True, False])
@pytest.mark.parametrize(
    "storage",
    [{"pack_threshold": 0}, {"pack_threshold": "1 MiB"}, {"pack_threshold": "1 MiB", "compression": "lz4"}],
    ids=["file-per-value", "packed", "packed-lz4"],
)
def test_loaded_arrays_are_equal_and_writable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, numpy_loaded: bool, storage: dict[str, Any]
) -> None:
    # Packed records were read as bytes, so their out-of-band buffers came back read-only.
    arrays = [np.random.default_rng(i).random(50_000) for i in range(6)]  # random: lz4 leaves them raw
    chest = Chest(path=tmp_path / "c", available_memory=500_000, **storage)
    for i, a in enumerate(arrays):
        chest[i] = a.copy()
    if not numpy_loaded:
        hide_numpy(monkeypatch)
    loaded = [chest[i] for i in range(6)]
    assert chest.stats.loads >= 3
    for got, want in zip(loaded, arrays, strict=True):
        assert np.array_equal(got, want) and got.flags.writeable
        got[0] = -1.0  # a loaded value is the user's to change, as from a dict
        assert got[0] == -1.0
    chest.close()


def test_release_pages_gives_back_only_the_whole_pages_inside_the_view() -> None:
    page = mmap.PAGESIZE
    memory = np.ones(10 * page, dtype=np.uint8)
    base = memory.ctypes.data
    first = -base % page  # the first page boundary inside the array
    view = memoryview(memory)[first + 100 : first + 4 * page + 50]
    assert release_pages(view) == 3 * page  # pages 1..3 from the boundary: whole ones only
    assert not memory[first + page : first + 4 * page].any()  # anonymous pages read as zeros once given back
    assert memory[: first + page].all() and memory[first + 4 * page :].all()  # the rest untouched
    assert release_pages(memoryview(bytes(4 * page))) == 0  # read-only: never
    assert release_pages(memoryview(bytearray(10))) == 0  # no whole page


def _mixed_frame(n: int) -> pd.DataFrame:
    # An object column pickles in-band (the stream), the float column out of band (a view on load).
    names = pd.Series([f"customer-{i:09d}-" + "x" * 40 for i in range(n)], dtype=object)
    return pd.DataFrame({"name": names, "amount": np.arange(n, dtype=np.float64)})


def _root(array: np.ndarray) -> Any:
    root: Any = array
    while (parent := root.obj if isinstance(root, memoryview) else getattr(root, "base", None)) is not None:
        root = parent
    return root


@pytest.mark.parametrize("map_loads", [False, True], ids=["read", "mapped"])
def test_a_loaded_values_arrays_keep_no_pickle_stream_alive(
    tmp_path: Path, map_loads: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # helper-114: the float column is a view into the buffer the whole record was read into, so the
    # pickled strings (90 MB of a 105 MB record at this size) stayed in memory as long as it did, uncounted.
    # What the kernel does with pages given back is release_pages' own test (above); here, that the load
    # gives back the stream's, and only those (an in-suite run once found them still holding the strings).
    given: list[tuple[int, int]] = []

    def spy(view: memoryview) -> int:
        start = np.frombuffer(view, dtype=np.uint8).ctypes.data if view.nbytes else 0
        given.append((start, view.nbytes))
        return release_pages(view)

    monkeypatch.setattr(spillkit.filereads, "release_pages", spy)
    frame = _mixed_frame(200_000)
    chest = Chest(path=tmp_path / "c", available_memory="1 GiB", map_loads=map_loads)
    chest["df"] = _mixed_frame(200_000)  # an equal copy: the one stored must not stay alive (it would be reused)
    chest.evict()
    assert "df" not in chest.inmem
    loaded = chest["df"]
    pd.testing.assert_frame_equal(loaded, frame)
    amount = loaded["amount"].to_numpy()
    root = np.frombuffer(_root(amount), dtype=np.uint8)
    offset = amount.ctypes.data - root.ctypes.data
    assert offset > 12 * mmap.PAGESIZE  # the stream lies before the column
    ((start, nbytes),) = given  # one stream given back: inside the record, before the column, nearly all of it
    assert root.ctypes.data < start and start + nbytes <= amount.ctypes.data
    assert nbytes >= offset - 2 * mmap.PAGESIZE
    np.testing.assert_array_equal(amount, np.arange(200_000, dtype=np.float64))
    del loaded, amount
    chest.evict()
    pd.testing.assert_frame_equal(chest["df"], frame)  # and it reads again
    chest.close()


class _LazyCodec(PickleCodec):
    """A subclass that decodes on first use, keeping a view of the body until then."""

    def decode(self, data: memoryview) -> Any:
        parent = super()
        return _Lazy(lambda: parent.decode(data))


class _Lazy:
    def __init__(self, load: Any) -> None:
        self.load = load

    def value(self) -> Any:
        return self.load()


@pytest.mark.parametrize("map_loads", [False, True], ids=["read", "mapped"])
def test_a_codec_subclass_decoding_its_own_way_keeps_its_whole_body(tmp_path: Path, map_loads: bool) -> None:
    # helper-118: the stream's pages were given back for any PickleCodec subclass, so one that decodes
    # lazily read zeros ("invalid load key"). Only PickleCodec's own decode gives them back now.
    chest = Chest(path=tmp_path / "c", available_memory="1 GiB", codec=_LazyCodec(), map_loads=map_loads)
    chest["df"] = _mixed_frame(100_000)
    chest.evict()
    pd.testing.assert_frame_equal(chest["df"].value(), _mixed_frame(100_000))
    chest.drop()  # (a close would flush the lazy value, which cannot be pickled)


class _WholeSpanCodec(PickleCodec):
    """A subclass that says its whole body is the stream (a layout of its own)."""

    def stream_span(self, data: memoryview) -> tuple[int, int] | None:
        return (0, len(data))


def test_a_codec_subclass_with_its_own_stream_span_gives_no_pages_back(tmp_path: Path) -> None:
    # helper-122: only decode was checked for being PickleCodec's; a subclass's stream_span was trusted.
    chest = Chest(path=tmp_path / "c", available_memory="1 GiB", codec=_WholeSpanCodec())
    chest["df"] = _mixed_frame(100_000)
    chest.evict()
    pd.testing.assert_frame_equal(chest["df"], _mixed_frame(100_000))
    chest.close()
