"""Reading a results CSV (written by :func:`spillkit.compare.write_csv`) back into rows the figures can draw.

:func:`read_rows` checks every column and cell the figures use and names the
file and line of anything wrong. Re-exported by :mod:`spillkit.plots`, with
:data:`REQUIRED_COLUMNS`.
"""

from __future__ import annotations

import csv
import math
from typing import Any

from .compare import COLUMNS
from .inputfiles import open_input

__all__ = ["REQUIRED_COLUMNS", "read_rows"]


#: Columns a results CSV must have for :func:`read_rows` (the ones the figures use).
REQUIRED_COLUMNS = ("trace", "budget", "budget_fraction", "mode", "policy", "bytes_written", "bytes_read", "io_bytes")

_TEXT_COLUMNS = frozenset({"trace", "mode", "policy"})
_FLOAT_COLUMNS = frozenset(
    {"budget_fraction", "io_seconds", "recompute_seconds", "ratio_to_bound", "replay_seconds", "solve_seconds"}
)


def read_rows(path: str) -> list[dict[str, Any]]:
    """Read a results CSV written by :func:`spillkit.compare.write_csv` back into rows with numbers.

    Counts become ``int``, fractions and seconds ``float``; empty cells (a
    bound row has no hit count) are left out of their row, as in the rows
    :func:`~spillkit.compare.compare` returned.

    Parameters
    ----------
    path : str
        The CSV file.

    Returns
    -------
    list of dict
        One dict per data line.

    Raises
    ------
    ValueError
        If a column the figures need is missing (naming them), or (naming the line) a cell the
        figures need is empty, a number is malformed, negative or not finite (``ratio_to_bound`` and
        ``recompute_seconds`` may be any number), or a mode is unknown.
    OSError
        If the file cannot be read.
    """
    try:
        # utf-8-sig: a spreadsheet that saves "CSV UTF-8" starts the file with a byte order mark
        with open_input(path, "r", newline="", encoding="utf-8-sig") as file:
            return _read_rows(csv.DictReader(file), path)
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a spillkit results CSV (not UTF-8 text at byte {error.start})") from None


def _read_rows(reader: csv.DictReader[str], path: str) -> list[dict[str, Any]]:
    try:
        header = reader.fieldnames or []
    except csv.Error as error:
        raise ValueError(f"{path}:1: not a spillkit results CSV ({error})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ValueError(
            f"{path}: not a spillkit results CSV: missing column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)} (expected a file written by spillkit compare, with columns "
            f"{', '.join(COLUMNS)})"
        )
    rows: list[dict[str, Any]] = []
    while True:
        try:
            raw = next(reader)
        except StopIteration:
            return rows
        except csv.Error as error:  # e.g. a cell longer than the csv module's field limit
            raise ValueError(f"{path}:{reader.line_num + 1}: {error}") from None  # the bad line is not counted
        row: dict[str, Any] = {}
        for column, text in raw.items():
            if column is None or text is None or text == "":
                continue  # a ragged line's extra cells, or an empty cell
            try:
                row[column] = _parse_cell(column, text)
            except ValueError as error:
                raise ValueError(f"{path}:{reader.line_num}: column {column!r}: {_short(text)} {error}") from None
        empty = [c for c in _NEEDED if c not in row]
        if empty:
            raise ValueError(f"{path}:{reader.line_num}: empty {', '.join(empty)} (every row needs them)")
        rows.append(row)


def _short(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:37]) + "..."


#: Cells every row must fill: bound rows leave hits, loads and the written/read split empty.
_NEEDED = ("trace", "budget", "budget_fraction", "mode", "policy", "io_bytes")
_MODES = frozenset({"strict", "settled", "dead-skip", "bound"})


def _parse_cell(column: str, text: str) -> Any:
    """A cell's value; ValueError (saying why, without the cell) if a column the figures use is wrong."""
    if column == "mode" and text not in _MODES:
        raise ValueError(f"is not a replay mode ({', '.join(sorted(_MODES))})")  # it also names the PNG files
    if column in _TEXT_COLUMNS:
        return text
    number: float
    try:
        number = float(text) if column in _FLOAT_COLUMNS else int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            if column in COLUMNS:
                raise ValueError("is not a number") from None
            return text  # an extra column of text
    if column in COLUMNS and column not in _ANY_FLOAT and not (number >= 0 and math.isfinite(number)):
        raise ValueError("is not a finite number of at least 0")
    return number


# ratio_to_bound is NaN without a bound and inf over a bound of 0. recompute_seconds sums the costs of a trace,
# which may be any number but NaN (inf: cannot be recomputed; see spillkit.tracelines._cost), so the sum may be
# anything, NaN included (inf + -inf): refusing any of it would refuse a CSV spillkit compare wrote. No figure
# draws either column.
_ANY_FLOAT = frozenset({"ratio_to_bound", "recompute_seconds"})
