"""Parse and format byte counts such as ``"512 MiB"``, and budgets as shares of a peak; pure helpers, no state."""

from __future__ import annotations

import re

__all__ = ["UNLIMITED", "format_bytes", "format_percent", "parse_bytes"]

UNLIMITED = 2**63 - 1  # what float("inf") becomes: more bytes than any machine has

_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "t": 10**12,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_PATTERN = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*\Z")


def parse_bytes(value: int | float | str) -> int:
    """Return a byte count from a number or a string like ``"1.5 GiB"``.

    Raises ``ValueError`` for negative sizes or unknown units and ``TypeError``
    for anything that is neither a number nor a string. A count above ``2**63 - 1``
    (:data:`UNLIMITED`), ``float("inf")`` included, means no limit: it becomes ``UNLIMITED``.

    >>> parse_bytes("512 MiB")
    536870912
    >>> parse_bytes(1e9)
    1000000000
    >>> parse_bytes(float("inf")) == UNLIMITED
    True
    """
    if isinstance(value, bool):
        raise TypeError("a byte count must be a number or a string, not a bool")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        match = _PATTERN.match(value)
        if match is None:
            raise ValueError(f"cannot parse a byte count from {value!r}")
        unit = match.group(2).lower()
        if unit not in _UNITS:
            raise ValueError(f"unknown unit {match.group(2)!r} in {value!r}")
        number = float(match.group(1)) * _UNITS[unit]
    else:
        raise TypeError(f"a byte count must be a number or a string, not {type(value).__name__}")
    if number != number or number < 0:
        raise ValueError(f"a byte count must be a non-negative number, got {value!r}")
    if number > UNLIMITED:  # float("inf") means no limit
        return UNLIMITED
    return int(number)


def format_bytes(n: float) -> str:
    """Return ``n`` bytes in binary units, e.g. ``format_bytes(3 * 2**20) == '3.00 MiB'``."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def format_percent(fraction: float) -> str:
    """``fraction`` as a percentage to three significant digits: ``'25%'``, ``'0.3%'``, ``'12.5%'``.

    A budget given as a share of a peak is rounded to whole bytes, so it comes back a hair off
    (1% of 2.98 GiB is 0.999998% of it): three digits say what was asked, and a share under 1% is
    not shown as ``0%``.
    """
    return f"{fraction * 100:.3g}%"
