"""Read buffers: numpy-backed (no zero-fill) when numpy is loaded, bytearray otherwise; loads agree either way."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from spillkit import Chest, buffers
from spillkit.buffers import UNINITIALIZED_FROM, read_buffer


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
