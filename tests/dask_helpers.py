"""Helpers of the dask test modules (imported only by them: this imports dask.array)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import dask.array as da

WAIT = 60.0  # seconds before a test calls an event missed: only reached when the code under test is wrong


def matrix() -> Any:
    """A 400 x 400 random array in 16 blocks of 100 x 100 (80 KB each)."""
    return da.random.RandomState(0).random((400, 400), chunks=(100, 100))


def fails_in_one_block(block: Any, block_id: Any = None) -> Any:
    """For ``map_blocks``: the task of block (3, 3) raises ZeroDivisionError."""
    if block_id == (3, 3):
        raise ZeroDivisionError("a task failed")
    return block


def waits_in_first_block() -> tuple[threading.Event, threading.Event, Callable[..., Any]]:
    """``(inside, release, fn)``: block (0, 0) of ``map_blocks(fn)`` sets ``inside`` and waits for ``release``."""
    inside, release = threading.Event(), threading.Event()

    def waits(block: Any, block_id: Any = None) -> Any:
        if block_id == (0, 0):
            inside.set()
            assert release.wait(WAIT)
        return block

    return inside, release, waits
