"""Measure this machine's disk as a Chest uses it, for the replay cost model."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict, fields
from typing import Any

from .codecs import PickleCodec
from .replay import DiskModel
from .replay_disk import disk_model_field
from .storage import DiskStore
from .tracelines import parse_json, short

__all__ = ["calibrate", "calibration_path", "load_disk_model", "save_disk_model"]


def calibration_path() -> str:
    """Where ``spillkit calibrate`` saves its numbers (``$SPILLKIT_CALIBRATION`` overrides)."""
    default = os.path.join(os.path.expanduser("~"), ".config", "spillkit", "calibration.json")
    return os.environ.get("SPILLKIT_CALIBRATION", default)


def calibrate(directory: str | None = None, large: int = 4 * 2**20, count: int = 32, small: int = 400) -> DiskModel:
    """Time real spill-file writes and reads through :class:`~spillkit.storage.DiskStore`.

    Bandwidth comes from ``count`` values of ``large`` bytes; per-file latency
    from ``small`` values of a few bytes. Each figure is the median of three
    rounds. No fsync, as a Chest does not fsync spills: these are the speeds
    a spilling Chest sees, page cache included.
    """
    with tempfile.TemporaryDirectory(prefix="spillkit-calibrate-", dir=directory) as path:
        store = DiskStore(path, PickleCodec())
        payload = bytearray(os.urandom(large))
        writes, reads, latencies = [], [], []
        for round_ in range(3):
            start = time.perf_counter()
            for i in range(count):
                store.write((round_, i), payload)
            writes.append(count * large / (time.perf_counter() - start))
            start = time.perf_counter()
            for i in range(count):
                store.read((round_, i))
            reads.append(count * large / (time.perf_counter() - start))
            start = time.perf_counter()
            for i in range(small):
                store.write(("small", round_, i), b"x")
            for i in range(small):
                store.read(("small", round_, i))
            latencies.append((time.perf_counter() - start) / (2 * small))
            for key in list(store):
                store.delete(key)
    return DiskModel(statistics.median(writes), statistics.median(reads), statistics.median(latencies))


def save_disk_model(model: DiskModel, path: str | None = None) -> str:
    """Write ``model`` as JSON; return the path."""
    target = path or calibration_path()
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    with open(target, "w", encoding="utf-8") as file:
        json.dump(asdict(model), file, indent=2)
    return target


def load_disk_model(path: str | None = None) -> DiskModel:
    """The saved calibration, or :class:`DiskModel`'s defaults when there is none.

    Raises
    ------
    ValueError
        If the file is not a JSON object of :class:`DiskModel`'s fields with
        numbers it can price I/O with; the message names the file and the problem.
    OSError
        If the file exists but cannot be read.
    """
    target = path or calibration_path()
    try:
        with open(target, encoding="utf-8") as file:
            model = DiskModel(**_checked(parse_json(file.read())))  # BadLine is a ValueError
    except FileNotFoundError:
        return DiskModel()
    except ValueError as error:
        # the model is used far from here (dividing by a bandwidth deep in a replay): name the file now
        raise ValueError(f"{target}: bad spillkit calibration file: {error} (run spillkit calibrate to measure "
                         "again, or delete the file to use the defaults)") from None  # fmt: skip
    return model


def _checked(data: Any) -> dict[str, float]:
    """The fields of a decoded calibration; ValueError saying what is wrong (without the file name)."""
    known = [f.name for f in fields(DiskModel)]
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object with {', '.join(known)}, found a {type(data).__name__}")
    unknown = [k for k in data if k not in known]
    if unknown:
        raise ValueError(f"unknown field{'s' if len(unknown) > 1 else ''} {short(unknown)} "
                         f"(expected {', '.join(known)})")  # fmt: skip
    # a missing field keeps DiskModel's default (save_disk_model writes all)
    return {name: disk_model_field(name, value) for name, value in data.items()}
