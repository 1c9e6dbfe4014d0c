"""Resource faults: the disk says no (ENOSPC, EIO) at every operation, the codec raises,
the size estimate is off by 10x, and a real filesystem fills up.

Faults are injected by replacing ``os`` and ``open`` in every spillkit module that does disk I/O
(storage, manifest, chest, the manifest's reserve, and the packed tier's segments, segfiles and
compaction) with a proxy that forwards every call to the real function, except that one kind of
disk operation fails from its N-th call on, until the fault is cleared. Everything else is the
real disk under ``tmp_path``.
Each test runs twice where the operation exists on both paths: with a file per value
(``pack_threshold=0``) and with the default packing, where small values are records in segment
files (made one record per segment here, so that every spill creates a file and every delete
unlinks one, as on the file path; shared segments and compaction have tests of their own).

Every test checks the error the caller saw (none, for an eviction), that every value reads back
equal to a reference dict, that the byte accounting matches the files really in the directory
(and no descriptor is left open on them), and that everything works again once the fault clears.
Every test also checks that its fault really fired, so a refactor that moves the I/O out of reach
of the proxy fails here instead of passing without testing anything.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import DISK_IO_MODULES

import spillkit.filereads
import spillkit.manifest
import spillkit.segments
import spillkit.storage
from spillkit import Chest, DiskQuotaExceeded, PickleCodec, SpillError, SpillWarning
from spillkit.events import SPILL_ERROR
from spillkit.manifest import read_manifest
from spillkit.segfiles import is_segment_name

UNIT = 100  # every value weighs this much unless a test says otherwise
BUDGET = 2.5 * UNIT  # two values in memory
CODES = {"ENOSPC": errno.ENOSPC, "EIO": errno.EIO}
# Keys with readable file names and keys with hashed ones (whose path does not show the key).
KEYS: list[Hashable] = ["k0", ("t", 1), "k2", ("t", 3), "k4", "k5"]


def unit_sizeof(value: Any) -> int:
    return UNIT


def payload(i: int, n: int = 50) -> bytes:
    """A distinct bytes object per ``i``."""
    return bytes([i % 256]) * n + str(i).encode()


# ---- the fault injector -----------------------------------------------------------------------


class DiskFault:
    """One kind of disk operation fails with ``code`` from its ``nth`` call on (1-based) while armed.

    ``op`` is one of: ``create`` (os.open with O_CREAT), ``write`` (os.write/writev/pwrite),
    ``fsync``, ``replace`` (os.replace/rename), ``open`` (opening a file, not a directory, to
    read: ``open`` or os.open with O_RDONLY), ``read`` (readinto/read on a file opened to read,
    os.pread, os.read), ``unlink``, ``allocate`` (os.posix_fallocate, which the reserve file uses).
    """

    def __init__(self, op: str, code: int, nth: int = 1) -> None:
        self.op = op
        self.code = code
        self.nth = nth
        self.armed = True
        self.calls = 0
        self.failures = 0

    def check(self, op: str, target: object = None) -> None:
        if op != self.op or not self.armed:
            return
        self.calls += 1
        if self.calls >= self.nth:
            self.failures += 1
            if isinstance(target, (str, bytes, os.PathLike)):
                raise OSError(self.code, os.strerror(self.code), target)
            raise OSError(self.code, os.strerror(self.code))

    def clear(self) -> None:
        self.armed = False

    def open_file(self, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        """Stands in for the builtin ``open`` in spillkit's modules."""
        if any(c in mode for c in "wax+"):
            return builtins.open(file, mode, *args, **kwargs)
        self.check("open", file)
        return _FaultyReader(builtins.open(file, mode, *args, **kwargs), self)


class _FaultyReader:
    """A real file opened for reading whose reads go through the fault first."""

    def __init__(self, inner: Any, fault: DiskFault) -> None:
        self._inner = inner
        self._fault = fault

    def __enter__(self) -> _FaultyReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def readinto(self, buffer: Any) -> Any:
        self._fault.check("read", self._inner.name)
        return self._inner.readinto(buffer)

    def read(self, *args: Any) -> Any:
        self._fault.check("read", self._inner.name)
        return self._inner.read(*args)


class _FaultyOS:
    """The ``os`` module as spillkit sees it: every call forwarded, after the fault had its say."""

    def __init__(self, fault: DiskFault) -> None:
        self._fault = fault

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def open(self, path: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
        if flags & os.O_CREAT:
            self._fault.check("create", path)
        elif flags & os.O_ACCMODE == os.O_RDONLY and not os.path.isdir(path):  # a segment, re-opened
            self._fault.check("open", path)
        return os.open(path, flags, mode, **kwargs)

    def pwrite(self, fd: int, data: Any, offset: int) -> int:
        try:
            self._fault.check("write")
        except OSError:
            view = memoryview(data)
            os.pwrite(fd, view[: len(view) // 2], offset)  # part lands, then the error
            raise
        return os.pwrite(fd, data, offset)

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        self._fault.check("read")
        return os.pread(fd, length, offset)

    def read(self, fd: int, length: int) -> bytes:
        self._fault.check("read")
        return os.read(fd, length)

    def writev(self, fd: int, buffers: Any) -> int:
        self._fail_after_half_a_write(fd, bytes(memoryview(buffers[0]).cast("B")) if buffers else b"")
        return os.writev(fd, buffers)

    def write(self, fd: int, data: Any) -> int:
        self._fail_after_half_a_write(fd, bytes(data))
        return os.write(fd, data)

    def _fail_after_half_a_write(self, fd: int, first: bytes) -> None:
        try:
            self._fault.check("write")
        except OSError:
            os.write(fd, first[: len(first) // 2])  # as a filling disk does: part lands, then the error
            raise

    def fsync(self, fd: int) -> None:
        self._fault.check("fsync")
        os.fsync(fd)

    def posix_fallocate(self, fd: int, offset: int, length: int) -> None:
        self._fault.check("allocate")
        os.posix_fallocate(fd, offset, length)

    def fdatasync(self, fd: int) -> None:
        self._fault.check("fsync")
        os.fdatasync(fd)

    def replace(self, src: Any, dst: Any, **kwargs: Any) -> None:
        self._fault.check("replace", src)
        os.replace(src, dst, **kwargs)

    def rename(self, src: Any, dst: Any, **kwargs: Any) -> None:
        self._fault.check("replace", src)
        os.rename(src, dst, **kwargs)

    def unlink(self, path: Any, **kwargs: Any) -> None:
        self._fault.check("unlink", path)
        os.unlink(path, **kwargs)

    remove = unlink


MODULES = DISK_IO_MODULES  # every module that does spill I/O (the guard test below checks it)
OPENERS = (spillkit.storage, spillkit.filereads, spillkit.manifest)  # the modules that call the builtin ``open``
PACKED = "packed"
FILES = "files"
MODES = (FILES, PACKED)


class Lab:
    """Chests under ``tmp_path`` and the faults aimed at them; cleans both up.

    ``mode`` is ``"files"`` (a file per value) or ``"packed"`` (the default packing; one record per
    segment file unless ``segment_bytes`` says otherwise).
    """

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str = FILES) -> None:
        self.tmp_path = tmp_path
        self.monkeypatch = monkeypatch
        self.mode = mode
        self.chests: list[Chest] = []
        self.faults: list[DiskFault] = []

    @property
    def packed(self) -> bool:
        return self.mode == PACKED

    def chest(self, segment_bytes: int = 1, **kwargs: Any) -> Chest:
        kwargs.setdefault("path", self.tmp_path / "chest")
        kwargs.setdefault("available_memory", BUDGET)
        kwargs.setdefault("sizeof", unit_sizeof)
        kwargs.setdefault("pack_threshold", None if self.packed else 0)
        chest = Chest(**kwargs)
        chest._store.segment_bytes = segment_bytes  # 1: a segment file per record (no setting for it)
        self.chests.append(chest)
        return chest

    def filled(self, **kwargs: Any) -> tuple[Chest, dict[Hashable, Any]]:
        """A Chest holding KEYS: the last two in memory, the others spilled."""
        chest = self.chest(**kwargs)
        expected = {key: payload(i) for i, key in enumerate(KEYS)}
        chest.update(expected)
        assert set(chest.inmem) == {"k4", "k5"}
        return chest, expected

    def fault(self, op: str, code: int, nth: int = 1) -> DiskFault:
        fault = DiskFault(op, code, nth)
        proxy = _FaultyOS(fault)
        for module in MODULES:
            self.monkeypatch.setattr(module, "os", proxy)
        for module in OPENERS:
            self.monkeypatch.setattr(module, "open", fault.open_file, raising=False)
        self.faults.append(fault)
        return fault

    def close(self) -> None:
        for fault in self.faults:
            fault.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for chest in self.chests:
                chest.drop()


@pytest.fixture(params=MODES)
def lab(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    """A Lab for each mode; a test parametrizes ``lab`` itself (indirectly) where a mode does not apply."""
    made = Lab(tmp_path, monkeypatch, request.param)
    yield made
    made.close()


def test_every_module_that_calls_os_is_under_the_fault_injector() -> None:
    """A new module doing disk I/O must join MODULES, or its faults would go untested."""
    root = Path(spillkit.__file__).parent
    doing_io = set()
    for source in root.glob("*.py"):
        text = source.read_text()
        calls = ("open", "pwrite", "pread", "read", "write", "writev", "fsync", "unlink", "listdir", "scandir")
        if any(f"os.{call}(" in text for call in calls):
            doing_io.add(source.stem)
    covered = {module.__name__.rpartition(".")[2] for module in MODULES}
    # the key file, temporary directories (mapped: removing one a fork may still map) and the lock file
    # (tests/test_dir_lock.py), not spill data; the blank files made ahead on a thread of their own, whose
    # faults are silent by design (tests/test_blanks.py); files a user names to a command (inputfiles)
    others = {"security", "tempdirs", "mapped", "dirlock", "lockfiles", "blanks", "inputfiles"}
    assert doing_io - others <= covered, doing_io - others - covered


# ---- checks shared by every test -------------------------------------------------------------


def spill_files(path: str) -> dict[str, int]:
    """Files of their own (names never start with a dot) and segment files, with their sizes."""
    return {
        n: os.path.getsize(os.path.join(path, n))
        for n in os.listdir(path)
        if not n.startswith(".") or is_segment_name(n)
    }


def temp_files(path: str) -> list[str]:
    return [n for n in os.listdir(path) if ".tmp-" in n]


def open_descriptors(path: str) -> set[int]:
    """This process's file descriptors on files under ``path`` (removed ones included)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the descriptor listdir itself used is gone by now
            if os.readlink(f"/proc/self/fd/{fd}").startswith(path + os.sep):
                found.add(int(fd))
    return found


def assert_accounting(chest: Chest, may_remain: frozenset[str] = frozenset()) -> None:
    """Byte counters equal what is really held, to the byte; no temporary file or descriptor is left.

    ``may_remain`` names files a failed unlink left behind: on disk, but no key's. Segment files
    are exactly the store's (one kept after a failed unlink is still the store's: it retries).
    """
    sizeof = chest.engine.sizeof
    by_id = {id(v): int(sizeof(v)) for v in chest.inmem.values()}
    assert chest.memory_bytes == sum(by_id.values())
    store = chest._store
    own = store.inner.names()  # the keys with files of their own
    files = spill_files(chest.path)
    segments = {name: size for name, size in files.items() if is_segment_name(name)}
    assert set(own.values()) <= set(files)
    assert set(files) - set(own.values()) - set(segments) <= may_remain
    assert set(segments) == set(store.segment_files())
    for key, name in own.items():
        assert store.file_bytes(key) == files[name], key
    for key in set(store) - set(own):  # packed: the record lies inside its segment file
        segment, offset = store.location(key)
        assert segment is not None, key
        assert offset + store.file_bytes(key) <= segments[segment], key
    assert chest.disk_bytes == sum(files[name] for name in own.values()) + sum(segments.values())
    spilled = chest.engine.spilled_keys
    assert set(spilled).isdisjoint(chest.inmem)
    assert set(chest.inmem) | set(store) == set(chest)
    assert chest.spilled_total == (sum(chest.engine.nbytes(k) for k in spilled), chest.disk_bytes)
    assert temp_files(chest.path) == []
    held = {s.fd for s in [*store._segments.values(), *store._retired, chest._dir_lock] if s.fd >= 0}
    assert open_descriptors(chest.path) == held  # no descriptor leaked, none closed under a segment in use


def assert_values(chest: Chest, expected: dict[Hashable, Any]) -> None:
    assert set(chest) == set(expected)
    for key, value in expected.items():
        assert chest[key] == value, key


@contextlib.contextmanager
def spill_warnings() -> Iterator[list[str]]:
    """Collect the SpillWarning messages raised inside the block (filled in when it ends)."""
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        yield messages
    messages.extend(str(w.message) for w in record if issubclass(w.category, SpillWarning))


def errno_in_chain(error: BaseException | None) -> int | None:
    """The errno of the first OSError in ``error``'s cause/context chain."""
    while error is not None:
        if isinstance(error, OSError):
            return error.errno
        error = error.__cause__ or error.__context__
    return None


def names_key(error: BaseException, key: Hashable) -> bool:
    return repr(key) in str(error) + "".join(getattr(error, "__notes__", []))


def assert_recovers(
    chest: Chest, expected: dict[Hashable, Any], may_remain: frozenset[str] = frozenset(), **reopen: Any
) -> None:
    """With the fault cleared: spills, loads, flush and close work, and a reopen gives back every value."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpillWarning)  # no failure is left over
        if not chest.closed:
            writes = chest.stats.disk_writes
            for i in range(4):
                chest[f"after{i}"] = expected[f"after{i}"] = payload(100 + i)
            assert chest.memory_bytes <= chest.available_memory  # every value held back is spilled now
            assert_values(chest, expected)
            chest.flush()
            assert chest.stats.disk_writes > writes  # the new values were written, by a spill or the flush
            assert_accounting(chest, may_remain)
            chest.close()
        reopen.setdefault("available_memory", BUDGET)
        reopen.setdefault("sizeof", unit_sizeof)
        reopen.setdefault("pack_threshold", chest._store.pack_threshold)
        again = Chest(path=chest.path, **reopen)
        try:
            assert_values(again, expected)
            assert_accounting(again, may_remain)
        finally:
            again.drop()


# ---- (a) an eviction fails: the caller that triggered it is not told -----------------------------

# The disk operations each mode's spill makes: the packed path appends (no file is moved into place).
SPILL_OPS = {FILES: ("create", "write", "replace"), PACKED: ("create", "write")}
EVICTION_CASES = [
    pytest.param(mode, op, code, trigger, nth, id=f"{mode}-{op}-{name}-{trigger}-{nth}")
    for mode in MODES
    for op in SPILL_OPS[mode]
    for name, code in CODES.items()
    for trigger, nth in (("put", 1), ("put", 3), ("get", 1), ("evict", 1))
]


@pytest.mark.parametrize(("lab", "op", "code", "trigger", "nth"), EVICTION_CASES, indirect=["lab"])
def test_a_failed_eviction_keeps_the_victim_in_memory_and_the_callers_operation_succeeds(
    lab: Lab, op: str, code: int, trigger: str, nth: int
) -> None:
    chest, expected = lab.filled()
    fault = lab.fault(op, code, nth)
    victims: list[Hashable] = []  # the keys whose write failed, in order (a listener is told each)
    chest.add_listener(lambda event: victims.append(event.key) if event.kind == SPILL_ERROR else None)
    with spill_warnings() as messages:
        for i in range(4):
            failures = chest.stats.spill_failures
            if trigger == "put":
                chest[f"new{i}"] = expected[f"new{i}"] = payload(50 + i)  # raises nothing
            elif trigger == "get":
                key = next(k for k in KEYS if k not in chest.inmem)
                assert chest[key] == expected[key]  # a load that must make room
            else:
                freed = chest.evict()
                assert freed == (-1 if chest.stats.spill_failures > failures else UNIT)
            assert len(victims) == chest.stats.spill_failures
            for victim in victims[failures:]:
                assert victim in chest.inmem  # the value stays where it was
                assert victim not in chest._store
    assert fault.failures > 0
    assert chest.stats.spill_failures == fault.failures == len(messages)
    assert chest.stats.unspillable == 0  # a disk error is not the value's fault: it will be retried
    for victim, message in zip(victims, messages, strict=True):
        assert f"value for key {victim!r}" in message
        assert "disk write failed" in message
        assert os.strerror(code) in message
    if trigger == "put":
        assert chest.memory_bytes > chest.available_memory  # allowed while the disk fails
    elif trigger == "get":
        assert chest.memory_bytes <= chest.available_memory  # a read that made no room is served, not held
    assert_accounting(chest)
    with spill_warnings():  # reading everything back needs room the failing disk cannot give
        assert_values(chest, expected)
    assert chest.stats.spill_failures == fault.failures
    assert_accounting(chest)

    fault.clear()
    assert_recovers(chest, expected)


# ---- (b) a load fails: the caller is told, the key stays ----------------------------------------


# A packed record is read from its segment's descriptor, opened once: a load opens nothing.
LOAD_CASES = [(FILES, "open"), (FILES, "read"), (PACKED, "read")]


@pytest.mark.parametrize("nth", [1, 2])
@pytest.mark.parametrize("code", CODES.values(), ids=CODES)
@pytest.mark.parametrize(("lab", "op"), LOAD_CASES, indirect=["lab"], ids="-".join)
def test_a_failed_load_raises_and_the_key_stays(lab: Lab, op: str, code: int, nth: int) -> None:
    chest, expected = lab.filled()
    spilled = [k for k in KEYS if k not in chest.inmem]
    fault = lab.fault(op, code, nth)
    failed: list[Hashable] = []
    with spill_warnings() as messages:
        for key in [*spilled, *spilled]:  # a key that failed once fails again while the fault lasts
            resident = key in chest.inmem
            try:
                value = chest[key]
            except OSError as error:
                assert not resident  # values in memory are served as ever
                assert error.errno == code
                failed.append(key)
            else:
                assert value == expected[key]
    assert messages == []
    assert fault.failures == len(failed) > 0
    assert chest.stats.load_failures == len(failed)
    assert len(set(failed)) < len(failed)  # some key failed twice
    for key in failed:
        assert key in chest
        assert key in chest._store
        assert key not in chest.inmem
    assert_accounting(chest)

    fault.clear()
    for key in set(failed):
        assert chest[key] == expected[key]
    assert chest.stats.load_failures == len(failed)
    assert_values(chest, expected)
    assert_accounting(chest)
    assert_recovers(chest, expected)


@pytest.mark.parametrize(("lab", "op"), LOAD_CASES, indirect=["lab"], ids="-".join)
def test_a_failed_load_names_the_key(lab: Lab, op: str) -> None:
    chest, _ = lab.filled()
    lab.fault(op, errno.EIO)
    with pytest.raises(OSError) as info:
        chest[("t", 1)]
    assert names_key(info.value, ("t", 1))


# ---- (c) flush fails: the caller is told, nothing is lost -------------------------------------


FLUSH_CASES = [
    pytest.param(mode, op, code, nth, id=f"{mode}-{op}-{name}-{nth}")
    for mode in MODES
    for op in ("create", "write", "replace", "fsync")
    for name, code in CODES.items()
    for nth in (1, 3)
    if not (mode == PACKED and op == "replace" and nth > 1)  # packed, a flush replaces one file: the manifest
]


@pytest.mark.parametrize(("lab", "op", "code", "nth"), FLUSH_CASES, indirect=["lab"])
def test_a_failed_flush_raises_and_loses_nothing(lab: Lab, op: str, code: int, nth: int) -> None:
    chest, expected = lab.filled()
    chest.flush()  # a good manifest from before the fault
    before = set(chest)
    for i in range(3):
        chest[f"more{i}"] = expected[f"more{i}"] = payload(60 + i)
    fault = lab.fault(op, code, nth)
    with spill_warnings() as messages, pytest.raises((SpillError, OSError)) as info:
        chest.flush()
    assert messages == []
    assert fault.failures > 0
    assert errno_in_chain(info.value) == code
    if isinstance(info.value, SpillError):  # some values could not be written: it names them
        unwritten = [k for k in chest.inmem if k not in chest._store]
        assert unwritten
        for key in unwritten:
            assert repr(key) in str(info.value)
    assert not chest.closed
    with spill_warnings():  # reading everything back needs room; a failing write cannot make it
        assert_values(chest, expected)
    assert_accounting(chest)
    fault.clear()
    # The manifest was replaced atomically or not at all: it names the old keys, or every file.
    # (Read directly: a second Chest on a live directory would remove the first one's unflushed
    # files as a killed process's leftovers.)
    flushed = read_manifest(chest.path, chest._secret) or []
    assert {entry.key for entry in flushed} in (before, set(chest._store))
    assert_recovers(chest, expected)


def test_a_failed_flush_write_is_counted(lab: Lab) -> None:
    chest, _ = lab.filled()
    lab.fault("write", errno.ENOSPC)
    with pytest.raises((SpillError, OSError)):
        chest.flush()
    assert chest.stats.spill_failures > 0


def test_a_disk_that_refuses_writes_is_no_unwritable_value_in_a_trace(lab: Lab, tmp_path: Path) -> None:
    # helper-122: only the value's own fault (pickle refused it) makes a trace's "unwritable" line: a full
    # disk keeps values in memory too, but a replay, with another budget or policy, may well write them.
    from spillkit.trace import TraceRecorder, read_trace

    chest, _ = lab.filled()
    details: list[str] = []
    chest.add_listener(lambda event: details.append(event.detail) if event.kind == SPILL_ERROR else None)
    with TraceRecorder(tmp_path / "t.trace", {"workload": "full disk"}, chest=chest):
        lab.fault("write", errno.ENOSPC)
        with spill_warnings():
            for i in range(6):
                chest[f"more{i}"] = payload(100 + i)
    assert details and set(details) == {"OSError"}
    assert not [op for op in read_trace(tmp_path / "t.trace").ops if op[0] == "unwritable"]


# ---- packed: shared segments and their compaction --------------------------------------------


def record_bytes(key: str, value: Any) -> int:
    """The size of ``value``'s record under ``key`` in a packed store."""
    probe = spillkit.segments.PackedStore(tempfile.mkdtemp(), PickleCodec())
    try:
        return probe.write(key, value)
    finally:
        probe.close()
        shutil.rmtree(probe.path)


COMPACTION_CASES = [
    pytest.param(PACKED, flushed, op, code, nth, id=f"{'pinned' if flushed else 'unpinned'}-{op}-{name}-{nth}")
    for flushed in (False, True)
    # fsync only in a flush; a flush compacts the segments its predecessor pinned
    for op in ("create", "write", "read", "unlink", *(("fsync",) if flushed else ()))
    for name, code in CODES.items()
    for nth in (1, 2)
]


@pytest.mark.parametrize(("lab", "flushed", "op", "code", "nth"), COMPACTION_CASES, indirect=["lab"])
def test_a_fault_during_compaction_leaves_every_record_readable(
    lab: Lab, flushed: bool, op: str, code: int, nth: int
) -> None:
    """Segments of four records become mostly dead and are compacted while the disk fails.

    Deletes and puts never raise (a put's spill that fails keeps the value in memory); a compaction
    that fails leaves each record in one place or the other, and warns. ``flushed``: the segments
    are pinned by a flush first, so they are compacted by the next flush, also under the fault.
    """
    value = payload(0)  # every value the same size, so that segments hold exactly four records
    chest = lab.chest(segment_bytes=4 * record_bytes("c00", value))
    expected: dict[Hashable, Any] = {f"c{i:02}": payload(i) for i in range(10, 34)}
    chest.update(expected)
    store = chest._store
    assert len(store.segment_files()) >= 5
    if flushed:
        chest.flush()
    before = {entry.key for entry in read_manifest(chest.path, chest._secret) or []}
    fault = lab.fault(op, code, nth)
    with spill_warnings() as messages:
        for i, key in enumerate(sorted(expected)):
            if i % 4 != 3 and key not in chest.inmem:
                del chest[key]
                del expected[key]
            if i % 6 == 0:
                chest[f"n{i:02}"] = expected[f"n{i:02}"] = payload(40 + i)  # appended to the active segment
        raised: list[BaseException] = []
        if flushed:
            try:
                chest.flush()
            except (SpillError, OSError) as error:
                assert errno_in_chain(error) == code
                raised.append(error)
    assert fault.failures > 0
    # Every failure was told: each failed copy or unlink warns, and a flush raises what it could not do.
    assert len(messages) + len(raised) >= (fault.failures if op in ("read", "unlink") else 1)
    assert all(os.strerror(code) in message for message in messages)
    assert_accounting(chest)
    fault.clear()  # before reading: a read fault would fail the loads themselves (tested above)
    flushed_keys = {entry.key for entry in read_manifest(chest.path, chest._secret) or []}
    assert flushed_keys in (before, set(store))  # the manifest was replaced whole, or not at all
    assert_values(chest, expected)
    assert_accounting(chest)
    assert_recovers(chest, expected)


# ---- (d) delete and overwrite ----------------------------------------------------------------


@pytest.mark.parametrize("code", CODES.values(), ids=CODES)
@pytest.mark.parametrize("how", ["delete", "pop", "overwrite"])
def test_a_failed_unlink_warns_that_a_file_was_left_and_the_key_is_gone(lab: Lab, how: str, code: int) -> None:
    """Packed, the file is the victim's segment (its only record): the store keeps it and tries again."""
    chest, expected = lab.filled()
    victim = ("t", 1)
    left = os.path.basename(chest._store.filename(victim))
    fault = lab.fault("unlink", code)
    with spill_warnings() as messages:
        if how == "delete":
            del chest[victim]
            del expected[victim]
        elif how == "pop":
            assert chest.pop(victim) == expected.pop(victim)
        else:
            chest[victim] = expected[victim] = "new value"
    assert fault.failures == 1
    assert len(messages) == 1
    if lab.packed:
        assert f"could not remove segment {left!r}" in messages[0]
        assert left in chest._store.segment_files()  # still the store's: counted, and unlinked at the next flush
        may_remain: frozenset[str] = frozenset()
    else:
        assert f"could not remove the spill file of {victim!r}" in messages[0]
        may_remain = frozenset({left})
    assert os.strerror(code) in messages[0]
    assert (victim in chest) is (how == "overwrite")
    assert os.path.exists(os.path.join(chest.path, left))  # the file the warning is about
    assert_accounting(chest, may_remain)  # disk_bytes counts only files that hold a key, and segments
    with spill_warnings():
        assert_values(chest, expected)
    fault.clear()
    assert_recovers(chest, expected, may_remain)


def test_a_file_left_by_a_failed_unlink_is_removed_once_the_disk_works(lab: Lab) -> None:
    chest, _ = lab.filled()
    left = os.path.basename(chest._store.filename(("t", 1)))  # packed: its segment, the only record in it
    fault = lab.fault("unlink", errno.EIO)
    with spill_warnings():
        del chest[("t", 1)]
    fault.clear()
    chest.flush()
    assert not os.path.exists(os.path.join(chest.path, left))


@pytest.mark.parametrize("code", CODES.values(), ids=CODES)
@pytest.mark.parametrize(
    ("lab", "op"), [(FILES, "create"), (FILES, "replace"), (PACKED, "create"), (PACKED, "write")], indirect=["lab"]
)
def test_a_failed_direct_write_raises_and_keeps_the_old_value(lab: Lab, op: str, code: int) -> None:
    large = payload(7, 10 * UNIT)
    chest, expected = lab.filled(sizeof=lambda v: 10 * UNIT if v is large else UNIT)
    fault = lab.fault(op, code)
    for target in (("t", 1), "k5", "new"):  # spilled, in memory, absent
        with pytest.raises(OSError) as info:
            chest[target] = large  # larger than the budget: it must go straight to disk
        assert info.value.errno == code
    assert fault.failures == 3
    assert chest.stats.spill_failures == 3
    assert "new" not in chest
    assert "k5" in chest.inmem
    assert_accounting(chest)
    with spill_warnings():
        assert_values(chest, expected)
    fault.clear()
    chest["new"] = expected["new"] = large
    assert "new" in chest._store
    assert_recovers(chest, expected, sizeof=lambda v: 10 * UNIT if v == large else UNIT)


# ---- (e) close of a persistent Chest ------------------------------------------------------------


@pytest.mark.parametrize("code", CODES.values(), ids=CODES)
@pytest.mark.parametrize("op", ["create", "write", "replace", "fsync"])
def test_a_close_that_fails_on_the_disk_keeps_the_chest_open(lab: Lab, op: str, code: int) -> None:
    chest, expected = lab.filled()
    fault = lab.fault(op, code)
    with spill_warnings() as messages, pytest.raises((SpillError, OSError)) as info:
        chest.close()
    assert messages == []
    assert fault.failures > 0
    assert errno_in_chain(info.value) == code
    assert "still open" in str(info.value) + "".join(getattr(info.value, "__notes__", []))
    assert not chest.closed  # nothing was dropped: the caller can retry, or read the values out
    with spill_warnings():
        assert_values(chest, expected)
    assert_accounting(chest)
    fault.clear()
    chest.close()
    assert chest.closed
    assert_recovers(chest, expected)


def test_a_close_that_cannot_serialize_a_value_still_closes(lab: Lab) -> None:
    chest, expected = lab.filled()
    with pytest.warns(SpillWarning, match="cannot be serialized"):
        chest["bad"] = lambda_with_lock()
        for i in range(2):
            chest[f"pad{i}"] = expected[f"pad{i}"] = payload(70 + i)  # the bad value is offered, set aside
    with pytest.raises(SpillError, match="'bad'"):
        chest.close()
    assert chest.closed  # retrying could never help: the value cannot be written
    assert_recovers(chest, expected)


def lambda_with_lock() -> Callable[[], Any]:
    lock = threading.Lock()
    return lambda: lock


# ---- (f) reopen ---------------------------------------------------------------------------------


# The manifest is opened and read first; packed, the segments are opened next (the 3rd open: the 2nd segment).
REOPEN_CASES = [(FILES, "open", 1), (FILES, "read", 1), (PACKED, "open", 1), (PACKED, "read", 1), (PACKED, "open", 3)]


@pytest.mark.parametrize("code", CODES.values(), ids=CODES)
@pytest.mark.parametrize(("lab", "op", "nth"), REOPEN_CASES, indirect=["lab"], ids=lambda v: str(v))
def test_a_reopen_that_cannot_read_the_manifest_or_a_segment_raises_and_touches_nothing(
    lab: Lab, op: str, code: int, nth: int
) -> None:
    chest, expected = lab.filled()
    chest.close()
    files = {p.name: p.read_bytes() for p in Path(chest.path).iterdir()}
    fault = lab.fault(op, code, nth)
    with pytest.raises(OSError) as info:
        Chest(path=chest.path, available_memory=BUDGET, sizeof=unit_sizeof, pack_threshold=chest._store.pack_threshold)
    assert info.value.errno == code
    assert fault.failures == 1
    assert {p.name: p.read_bytes() for p in Path(chest.path).iterdir()} == files
    # Nothing is left open either, though the traceback still holds the half-made Chest.
    assert open_descriptors(chest.path) == set()
    fault.clear()
    assert_recovers(chest, expected)


@pytest.mark.parametrize("code", CODES.values(), ids=CODES)
def test_a_reopen_that_cannot_remove_a_stale_temporary_file_warns_and_opens(lab: Lab, code: int) -> None:
    check_unremovable_leftover(lab, code, f".tmp-{os.getpid() + 1}-1", b"half a value from a crashed process")


def check_unremovable_leftover(lab: Lab, code: int, name: str, content: bytes) -> None:
    """A leftover a reopen cannot unlink is warned about and ignored; every key is back; the next reopen removes it."""
    chest, expected = lab.filled()
    chest.close()
    stale = Path(chest.path, name)
    stale.write_bytes(content)
    fault = lab.fault("unlink", code)
    with spill_warnings() as messages:
        again = lab.chest()
    assert fault.failures == 1
    assert len(messages) == 1
    assert stale.name in messages[0]
    assert os.strerror(code) in messages[0]
    assert_values(again, expected)  # every key is back, and the stale file is ignored
    assert stale.exists()
    fault.clear()
    again.close()
    assert_recovers(again, expected)  # the next reopen removes it
    assert not stale.exists()


@pytest.mark.parametrize("code", CODES.values(), ids=CODES)
@pytest.mark.parametrize("lab", [PACKED], indirect=True)
def test_a_reopen_that_cannot_remove_an_unreferenced_segment_warns_and_opens(lab: Lab, code: int) -> None:
    """Like a stale temporary file: a segment written after the last flush by a process that was killed."""
    check_unremovable_leftover(lab, code, ".spillkit-seg-999999", b"records appended after the last flush")


# ---- a codec that raises --------------------------------------------------------------------------


class CodecBroke(Exception):
    """What a broken codec raises (not an OSError: not the disk's fault)."""


class BrokenCodec:
    """The real PickleCodec, except that encode or decode raises while ``broken`` says so."""

    name = "pickle"

    def __init__(self) -> None:
        self.inner = PickleCodec()
        self.broken: set[str] = set()
        self.raised = 0

    def encode(self, obj: Any) -> list[Any]:
        if "encode" in self.broken:
            self.raised += 1
            raise CodecBroke("encode refused")
        return self.inner.encode(obj)

    def decode(self, data: memoryview) -> Any:
        if "decode" in self.broken:
            self.raised += 1
            raise CodecBroke("decode refused")
        return self.inner.decode(data)


def test_a_codec_that_raises_on_encode_sets_values_aside_and_flush_names_them(lab: Lab) -> None:
    codec = BrokenCodec()
    chest, expected = lab.filled(codec=codec)
    codec.broken.add("encode")
    with spill_warnings() as messages:
        for i in range(3):
            chest[f"new{i}"] = expected[f"new{i}"] = payload(50 + i)  # the caller's put succeeds
    assert codec.raised == len(messages) > 0
    assert chest.stats.unspillable == chest.stats.spill_failures == codec.raised
    assert chest.engine.unspillable_keys <= set(chest.inmem)
    for key, message in zip(sorted(chest.engine.unspillable_keys, key=repr), sorted(messages), strict=True):
        assert f"value for key {key!r} cannot be serialized" in message
        assert "encode refused" in message
    with pytest.raises(SpillError) as info:
        chest.flush()
    for key in chest.engine.unspillable_keys:
        assert repr(key) in str(info.value)
    assert isinstance(info.value.__cause__, CodecBroke)
    with spill_warnings():
        assert_values(chest, expected)
    assert_accounting(chest)
    codec.broken.clear()
    chest.flush()  # the set-aside values are written now
    assert set(chest._store) == set(expected)
    assert_values(chest, expected)
    assert_accounting(chest)


def test_values_set_aside_by_a_broken_codec_are_evictable_once_written(lab: Lab) -> None:
    codec = BrokenCodec()
    chest, _ = lab.filled(codec=codec)
    codec.broken.add("encode")
    with spill_warnings():
        for i in range(3):
            chest[f"new{i}"] = payload(50 + i)
    codec.broken.clear()
    chest.flush()
    chest["one-more"] = payload(99)
    assert chest.memory_bytes <= chest.available_memory


def test_a_codec_that_raises_on_decode_fails_the_read_and_keeps_the_key(lab: Lab) -> None:
    codec = BrokenCodec()
    chest, expected = lab.filled(codec=codec)
    codec.broken.add("decode")
    spilled = [k for k in KEYS if k not in chest.inmem]
    for key in spilled:
        with pytest.raises(CodecBroke):
            chest[key]
        assert key in chest
        assert key in chest._store
    assert chest.stats.load_failures == len(spilled) == codec.raised
    assert chest["k4"] == expected["k4"]  # values in memory are unaffected
    assert_accounting(chest)
    codec.broken.clear()
    assert_values(chest, expected)
    assert_accounting(chest)


def test_a_decode_error_names_the_key(lab: Lab) -> None:
    codec = BrokenCodec()
    chest, _ = lab.filled(codec=codec)
    codec.broken.add("decode")
    with pytest.raises(CodecBroke) as info:
        chest[("t", 1)]
    assert names_key(info.value, ("t", 1))


# ---- a size estimate wrong by 10x ------------------------------------------------------------------


@pytest.mark.parametrize("factor", [0.1, 10.0], ids=["under-reports-10x", "over-reports-10x"])
def test_a_size_estimate_off_by_10x_keeps_accounting_consistent_and_loses_nothing(lab: Lab, factor: float) -> None:
    """The budget is kept in estimated bytes, so real memory is off by the same factor.

    Under-reporting 10x: up to 10x the budget is really held in memory. Over-reporting 10x: at
    most a tenth of the budget is really used, and a value whose true size is over a tenth of the
    budget is estimated larger than the budget, so it goes straight to disk and is never cached.
    """
    size = 1000  # true bytes per value

    def estimate(value: Any) -> int:
        return int(len(value) * factor)

    def exact(i: int, n: int) -> bytes:
        return i.to_bytes(4, "little") + bytes(n - 4)  # distinct, and exactly n bytes long

    budget = 10 * size  # ten values, by the true size
    chest = lab.chest(available_memory=budget, sizeof=estimate)
    expected: dict[Hashable, Any] = {f"k{i}": exact(i, size) for i in range(130)}
    big = exact(999, budget // 5)  # true size: a fifth of the budget
    chest.update(expected)
    chest["big"] = expected["big"] = big
    true_resident = sum(len(v) for v in chest.inmem.values())
    assert chest.memory_bytes == sum(estimate(v) for v in chest.inmem.values()) <= budget
    assert chest.spilled_total[0] == sum(estimate(expected[k]) for k in chest.engine.spilled_keys)
    if factor < 1:
        assert budget < true_resident <= budget / factor  # memory really used: up to 10x the budget
        assert "big" in chest.inmem
    else:
        assert true_resident <= budget / factor  # a tenth of the budget at most
        assert "big" in chest._store and "big" not in chest.inmem
        assert chest.stats.direct_writes == 1
        assert chest["big"] == big
        assert "big" not in chest.inmem  # read from disk, never cached
    assert_accounting(chest)
    assert_values(chest, expected)
    assert chest.memory_bytes == sum(estimate(v) for v in chest.inmem.values()) <= budget
    assert_accounting(chest)
    assert_recovers(chest, expected, available_memory=budget, sizeof=estimate)


# ---- the available_disk quota --------------------------------------------------------------------


def test_an_eviction_over_available_disk_refuses_the_put_and_keeps_everything(lab: Lab) -> None:
    """A quota is a hard limit, unlike a full disk: the put that needs room is refused."""
    probe, _ = lab.filled(path=lab.tmp_path / "probe")
    quota = probe.disk_bytes + 20  # the four spill files fit, a fifth does not
    chest, expected = lab.filled(available_disk=quota)
    with pytest.raises(DiskQuotaExceeded) as info:
        chest["new"] = payload(50)
    assert f"available_disk={quota}" in str(info.value)
    assert "new" not in chest
    assert chest.stats.quota_errors == 1
    assert_accounting(chest)
    # a read needs room too, but it is served without caching instead of failing
    assert chest[("t", 1)] == expected[("t", 1)]
    assert chest.evict() == -1  # the memory monitor's protocol never raises
    with pytest.raises(SpillError) as flushed:
        chest.flush()
    assert isinstance(flushed.value.__cause__, DiskQuotaExceeded)
    assert_values(chest, expected)
    assert_accounting(chest)
    del chest["k0"]
    del expected["k0"]
    # k0's file belonged to the last committed flush, so it stays (and counts) until the next
    # flush commits (copy-on-write for crash consistency): flush, then there is room.
    with pytest.raises(SpillError):
        chest.flush()  # some values still cannot all be written; the manifest commits regardless
    chest["new"] = expected["new"] = payload(50)  # room on disk again: the put works
    assert_values(chest, expected)
    assert_accounting(chest)


def test_a_put_refused_by_the_quota_names_the_key_being_put(lab: Lab) -> None:
    probe, _ = lab.filled(path=lab.tmp_path / "probe")
    chest, _ = lab.filled(available_disk=probe.disk_bytes + 20)
    with pytest.raises(DiskQuotaExceeded) as info:
        chest["new"] = payload(50)
    assert names_key(info.value, "new")


# ---- a real full disk ---------------------------------------------------------------------------


class _ShortWrites:
    """``os`` as a filling disk shows it: a write takes what fits (here 64 bytes) and returns that count;
    only the next one would raise ENOSPC (tmpfs does this with one page left)."""

    def __init__(self) -> None:
        self.writes = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: Any) -> int:
        self.writes += 1
        return os.write(fd, memoryview(data).cast("B")[:64])


def test_a_manifest_write_cut_short_by_a_filling_disk_is_written_to_its_end(lab: Lab) -> None:
    chest, expected = lab.filled()
    short = _ShortWrites()
    lab.monkeypatch.setattr(spillkit.manifest, "os", short)
    chest.flush()  # a manifest committed after its first 64 bytes would be refused as damaged on reopen
    assert_recovers(chest, expected)
    assert short.writes > 2


@contextlib.contextmanager
def mounted_tmpfs(where: Path, options: str) -> Iterator[Path]:
    """A small tmpfs at ``where``; skips the test when this machine does not allow mounting."""
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN); this run is not root")
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"{options},mode=0700", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        pytest.skip("no mount command on this machine")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (container without CAP_SYS_ADMIN?): {done.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


@pytest.mark.parametrize(
    ("options", "size", "pack"),
    [("size=1m", 32 * 1024, 0), ("size=8m,nr_inodes=16", 64, 0), ("size=1m", 32 * 1024, None)],
    ids=["out-of-space", "out-of-inodes", "out-of-space-packed"],  # packed, 60 values need no more inodes
)
def test_a_real_full_disk(tmp_path: Path, options: str, size: int, pack: int | None) -> None:
    with mounted_tmpfs(tmp_path / "mnt", options) as mnt:
        chest = Chest(path=mnt / "chest", available_memory=4 * size, sizeof=len, pack_threshold=pack)
        try:
            expected: dict[Hashable, Any] = {}
            with spill_warnings() as messages:
                for i in range(60):  # 60 x 32 KiB is about twice the disk; 60 files are 4x the inodes
                    chest[f"k{i}"] = expected[f"k{i}"] = payload(i, size)  # raises nothing
            assert len(messages) > 0
            assert all("disk write failed" in m and "No space left on device" in m for m in messages)
            assert chest.stats.spill_failures == len(messages)
            assert chest.memory_bytes > chest.available_memory
            assert chest.stats.spills > 0
            with spill_warnings():
                assert_values(chest, expected)
            assert_accounting(chest)
            with spill_warnings(), pytest.raises((SpillError, OSError)) as info:
                chest.close()
            assert errno_in_chain(info.value) == errno.ENOSPC
            assert not chest.closed
            with spill_warnings():
                assert_values(chest, expected)

            # Free space (and inodes) by deleting keys, spilled ones first: everything works again,
            # without a warning, and a reopen gives back every value left.
            for key in sorted(expected, key=lambda k: k in chest.inmem)[: len(expected) - 6]:
                del chest[key]
                del expected[key]
            # The deleted keys' files belong to the last committed manifest (the failed close
            # committed one) and stay until the next flush commits: that flush frees them.
            with spill_warnings():
                chest.flush()
            assert_recovers(chest, expected, available_memory=4 * size, sizeof=len)
        finally:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                chest.drop()


@pytest.mark.parametrize("pack", [None, 0], ids=["packed", "file-per-value"])
def test_after_a_flush_the_full_disk_cut_short_deleting_keys_is_enough_for_the_next(
    tmp_path: Path, pack: int | None
) -> None:
    # helper-117: packed, the second flush failed again on the same keys and only a third succeeded: the
    # deleted keys' records sat in a segment the committed manifest pinned, and a flush committed early
    # (to free what the last manifest held) only for retired segments and files, never for dead records.
    with mounted_tmpfs(tmp_path / "mnt", "size=2m") as mnt:
        chest = Chest(path=mnt / "c", available_memory=100_000, sizeof=len, pack_threshold=pack)
        try:
            expected = {f"k{i}": os.urandom(50_000) for i in range(60)}  # 3 MB: half again the disk
            with spill_warnings():
                chest.update(expected)
                with pytest.raises(SpillError, match="flush could not write") as info:
                    chest.flush()
            assert errno_in_chain(info.value) == errno.ENOSPC
            for key in list(chest)[:40]:
                del chest[key]
                del expected[key]
            with spill_warnings():
                chest.flush()  # before, packed: the same 19 values unwritten again
            assert_recovers(chest, expected, available_memory=100_000, sizeof=len)
        finally:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                chest.drop()


@pytest.mark.parametrize("over_budget", [False, True], ids=["spilled", "over the budget"])
def test_an_engine_that_keeps_values_the_quota_refuses_fails_no_put_and_writes_them_later(
    tmp_path: Path, over_budget: bool
) -> None:
    # keep_when_disk_full (dask workers, as SpillBuffer at max-spill): a put whose spill, or whose own
    # write (a value over the budget), the quota refuses keeps the value in memory, counted once and
    # warned; once there is room again, it is written. Before (helper-60, helper-64): the put raised.
    chest = Chest(path=tmp_path / "c", available_memory=300, sizeof=lambda v: len(v), available_disk=1000,
                  pack_threshold=0)  # fmt: skip
    chest.engine.keep_when_disk_full = True
    chest["a"], chest["b"] = b"a" * 250, b"b" * 250  # "a" spilled: 250 bytes and a header on disk
    kept = "big" if over_budget else "c"
    with pytest.warns(SpillWarning, match="refused"):
        if over_budget:
            chest["big"] = b"x" * 800  # its own write does not fit beside "a"'s file
        else:
            chest["c"] = b"c" * 280  # spills "b" (it fits), then ...
            chest["d"] = b"d" * 290  # ... spilling "c" does not fit: kept
    stats = chest.stats
    assert 1 <= stats.quota_errors == stats.spill_failures <= 2  # each refusal counted once (a round tries twice)
    assert kept in chest.inmem and kept not in chest._store
    assert kept in chest.engine._aside  # passed over until a write succeeds (helper-136's OB4 survived)
    assert chest.memory_bytes > chest.available_memory  # over the budget, as a worker's SpillBuffer may be
    del chest["a"], chest["b"]  # room on disk again
    for _ in range(5):
        chest.evict()
    assert kept not in chest.inmem and kept in chest._store  # written once it could be
    expected = {kept: b"x" * 800} if over_budget else {"c": b"c" * 280, "d": b"d" * 290}
    assert dict(chest.items()) == expected
    assert chest.disk_bytes <= 1000
    chest.drop()
