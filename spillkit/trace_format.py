"""What a trace file is: its format name and version, and how one is opened to write (gzip by name).

A module of its own so that :mod:`spillkit.recorder` (which writes traces) and
:mod:`spillkit.trace` (which reads them, and re-exports the recorder) each import it,
and neither imports the other first: ``import spillkit.recorder`` on its own failed
with a circular import when both lived in ``trace``.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Mapping
from typing import IO, Any, cast

__all__ = ["FORMAT", "VERSION", "check_header", "open_text"]

FORMAT = "spillkit-trace"
VERSION = 1


def open_text(path: str | os.PathLike[str], mode: str) -> IO[str]:
    """Open a trace file as UTF-8 text; gzip-compressed (level 6) when its name ends in ``.gz``."""
    if os.fspath(path).endswith(".gz"):
        return cast(IO[str], gzip.open(path, mode + "t", compresslevel=6, encoding="utf-8"))
    return open(path, mode, encoding="utf-8")


def check_header(header: Mapping[str, Any]) -> None:
    """ValueError if extra header fields would replace the format's own (the trace would not read back)."""
    taken = sorted({"format", "version"} & set(header))
    if taken:
        raise ValueError(f"header fields {taken} are the trace format's own")
