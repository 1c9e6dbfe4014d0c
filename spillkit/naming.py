"""File names for keys: readable when the key is a plain identifier, hashed otherwise.

Pure helpers that know nothing of caches. A name never contains a path
separator, never starts with a dot (those are reserved for temporary files and
metadata), and the caller makes names injective by checking for collisions.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Hashable

from .keys import spell_key

__all__ = ["candidate_name", "is_own_temporary", "is_reserved"]

# Plain identifiers like the original chest's 'one', 'two'; never '.', '..' or
# hidden, never long enough to hit NAME_MAX.
_READABLE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}\Z")
HASHED_PREFIX = "%"
# The temporary names spillkit gives (spillkit.storage, spares, blanks, security; any name under the
# manifest's; .tmp-<pid>-s<n>, the spares of versions before 2026-11-27), and no others: a crash's
# leftovers are removed by name, so a user's own ".tmp-notes" must not match.
_OWN_TEMPORARY = re.compile(
    r"\.tmp-(?:\d+-\d+|\d+-s[0-9a-f]{8}-b?\d+|\d+-s\d+|key-\d+-[0-9a-f]{8})\Z"
    r"|\.spillkit-manifest\.tmp-"
)


def candidate_name(key: Hashable, attempt: int = 0) -> str:
    """Return the file name to try for ``key`` on the given collision ``attempt``.

    >>> candidate_name("one")
    'one'
    >>> candidate_name("../x").startswith("%")
    True
    """
    if attempt == 0 and type(key) is str and _READABLE.match(key):
        return key
    digest = hashlib.blake2b(
        f"{type(key).__module__}.{type(key).__qualname__}:{spell_key(key)}".encode("utf-8", "surrogatepass"),
        digest_size=16,
    ).hexdigest()
    return f"{HASHED_PREFIX}{digest}" + (f"-{attempt}" if attempt else "")


def is_reserved(name: str) -> bool:
    """True for names spillkit keeps for itself (temporary files, manifest, keys)."""
    return name.startswith(".")


def is_own_temporary(name: str) -> bool:
    """True for the name of a temporary file that spillkit writes (a write, a spare, a blank, a key, a manifest).

    >>> is_own_temporary(".tmp-4242-17"), is_own_temporary(".tmp-draft.txt")
    (True, False)
    """
    return _OWN_TEMPORARY.match(name) is not None
