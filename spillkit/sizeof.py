"""Estimate how many bytes a value holds in memory.

``dask.sizeof`` is used when dask is installed, so a Chest and a dask worker
agree about sizes; otherwise :func:`deep_sizeof` gives the same kind of answer
(numpy and pandas by their buffers, containers by sampling their items).
"""

from __future__ import annotations

import itertools
import math
import numbers
import operator
import reprlib
import sys
import warnings
from collections.abc import Callable, Hashable
from decimal import Decimal
from typing import Any

from .broadcasts import held_elements
from .errors import SpillWarning
from .keys import describe_key

__all__ = ["FAILED_SIZE", "checked_size", "deep_sizeof", "default_sizeof", "tolerant"]

_SAMPLES = 10
_MAX_DEPTH = 6


def deep_sizeof(obj: Any, _depth: int = 0) -> int:
    """Return the approximate number of bytes ``obj`` keeps alive.

    Containers with more than ten items are estimated from the first ten (a
    deterministic sample, so repeated calls agree). Recursion stops at depth 6.

    >>> deep_sizeof(b"x" * 1000)
    1000
    """
    if isinstance(obj, (bytes, bytearray)):
        return len(obj)
    if isinstance(obj, memoryview):
        return obj.nbytes
    nbytes = getattr(obj, "nbytes", None)
    module = type(obj).__module__
    if isinstance(nbytes, int) and module.startswith("numpy"):
        strides = getattr(obj, "strides", None)
        if strides and 0 in strides:  # a broadcast: the elements it holds, as dask.sizeof counts it
            return int(held_elements(obj).nbytes)
        return max(nbytes, sys.getsizeof(obj)) if getattr(obj, "base", None) is None else nbytes
    if module.startswith("pandas"):
        usage = getattr(obj, "memory_usage", None)
        if usage is not None:
            try:
                total = usage(deep=True)
                return int(total.sum()) if hasattr(total, "sum") else int(total)
            except (TypeError, ValueError):
                pass
    if _depth >= _MAX_DEPTH:
        return sys.getsizeof(obj)
    if isinstance(obj, dict):
        return sys.getsizeof(obj) + _sampled(itertools.chain.from_iterable(obj.items()), 2 * len(obj), _depth)
    if isinstance(obj, (list, tuple, set, frozenset)):
        return sys.getsizeof(obj) + _sampled(iter(obj), len(obj), _depth)
    return sys.getsizeof(obj)


def _sampled(items: Any, count: int, depth: int) -> int:
    sample = list(itertools.islice(items, _SAMPLES))
    if not sample:
        return 0
    measured = sum(deep_sizeof(item, depth + 1) for item in sample)
    return int(measured * count / len(sample))


FAILED_SIZE = 10**6  # counted for a value whose size cannot be measured, as dask.distributed's safe_sizeof does


def default_sizeof() -> Callable[[Any], int]:
    """Return ``dask.sizeof.sizeof`` when dask is installed, else :func:`deep_sizeof`, made :func:`tolerant`.

    A dask task's result that plain dask computes must not fail the computation. (A ``sizeof``
    given to a Chest is the caller's own: its errors propagate.)
    """
    try:
        from dask.sizeof import sizeof as dask_sizeof
    except ImportError:
        return tolerant(deep_sizeof)
    return tolerant(dask_sizeof)


def tolerant(sizeof: Callable[[Any], Any]) -> Callable[[Any], int]:
    """``sizeof`` made to give a size a Chest takes, whatever it meets.

    A value it cannot measure (its ``__sizeof__``, or a function registered with
    ``dask.sizeof``, raises or gives a negative, NaN or infinite size) counts as
    :data:`FAILED_SIZE` bytes, with a ``SpillWarning``, as dask.distributed's
    ``safe_sizeof`` counts a failure, instead of failing the put.
    """

    def measured(obj: Any) -> int:
        try:
            size = sizeof(obj)
        except Exception as error:
            return _unmeasured(obj, repr(error))
        if type(size) is int and size >= 0:
            return size
        number = real_number(size)
        if number is not None and math.isfinite(number) and number >= 0:
            return int(number)
        return _unmeasured(obj, f"it measured {reprlib.repr(size)}")

    return measured


def _unmeasured(obj: Any, why: str) -> int:
    message = f"could not measure a {type(obj).__qualname__} ({why}): counted as {FAILED_SIZE} bytes"
    warnings.warn(message, SpillWarning, stacklevel=5)  # (measured, engine.put, Chest.__setitem__, its caller)
    return FAILED_SIZE


def real_number(value: object) -> float | None:
    """``value`` as a float if it is a real number (numpy's, Decimal and Fraction too), else None.

    Text is no number (float() would parse it), nor is a complex one (numpy's complex64
    included, which float() would cut to its real part). An int too large for a float is
    infinite; Decimal's signalling NaN is NaN.
    """
    if isinstance(value, (str, bytes, bytearray)) or (
        isinstance(value, numbers.Complex) and not isinstance(value, numbers.Real)
    ):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:
        return -math.inf if value < 0 else math.inf  # type: ignore[operator]
    except ValueError:
        return math.nan if isinstance(value, Decimal) else None
    except TypeError:
        return None


def checked_size(key: Hashable, measured: Any) -> int:
    """``measured``, what ``sizeof`` said of the value of ``key``, as whole bytes.

    ValueError naming the key unless it is a finite real number of at least 0: a negative
    size would let memory grow without limit, and NaN or infinity cannot be counted.
    """
    try:
        whole = operator.index(measured)  # ints of any size, numpy integers
    except TypeError:
        number = real_number(measured)  # other real numbers: numpy floats, 0-d arrays, Decimal, Fraction
        if number is not None and math.isfinite(number) and number >= 0:
            return int(number)
    else:
        if whole >= 0:
            return whole
    raise ValueError(
        f"sizeof returned {measured!r} for the value of {describe_key(key)}: a size must be a finite number "
        "of bytes of at least 0 (nothing was stored)"
    )
