"""``memoize``: cache a function's results in a Chest, with measured call time as cost."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator, MutableMapping
from typing import Any, TypeVar

import cachetools
import cachetools.keys

from .chest import Chest

__all__ = ["memoize"]

F = TypeVar("F", bound=Callable[..., Any])


class _CostingCache(MutableMapping[Hashable, Any]):
    """Stores through ``Chest.put`` with the duration the calling thread just measured."""

    def __init__(self, chest: Chest, timings: threading.local) -> None:
        self.chest = chest
        self.timings = timings

    def __getitem__(self, key: Hashable) -> Any:
        return self.chest[key]

    def __setitem__(self, key: Hashable, value: Any) -> None:
        self.chest.put(key, value, cost=getattr(self.timings, "seconds", None))

    def __delitem__(self, key: Hashable) -> None:
        del self.chest[key]

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self.chest)

    def __len__(self) -> int:
        return len(self.chest)

    def clear(self) -> None:
        self.chest.clear()


def memoize(
    chest: Chest | None = None,
    key: Callable[..., Hashable] = cachetools.keys.hashkey,
) -> Callable[[F], F]:
    """Decorate a function so its results are kept in ``chest`` (a new Chest by default).

    Built on ``cachetools.cached`` and ``cachetools.keys``; each result is
    stored with the measured call time as its recompute cost, so
    ``Chest(policy="cost")`` keeps the results that were slowest to compute.
    Thread-safe (the Chest is); two threads missing the same key at once may
    both compute it, and the later result wins, as with ``cachetools.cached``
    without a lock.

    Examples
    --------
    >>> from spillkit import Chest, memoize
    >>> @memoize(Chest(available_memory="10 MiB", policy="cost"))
    ... def square(x):
    ...     return x * x
    >>> square(4), square(4)
    (16, 16)
    >>> square.cache.chest.stats.hits
    1
    """
    store = Chest() if chest is None else chest
    timings = threading.local()

    def decorator(func: F) -> F:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = func(*args, **kwargs)
            timings.seconds = time.perf_counter() - start
            return result

        wrapped = cachetools.cached(_CostingCache(store, timings), key=key)(timed)
        wrapped.__wrapped__ = func
        wrapped.__name__ = getattr(func, "__name__", "memoized")
        wrapped.__doc__ = func.__doc__
        return wrapped  # type: ignore[return-value]

    return decorator
