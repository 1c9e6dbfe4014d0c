"""What the ``spillkit`` commands share: exit codes, option parsers, and the checks made before any work.

A command checks every option (and its output location) before it starts work
that can take minutes, so a typo costs nothing: :class:`BadOption` is exit 2.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_MISSING_EXTRA",
    "EXIT_OK",
    "EXIT_USAGE",
    "BadOption",
    "address",
    "option",
    "output_directory",
    "scale",
]

EXIT_OK, EXIT_USAGE, EXIT_BAD_INPUT, EXIT_MISSING_EXTRA = 0, 2, 3, 4


class BadOption(ValueError):
    """An option's value that the command cannot use: exit 2 (a bad command line), not 3 (a bad input file)."""


def option(check: Any, *args: Any, **kwargs: Any) -> Any:
    """``check(*args, **kwargs)``, its ``ValueError`` raised as :class:`BadOption`."""
    try:
        return check(*args, **kwargs)
    except ValueError as error:
        raise BadOption(str(error)) from None


def address(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"``, ``"[::1]:9464"`` or ``"9464"`` (on 127.0.0.1) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, e.g. 127.0.0.1:9464, not {text!r}")
    return host, int(port)


def scale(text: str) -> float:
    """A workload scale: a positive, finite number (dask would fail deep inside on anything else)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive number like 0.25, not {text!r}")
    return value


def output_directory(path: str, flag: str) -> str:
    """Check, before any work, that ``path`` is or can be made a directory to write into; BadOption if not.

    Nothing is made: a command that fails later on its input leaves no empty directory behind.
    """
    probe = os.path.abspath(path)
    while not os.path.lexists(probe):  # the nearest part of the path that exists must be a directory
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise BadOption(f"{flag} {path!r} cannot be a directory to write into: {probe!r} is no directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BadOption(f"{flag} {path!r} cannot be a directory to write into: {probe!r} is not writable")
    return path
