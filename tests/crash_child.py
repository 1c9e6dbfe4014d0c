"""The child process of ``tests/test_crash.py``: it works on a persistent Chest until it is killed.

Run as ``python crash_child.py serve``: a fork server that pays for the imports once, then for
each JSON config line on stdin forks a worker and answers with its pid (the test kills workers
with SIGKILL; the kernel reaps them). A worker writes a log of JSON lines, each with
one ``os.write`` on an ``O_APPEND`` descriptor followed by ``fsync``, and always *after*
the thing it reports has happened, except ``begin``, which is written *before* a flush:

- ``{"ev": "ready"}`` once the Chest is open;
- ``{"ev": "begin", "n": n, "state": {...}}`` just before ``flush()`` number ``n``, with the
  contents that flush is about to commit (key index -> [version, size]);
- ``{"ev": "done", "n": n}`` after that ``flush()`` returned;
- ``{"ev": "pause", "k": k, "call": name, "commits": c}`` (pause mode) before the k-th
  mutating system call, after ``c`` manifests were committed; the child then waits to be killed;
- ``{"ev": "end", "calls": total}`` when it finishes without being killed.

Values are made from (key index, version, size) by :func:`make_value`, so the parent can
rebuild the value any logged state holds and compare it exactly. With ``"packed": true`` in
the config, the Chest packs small values into segments (:func:`open_chest`), and the scripted
mode runs :func:`packed_story`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import sys
import time
import traceback
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

OUT_OF_BAND = 64 * 1024  # values this large are numpy arrays, pickled out of band (several frames)
State = dict[int, tuple[int, int]]  # key index -> (version, size)


def key_of(i: int) -> Hashable:
    """Readable names (``k1``) and hashed ones (tuples): both naming paths of the store."""
    return ("t", i) if i % 3 == 0 else f"k{i}"


def make_value(i: int, version: int, size: int) -> Any:
    seed = hashlib.blake2b(f"{i}:{version}:{size}".encode(), digest_size=32).digest()
    payload = (seed * (size // 32 + 1))[:size]
    if size >= OUT_OF_BAND:
        return np.frombuffer(payload, dtype=np.uint8).copy()
    return (i, version, payload)


def value_size(value: Any) -> int:
    return int(value.nbytes) if isinstance(value, np.ndarray) else len(value[2]) + 64


def same_value(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return type(a) is type(b) and a.dtype == b.dtype and bool(np.array_equal(a, b))
    return type(a) is type(b) and bool(a == b)


def state_to_json(state: State) -> dict[str, list[int]]:
    return {str(i): list(vs) for i, vs in sorted(state.items())}


def state_from_json(raw: dict[str, list[int]]) -> State:
    return {int(i): (vs[0], vs[1]) for i, vs in raw.items()}


class Log:
    def __init__(self, path: str, write: Callable[[int, bytes], int], fsync: Callable[[int], None]) -> None:
        self._write, self._fsync = write, fsync  # the real calls, never the counted ones
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def __call__(self, **record: Any) -> None:
        self._write(self.fd, (json.dumps(record) + "\n").encode())
        self._fsync(self.fd)


class PausePoints:
    """Counts the mutating system calls spillkit makes; before the ``pause_at``-th one it
    writes part of the data (for writes), logs, and sleeps until the parent kills it."""

    def __init__(self, log: Log, pause_at: int | None) -> None:
        self.log, self.pause_at, self.calls, self.commits = log, pause_at, 0, 0
        self.real: dict[str, Any] = {}

    def install(self) -> None:
        for name in ("open", "write", "writev", "pwrite", "ftruncate", "fsync", "replace", "rename", "unlink"):
            self.real[name] = getattr(os, name)
            setattr(os, name, self._wrap(name))

    def _wrap(self, name: str) -> Callable[..., Any]:
        real = self.real[name]

        def call(*args: Any, **kwargs: Any) -> Any:
            if name == "open" and not (args[1] & os.O_CREAT):
                return real(*args, **kwargs)  # opening to read or to fsync changes nothing
            self.calls += 1
            if self.calls == self.pause_at:
                self._half_write(name, args)
                self.log(ev="pause", k=self.calls, call=name, commits=self.commits)
                time.sleep(120)
                os._exit(4)  # never reached when the parent kills us
            result = real(*args, **kwargs)
            if name == "replace" and os.path.basename(args[1]) == ".spillkit-manifest":
                self.commits += 1
            return result

        return call

    def _half_write(self, name: str, args: tuple[Any, ...]) -> None:
        """Die in the middle of a write: half of the bytes reach the file."""
        if name == "write":
            self.real["write"](args[0], bytes(args[1])[: len(args[1]) // 2])
        elif name == "pwrite":  # a segment append (or the reserve's zeros)
            self.real["pwrite"](args[0], bytes(args[1])[: len(args[1]) // 2], args[2])
        elif name == "writev":
            views = [memoryview(b).cast("B") for b in args[1]]
            left = sum(v.nbytes for v in views) // 2
            for view in views:
                if left <= 0:
                    break
                self.real["write"](args[0], view[:left])
                left -= view.nbytes


def open_chest(path: str, budget: int, packed: bool = False) -> Any:
    """A file per value, or (``packed``) the default packing, with small segments that rotate and compact often."""
    import spillkit.blanks
    import spillkit.segindex
    from spillkit import Chest

    # (this worker only) no blank files made ahead: the calls a story makes, which the pause points count,
    # would depend on whether the blank-making thread was done; test_blanks checks a crash with blanks.
    spillkit.blanks.AHEAD = 0
    if not packed:
        return Chest(path=path, available_memory=budget, sizeof=value_size, pack_threshold=0)
    spillkit.segindex._SEAL_DEAD = 4096  # (this worker only) a few dead records seal the active segment
    chest = Chest(path=path, available_memory=budget, sizeof=value_size)
    chest._store.segment_bytes = 16 * 1024
    return chest


def random_work(cfg: dict[str, Any], log: Log) -> None:
    """Random sets, overwrites, deletes, reads and flushes until killed (or 30 s pass)."""
    rng = random.Random(cfg["seed"])
    state = state_from_json(cfg["state"])
    chest = open_chest(cfg["path"], cfg["budget"], cfg.get("packed", False))
    n, counter = cfg["flushes"], 0
    log(ev="ready")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = rng.random()
        if r < cfg["p_set"] or not state:
            i = rng.randrange(cfg["keys"])
            counter += 1
            version, size = cfg["generation"] * 10**6 + counter, rng.choice(cfg["sizes"])
            chest[key_of(i)] = make_value(i, version, size)
            state[i] = (version, size)
        elif r < cfg["p_set"] + 0.15:
            i = rng.choice(sorted(state))
            if rng.random() < 0.5:
                del chest[key_of(i)]
            else:
                chest.pop(key_of(i))
            del state[i]
        elif r < 1 - cfg["p_flush"]:
            i = rng.choice(sorted(state))
            if not same_value(chest[key_of(i)], make_value(i, *state[i])):
                log(ev="wrong", i=i)
                os._exit(2)
        else:
            n += 1
            log(ev="begin", n=n, state=state_to_json(state))
            chest.flush()
            log(ev="done", n=n)
    log(ev="end", calls=0)


def scripted_work(cfg: dict[str, Any], log: Log, points: PausePoints) -> None:
    """A fixed story that touches every path of the disk tier (``packed``: of packed records and files)."""
    chest = open_chest(cfg["path"], 2000 if cfg.get("packed") else 8 * 1024, cfg.get("packed", False))
    state: State = {}

    def put(i: int, version: int, size: int) -> None:
        chest[key_of(i)] = make_value(i, version, size)
        state[i] = (version, size)

    def flush(n: int) -> None:
        log(ev="begin", n=n, state=state_to_json(state))
        chest.flush()
        log(ev="done", n=n)

    points.install()
    if cfg.get("packed"):
        packed_story(chest, put, flush, state)
        log(ev="end", calls=points.calls, compactions=chest._store.compactions)
        return
    for i in range(8):
        put(i, 1, 1500)  # a few stay in memory, the rest spill
    put(8, 1, 200_000)  # larger than the budget: written straight to disk
    flush(1)
    chest[key_of(0)]  # loaded back: its flushed file is kept
    put(1, 2, 1500)  # overwrites of flushed keys, resident or spilled
    put(4, 2, 1700)
    put(8, 2, 300_000)  # a long write straight to disk, over a flushed file
    del chest[key_of(2)]  # deletes of flushed keys
    chest.pop(key_of(3))
    del state[2], state[3]
    for i in (9, 10, 11):
        put(i, 2, 1500)  # new keys, spilled before any flush holds them
    put(9, 3, 1600)  # an overwrite of a file no flush holds
    del chest[key_of(10)]
    del state[10]
    put(2, 3, 1500)  # a deleted flushed key comes back
    flush(2)
    log(ev="end", calls=points.calls)


def packed_story(chest: Any, put: Callable[[int, int, int], None], flush: Callable[[int], None], state: State) -> None:
    """Three flushes of packed records and files: keys change size class, segments are sealed and compacted.

    The budget holds one small value, so each put of another key spills the one held.
    """
    for i in range(6):
        put(i, 1, (1500, 20_000, 100_000)[i % 3])  # packed records (two segments) and files
    flush(1)
    put(0, 2, 100_000)  # packed -> a file; the flushed record stays in its pinned segment
    put(2, 2, 1500)  # a file -> packed; the flushed file stays (copy-on-write)
    put(1, 2, 1600)  # a packed overwrite of a flushed packed key
    for version in range(3, 7):  # a new key overwritten: records dead past the pin seal the active segment
        put(6, version, 1500)
        put(9, version, 1500)
    del chest[key_of(3)]  # a flushed packed record dies
    del state[3]
    flush(2)  # compacts the mostly dead pinned segments, then unlinks what only flush 1 needed
    put(7, 3, 300_000)  # a file no flush names, large enough to be kept as a spare...
    put(7, 4, 1500)  # ... when a packed value replaces it
    put(8, 4, 280_000)  # written over the spare, cut to its length
    put(0, 4, 1500)  # a file -> packed again
    del chest[key_of(9)]
    del state[9]
    flush(3)


def work(cfg: dict[str, Any]) -> None:
    log = Log(cfg["log"], os.write, os.fsync)
    if cfg["mode"] == "random":
        random_work(cfg, log)
    else:
        scripted_work(cfg, log, PausePoints(log, cfg.get("pause_at")))


def serve() -> None:
    """Fork a worker for each config line on stdin and answer with its pid."""
    import spillkit  # noqa: F401  (imported once here, not in every worker)

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # killed workers are reaped by the kernel
    for line in sys.stdin:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                work(json.loads(line))
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)  # never return into the server's loop
        print(pid, flush=True)


if __name__ == "__main__":
    serve()
