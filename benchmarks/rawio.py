"""Raw file I/O, the yardstick the benchmarks hold spilling against: plain write() and readinto(), nothing else."""

from __future__ import annotations

__all__ = ["read_into", "write_whole"]


def write_whole(path: str, view: memoryview) -> None:
    """Write every byte of ``view`` to a new file at ``path`` (unbuffered; no fsync)."""
    with open(path, "wb", buffering=0) as f:
        while view:
            view = view[f.write(view) :]


def read_into(path: str, view: memoryview) -> None:
    """Fill ``view`` from the file at ``path``; raise EOFError if the file is shorter."""
    with open(path, "rb", buffering=0) as f:
        while view:
            n = f.readinto(view)
            if not n:
                raise EOFError(path)
            view = view[n:]
