"""Files the disk will not let go: each failure is raised or warned, and nothing is lost or miscounted.

A removal that fails (``unlink`` with EIO) used to be swallowed in several places: a dropped directory
stayed, and reopened with the dropped values; a spare file that could be neither reused nor removed
stayed uncounted; a leftover that could not be read at a reopen was kept unwarned. And a delete whose
warning a filter made an error left the key listed with no value. The faults are injected into one
module's ``os`` (or the real ``os.unlink``, which ``shutil.rmtree`` calls); the disk is real.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

import spillkit.filesync
import spillkit.manifest
import spillkit.spares
import spillkit.spillfile
import spillkit.storage
from spillkit import Chest, SpillWarning
from spillkit.manifest import MANIFEST_NAME

REAL_UNLINK = os.unlink


def hundred(value: Any) -> int:
    return 100


def eio(path: Any) -> OSError:
    return OSError(errno.EIO, os.strerror(errno.EIO), os.fspath(path))


class FailingOs:
    """``os`` for one module: ``method`` fails with EIO on paths whose base name ``refuse`` accepts."""

    def __init__(self, method: str, refuse: Any) -> None:
        self._method, self._refuse = method, refuse

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if name != self._method:
            return real

        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            if self._refuse(os.path.basename(os.fspath(path))):
                raise eio(path)
            return real(path, *args, **kwargs)

        return call


def flushed_chest(path: Path) -> Chest:
    chest = Chest(path=path, available_memory=250, sizeof=hundred, pack_threshold=0)
    chest.update({i: f"value-{i}" for i in range(6)})
    chest.flush()
    return chest


def test_a_drop_that_cannot_remove_the_manifest_raises_and_the_directory_reopens_as_last_flushed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c"
    chest = flushed_chest(path)
    chest["later"] = "not flushed"
    monkeypatch.setattr(spillkit.manifest, "os", FailingOs("unlink", lambda name: name == MANIFEST_NAME))
    with pytest.raises(OSError) as raised:  # before: drop returned, and the next open failed on a lone manifest
        chest.drop()
    monkeypatch.undo()
    assert "was not removed; it reopens with its last flush's values" in " ".join(raised.value.__notes__)
    assert chest.closed
    again = Chest(path=path, available_memory=250, sizeof=hundred, pack_threshold=0)
    assert dict(again) == {i: f"value-{i}" for i in range(6)}
    again.drop()
    assert not path.exists()


@pytest.mark.parametrize("persistent", [True, False], ids=["persistent", "temporary"])
def test_a_drop_that_cannot_remove_every_file_warns_what_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, persistent: bool
) -> None:
    if persistent:
        chest = flushed_chest(tmp_path / "c")
    else:
        chest = Chest(available_memory=250, sizeof=hundred, pack_threshold=0)
    chest.update({f"big{i}": bytes(1000) for i in range(4)})
    path = chest.path
    kept = {name for name in os.listdir(path) if not name.startswith(".")}
    assert kept

    def unlink(target: Any, *args: Any, **kwargs: Any) -> None:
        if os.path.basename(os.fspath(target)) in kept:
            raise eio(target)
        REAL_UNLINK(target, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)  # the real module's: shutil.rmtree's calls meet it too
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        chest.drop()  # before: no word, and the files stayed
    monkeypatch.undo()
    messages = [str(w.message) for w in log if issubclass(w.category, SpillWarning)]
    assert len(messages) == len(log)
    assert [m for m in messages if re.match(r"could not remove \d+ entries of the directory .*left on disk", m)]
    assert len([m for m in messages if m.startswith("could not remove the spill file of")]) == 2  # big0, big1
    assert chest.closed
    assert set(os.listdir(path)) == kept  # the manifest went first: these are no values any more
    if persistent:
        assert len(Chest(path=path, sizeof=hundred)) == 0  # and a reopen sweeps them


def test_a_spare_that_can_be_neither_reused_nor_removed_is_warned_and_the_next_flush_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c"
    chest = Chest(path=path, available_memory=150, sizeof=hundred, pack_threshold=0)
    chest["a"] = bytes(300_000)
    chest["b"] = bytes(300_000)  # "a" spilled to a file of its own
    del chest["a"]  # its file kept as a spare (256 KiB or more)
    assert len(chest._store.inner._spares) == 1
    (spare,) = (name for name in os.listdir(path) if name.startswith(".tmp-") and os.path.getsize(path / name))

    def is_spare(name: str) -> bool:
        return name == spare

    monkeypatch.setattr(spillkit.spares, "os", FailingOs("open", is_spare))
    monkeypatch.setattr(spillkit.storage, "os", FailingOs("unlink", is_spare))
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("always")
        chest["c"] = bytes(300_000)  # "b" spills: the spare will not open, nor go
    monkeypatch.undo()
    messages = [str(w.message) for w in log]
    assert any("could not remove the temporary file" in m and spare in m for m in messages), messages
    assert (path / spare).exists()
    chest.flush()  # before: the file stayed, counted nowhere, until the directory was opened again
    assert not (path / spare).exists()
    assert chest["b"] == bytes(300_000) and chest["c"] == bytes(300_000)
    chest.drop()


def test_a_leftover_that_cannot_be_read_at_a_reopen_is_warned_and_left_for_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c"
    killed = (
        "import os\nfrom spillkit import Chest\n"
        f"c = Chest(path={str(path)!r}, available_memory=150, sizeof=lambda v: 100, pack_threshold=0,"
        " write_behind=False)\n"
        "c['a'] = 1\nc.flush()\n"
        "for i in range(4): c[i] = f'not flushed {i}'\n"  # spilled after the flush: leftovers once it dies
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", killed], check=True)
    leftovers = {name for name in os.listdir(path) if not name.startswith(".")} - {"a"}
    assert len(leftovers) >= 3

    class PreadFails:
        def __getattr__(self, name: str) -> Any:
            return getattr(os, name)

        def pread(self, fd: int, length: int, offset: int) -> bytes:
            raise eio("a spill file")

    monkeypatch.setattr(spillkit.spillfile, "os", PreadFails())
    with pytest.warns(SpillWarning, match="to see if it is a leftover") as log:
        chest = Chest(path=path, available_memory=150, sizeof=hundred, pack_threshold=0)
    monkeypatch.undo()
    assert len([w for w in log if "to see if it is a leftover" in str(w.message)]) == len(leftovers)
    assert dict(chest) == {"a": 1}  # the committed state, whatever the leftovers are
    chest.close()
    assert leftovers <= set(os.listdir(path))  # left: maybe no files of ours
    again = Chest(path=path, available_memory=150, sizeof=hundred, pack_threshold=0)  # the disk reads again
    assert dict(again) == {"a": 1}
    assert not leftovers & set(os.listdir(path))
    again.drop()


def test_a_delete_whose_warning_is_an_error_is_still_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chest = Chest(path=tmp_path / "c", available_memory=250, sizeof=hundred, pack_threshold=0)
    chest.update({f"k{i}": bytes([i]) * 50 for i in range(4)})
    assert "k0" not in chest.inmem and "k0" in chest._store
    monkeypatch.setattr(spillkit.filesync, "os", FailingOs("unlink", lambda name: True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(SpillWarning, match="could not remove the spill file of 'k0'"):
            del chest["k0"]
    monkeypatch.undo()
    assert "k0" not in chest and len(chest) == 3  # before: still listed, yet reading it raised KeyError
    assert dict(chest) == {f"k{i}": bytes([i]) * 50 for i in range(1, 4)}
    chest["k0"] = b"back"
    assert chest["k0"] == b"back"
    chest.close()


def test_a_pop_whose_warning_is_an_error_returns_its_value_and_the_next_operation_raises_the_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chest = Chest(path=tmp_path / "c", available_memory=250, sizeof=hundred, pack_threshold=0)
    chest.update({f"k{i}": bytes([i]) * 50 for i in range(4)})
    assert "k0" not in chest.inmem and "k1" not in chest.inmem
    monkeypatch.setattr(spillkit.filesync, "os", FailingOs("unlink", lambda name: True))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert chest.pop("k0") == bytes([0]) * 50  # before: SpillWarning raised, and the value was gone
        with pytest.raises(SpillWarning, match="could not remove the spill file of 'k0'"):
            chest["k9"] = b"nine"  # the next operation says it, once its own work is whole
        assert chest["k9"] == b"nine"
    with pytest.warns(SpillWarning, match="could not remove the spill file of 'k1'"):
        assert chest.pop("k1") == bytes([1]) * 50  # without the filter: warned by the pop itself
    monkeypatch.undo()
    assert dict(chest) == {"k2": bytes([2]) * 50, "k3": bytes([3]) * 50, "k9": b"nine"}
    chest.close()


def test_a_drop_whose_directory_fsync_fails_still_removes_everything_before_it_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # helper-104: the warning came between the manifest's removal and the files': made an error by a
    # filter, it left the spill files behind (a reopen would sweep them).
    path = tmp_path / "c"
    chest = flushed_chest(path)

    def failing_fsync(directory: str) -> None:
        raise eio(directory)

    monkeypatch.setattr(spillkit.manifest, "_fsync_directory", failing_fsync)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpillWarning)
        with pytest.raises(SpillWarning, match="manifest may not be durable"):
            chest.drop()
    assert chest.closed
    assert not path.exists()
