"""spillkit: a policy-driven, instrumented spill-to-disk cache.

``import spillkit`` imports no optional extra (dask, prometheus-client,
matplotlib); the modules that need one import it themselves.
"""

from __future__ import annotations

from .chest import Chest
from .codecs import Codec, FuncCodec, PickleCodec
from .engine import SpillEngine
from .errors import (
    ChangedWhileWritten,
    ChestLocked,
    CorruptSpillFile,
    DiskQuotaExceeded,
    LoadFailed,
    SpillError,
    SpillWarning,
)
from .events import Event
from .manifest import UnreadableKey
from .memo import memoize
from .policies import (
    ARC,
    FIFO,
    LFU,
    LRC,
    LRU,
    S3FIFO,
    SIEVE,
    CacheyScore,
    CostAware,
    NextUse,
    Policy,
    SizeAware,
    make_policy,
    policy_names,
    register_policy,
)
from .sizes import format_bytes, parse_bytes
from .stats import Stats

__version__ = "0.1.0"

__all__ = [
    "ARC",
    "FIFO",
    "LFU",
    "LRC",
    "LRU",
    "S3FIFO",
    "SIEVE",
    "CacheyScore",
    "ChangedWhileWritten",
    "Chest",
    "ChestLocked",
    "Codec",
    "CorruptSpillFile",
    "CostAware",
    "DiskQuotaExceeded",
    "Event",
    "FuncCodec",
    "LoadFailed",
    "NextUse",
    "PickleCodec",
    "Policy",
    "SizeAware",
    "SpillEngine",
    "SpillError",
    "SpillWarning",
    "Stats",
    "UnreadableKey",
    "__version__",
    "format_bytes",
    "make_policy",
    "memoize",
    "parse_bytes",
    "policy_names",
    "register_policy",
]
