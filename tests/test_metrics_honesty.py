"""spillkit.metrics tells the truth: every read, every byte in flight and every compaction byte is counted,
and a scrape never waits for a busy Chest. Real Chests on a real disk, a fresh real registry per test; slow
disk I/O is a codec whose dump waits on an Event (fault injection), so nothing depends on the disk's speed.
"""

from __future__ import annotations

import errno
import pickle
import random
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import IO, Any

import pytest
from helpers import held_in_another_thread
from prometheus_client import CollectorRegistry, generate_latest

from spillkit import Chest, SpillError, SpillWarning
from spillkit.metrics import instrument

KB = 1000
HOLD = 5.0  # seconds a closed gate holds a write: far longer than any scrape may take


class Payload:
    """A value that can be weakly referenced, so a spilled one still alive elsewhere is reused."""

    def __init__(self, tag: int) -> None:
        self.data = bytes([tag]) * KB


class Gate:
    """A ``dump`` that waits while the gate is shut: a write (and the lock its caller holds) held on demand.

    ``fail`` makes each write raise ``ENOSPC`` once let through, as a full disk would.
    """

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.opened.set()
        self.entered = threading.Event()
        self.fail = False

    def shut(self) -> None:
        self.entered.clear()
        self.opened.clear()

    def dump(self, obj: Any, file: IO[bytes]) -> None:
        self.entered.set()
        self.opened.wait(HOLD)
        if self.fail:
            raise OSError(errno.ENOSPC, "No space left on device")
        pickle.dump(obj, file)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def gated(path: Path, gate: Gate, **kwargs: Any) -> Chest:
    return Chest(path=path, dump=gate.dump, load=pickle.load, sizeof=len, **kwargs)


def test_reads_of_live_spilled_values_are_exported_as_memory_reuse(tmp_path: Path, registry: CollectorRegistry) -> None:
    # Before: such a read moved neither memory-read nor disk-read; no metric saw it at all.
    chest = Chest(path=tmp_path / "c", available_memory=2 * KB, sizeof=lambda v: KB)
    instrument(chest, registry, name="r")
    held = Payload(0)
    chest["a"] = held
    chest["b"] = Payload(1)
    chest["c"] = Payload(2)  # over budget: "a" is spilled, and we still hold its value
    assert "a" not in chest.inmem
    assert chest["a"] is held
    assert (chest.stats.reused, chest.stats.hits, chest.stats.loads) == (1, 0, 0)
    # Before (helper-83): reads was 0 and hit_ratio 0.0, "before any read", though a read was served.
    assert (chest.stats.reads, chest.stats.hit_ratio) == (1, 1.0)
    assert value(registry, "spillkit_spill_count_total", chest="r", activity="memory-reuse") == 1
    assert value(registry, "spillkit_spill_count_total", chest="r", activity="memory-read") == 0
    assert value(registry, "spillkit_spill_count_total", chest="r", activity="disk-read") == 0
    chest.close()


def test_values_whose_background_write_is_in_flight_are_their_own_tier(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    # Before: they were out of memory_bytes and counted as keys{disk} ("only copy on disk") with no file yet.
    gate = Gate()
    chest = gated(tmp_path / "wb", gate, available_memory=3 * KB, write_behind="1 MiB")
    instrument(chest, registry, name="wb")
    gate.shut()
    for i in range(6):
        chest[i] = bytes([i]) * KB  # three are evicted to the writer, which waits at the gate
    try:
        assert gate.entered.wait(HOLD)
        assert chest.engine.in_flight_bytes == 3 * KB and not list(chest._store)  # nothing on disk yet
        labels = {"chest": "wb"}
        assert value(registry, "spillkit_keys", **labels, tier="in-flight") == 3
        assert value(registry, "spillkit_memory_bytes", **labels, tier="in-flight") == 3 * KB
        assert value(registry, "spillkit_keys", **labels, tier="disk") == 0
        assert value(registry, "spillkit_keys", **labels, tier="memory") == 3
        assert value(registry, "spillkit_memory_bytes", **labels, tier="memory") == 3 * KB
    finally:
        gate.opened.set()
    chest.wait_for_writes()
    assert value(registry, "spillkit_keys", chest="wb", tier="in-flight") == 0
    assert value(registry, "spillkit_memory_bytes", chest="wb", tier="in-flight") == 0
    assert value(registry, "spillkit_keys", chest="wb", tier="disk") == 3
    chest.close()


def test_pinned_bytes_are_exported_apart_from_the_budget(tmp_path: Path, registry: CollectorRegistry) -> None:
    # memory_bytes{tier="memory"} may pass the budget while running tasks' inputs are pinned: the
    # pinned tier says by how much, and why.
    chest = Chest(path=tmp_path / "p", available_memory=3 * KB, sizeof=len)
    instrument(chest, registry, name="p")
    chest["in use"] = bytes(2 * KB)
    chest.engine.pin(["in use"])
    for i in range(3):
        chest[i] = bytes([i]) * KB
    assert value(registry, "spillkit_memory_bytes", chest="p", tier="pinned") == 2 * KB
    assert value(registry, "spillkit_memory_bytes", chest="p", tier="memory") == 5 * KB  # over the budget of 3 KB
    chest.engine.unpin(["in use"])
    chest.settle()
    assert value(registry, "spillkit_memory_bytes", chest="p", tier="pinned") == 0
    assert value(registry, "spillkit_memory_bytes", chest="p", tier="memory") <= 3 * KB
    chest.close()


def waits_in(thread: threading.Thread, function: str, filename: str, name: str, seconds: float = 60) -> bool:
    """Wait until ``thread`` runs ``function`` of ``filename`` for the Chest ``name`` (its local ``name``),
    however slow the machine; False if it never does within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        frame = sys._current_frames().get(thread.ident or 0)
        while frame is not None:
            code = frame.f_code
            if code.co_name == function and code.co_filename.endswith(filename) and frame.f_locals.get("name") == name:
                return True
            frame = frame.f_back
        time.sleep(0.001)
    return False


def flush_in_background(chest: Chest, gate: Gate) -> threading.Thread:
    """Start a flush that holds the engine lock inside a write until the gate opens."""
    gate.shut()
    flusher = threading.Thread(target=chest.flush)
    flusher.start()
    assert gate.entered.wait(HOLD)
    assert not chest.engine.lock.acquire(blocking=False)  # the flush holds it, as it does during disk I/O
    return flusher


def test_a_scrape_does_not_wait_for_a_chest_busy_with_disk_io(tmp_path: Path, registry: CollectorRegistry) -> None:
    # Before: the scrape waited the whole flush for the busy Chest's lock, and the idle Chest's metrics with it.
    gate = Gate()
    busy = gated(tmp_path / "busy", gate, available_memory=100 * KB)
    idle = Chest(path=tmp_path / "idle", available_memory=KB, sizeof=len)
    instrument(busy, registry, name="busy")
    instrument(idle, registry, name="idle")
    for i in range(5):
        busy[i] = bytes([i]) * KB
    idle["x"] = bytes(10)
    flusher = flush_in_background(busy, gate)
    try:
        text = generate_latest(registry).decode()
        # The scrape is done while the flush still holds the lock (it cannot end before the gate opens,
        # below): a scrape that waited for the lock would have waited here for good.
        assert flusher.is_alive() and not gate.opened.is_set()
        assert not busy.engine.lock.acquire(blocking=False)
    finally:
        gate.opened.set()
        flusher.join()
    assert 'spillkit_keys{chest="idle",tier="memory"} 1.0' in text
    assert 'spillkit_keys{chest="busy",tier="memory"} 5.0' in text  # read without the lock, nothing changing
    assert 'spillkit_memory_bytes{chest="busy",tier="memory"} 5000.0' in text
    busy.close()
    idle.close()


def test_a_chest_closed_while_a_scrape_waited_is_not_exported_with_zeros(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    # Before: the scrape's prune saw "b" open, then it waited (here: for "a"'s lock), "b" closed meanwhile,
    # and "b" was exported with every gauge at zero.
    gate = Gate()
    a = gated(tmp_path / "a", gate, available_memory=100 * KB)
    b = Chest(available_memory=100 * KB, sizeof=len)
    collector = instrument(a, registry, name="a")
    instrument(b, registry, name="b")
    collector.lock_wait = 30.0  # this scrape waits for "a" until its flush ends, however long
    a["k"] = bytes(KB)
    for i in range(3):
        b[i] = bytes(KB)
    scraped: list[str] = []
    flusher = flush_in_background(a, gate)
    scraper = threading.Thread(target=lambda: scraped.append(generate_latest(registry).decode()))
    try:
        scraper.start()
        assert waits_in(scraper, "add", "metrics_families.py", "a")  # has listed both Chests, waits for "a"
        b.close()
    finally:
        gate.opened.set()
        flusher.join()
        scraper.join()
    assert 'spillkit_keys{chest="a",tier="memory"} 1.0' in scraped[0]
    assert 'chest="b"' not in scraped[0]
    a.close()


def test_a_chest_whose_close_failed_is_still_exported(tmp_path: Path, registry: CollectorRegistry) -> None:
    # Before: a scrape during close() dropped the Chest for good (closed, while flushing); the disk refused
    # the flush, the Chest stayed open with every value, and its metrics were gone.
    gate = Gate()
    chest = gated(tmp_path / "c", gate, available_memory=100 * KB)
    collector = instrument(chest, registry, name="c")
    for i in range(3):
        chest[i] = bytes(KB)
    gate.shut()
    gate.fail = True
    failures: list[BaseException] = []

    def close() -> None:
        try:
            chest.close()
        except SpillError as error:
            failures.append(error)

    closer = threading.Thread(target=close)
    closer.start()
    try:
        assert gate.entered.wait(HOLD)
        text = generate_latest(registry).decode()
    finally:
        gate.opened.set()
        closer.join()
    assert 'chest="c"' not in text  # numbers in flux while it closes: left out of this scrape
    assert failures and not chest.closed  # the disk refused the flush: still open, every value kept
    assert collector.names() == ["c"]
    assert value(registry, "spillkit_keys", chest="c", tier="memory") == 3
    gate.fail = False
    chest.close()
    assert value(registry, "spillkit_keys", chest="c", tier="memory") is None


def test_compaction_io_is_exported(tmp_path: Path, registry: CollectorRegistry) -> None:
    chest = Chest(path=tmp_path / "c", available_memory=0, sizeof=len)  # every value straight to disk
    store = chest._store
    store.segment_bytes = 4096  # small segments: overwrites leave them mostly dead soon
    instrument(chest, registry, name="c")
    rng = random.Random(1)
    for i in range(3000):
        chest[rng.randrange(50)] = bytes([i % 256]) * rng.choice([100, 300, 600])
    assert store.compactions > 0
    read, written = store.compaction_read_bytes, store.compaction_written_bytes
    assert read > 0 and written > 0
    assert value(registry, "spillkit_spill_bytes_total", chest="c", activity="compaction-read") == read
    assert value(registry, "spillkit_spill_bytes_total", chest="c", activity="compaction-write") == written
    chest.close()


@pytest.mark.parametrize("why", ["cannot be pickled", "disk fails", "deferred, cannot be pickled"])
def test_a_refused_put_over_the_budget_is_counted_under_one_reason(
    tmp_path: Path, registry: CollectorRegistry, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before (helper-60): a put over the budget of a value that cannot be pickled raised, and no
    # counter moved (spill_failures, and every reason, stayed 0); a disk failure there was counted.
    # Deferred, such a value stays in memory: counted once there too (helper-64: its first fix, twice).
    chest = Chest(path=tmp_path / "c", available_memory=100, sizeof=lambda v: 500, pack_threshold=0)
    instrument(chest, registry, name="c")
    chest["kept"] = "kept"  # straight to disk, as every value here
    value_: list[Any] = ["fine"] if why == "disk fails" else [threading.Lock()]
    if why == "disk fails":
        monkeypatch.setattr("spillkit.storage.os.replace", _fail_eio)
    if why.startswith("deferred"):
        with pytest.warns(SpillWarning, match="cannot be serialized"), chest.deferred():
            chest["refused"] = value_
        assert chest.inmem["refused"] is value_
    else:
        with pytest.raises(OSError if why == "disk fails" else TypeError):
            chest["refused"] = value_
        assert "refused" not in chest
    monkeypatch.undo()
    assert chest.stats.spill_failures == 1
    reason = "disk" if why == "disk fails" else "serialize"
    errors = {r: value(registry, "spillkit_spill_errors_total", chest="c", reason=r) for r in ("serialize", "disk")}
    assert errors == {r: float(r == reason) for r in ("serialize", "disk")}
    assert chest["kept"] == "kept"
    chest.drop()  # (a close would flush, and fail on the value that cannot be pickled)


def test_a_flush_that_cannot_pickle_a_value_counts_it_under_serialize(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    # Before (helper-83): each such flush raised spill_failures only; every exported reason stayed 0.
    chest = Chest(path=tmp_path / "c", available_memory="1 MiB")
    instrument(chest, registry, name="c")
    chest["fine"] = "fine"
    chest["lock"] = [threading.Lock()]  # small: resident, never offered to the disk until the flush
    for attempt in (1, 2):
        with pytest.raises(SpillError, match="lock"):
            chest.flush()
        assert chest.stats.spill_failures == chest.stats.serialize_errors == attempt
        errors = {r: value(registry, "spillkit_spill_errors_total", chest="c", reason=r) for r in ("serialize", "disk")}
        assert errors == {"serialize": attempt, "disk": 0}
    assert chest["fine"] == "fine" and isinstance(chest["lock"][0], type(threading.Lock()))
    chest.drop()


class ReadsAClosedChest:
    """A value whose pickling raises a SpillError: it reads from a Chest closed since."""

    def __init__(self, source: Chest) -> None:
        self.source = source
        self.pad = b"x" * 600

    def __reduce__(self) -> tuple[Any, ...]:
        return (bytes, (self.source["k"],))


@pytest.mark.parametrize("write_behind", [False, True])
def test_a_spill_error_raised_by_pickling_is_the_values_failure(
    tmp_path: Path, registry: CollectorRegistry, write_behind: bool
) -> None:
    # Before (helper-88): any SpillError was taken for the disk's or the quota's: a flush's counted under no
    # reason, and a synchronous eviction raised it into an unrelated put as a quota refusal would be.
    source = Chest(path=tmp_path / "source")
    source["k"] = b"v"
    source.close()
    chest = Chest(path=tmp_path / "c", available_memory=1000, sizeof=len_or_600, write_behind=write_behind)
    instrument(chest, registry, name="px")
    chest["p"] = ReadsAClosedChest(source)
    with pytest.raises(SpillError, match="closed"):
        chest.flush()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpillWarning)
        chest["q"] = b"y" * 900  # evicts p: its failure is its own, set aside, not raised here
        chest.wait_for_writes()
    assert chest["q"] == b"y" * 900 and isinstance(chest["p"], ReadsAClosedChest)
    reasons = ("serialize", "disk", "quota", "changed")
    errors = {r: value(registry, "spillkit_spill_errors_total", chest="px", reason=r) for r in reasons}
    assert errors == {"serialize": 2, "disk": 0, "quota": 0, "changed": 0}
    assert chest.stats.spill_failures == 2
    chest.drop()


def len_or_600(value: Any) -> int:
    return len(value) if isinstance(value, bytes) else 600


def _fail_eio(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.EIO, "injected")


def test_a_scrape_without_the_lock_does_not_count_a_freed_mapped_file(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    # Before (helper-60): without the lock the scrape read total_bytes, which counts a deleted file a loaded
    # value mapped until the next recount: 8 MB on disk by one scrape, 0 by a locked one right after.
    np = pytest.importorskip("numpy")
    chest = Chest(path=tmp_path / "c", available_memory=5_000_000, map_loads=True)
    collector = instrument(chest, registry, name="c")
    collector.lock_wait = 0.0  # a scrape that finds the lock taken reads without it at once
    chest["a"] = np.ones(1_000_000)  # 8 MB: over the budget, straight to disk
    mapped = chest["a"]  # loaded by mapping its file
    del chest["a"]  # the file goes, but counts while ``mapped`` maps it
    assert value(registry, "spillkit_memory_bytes", chest="c", tier="disk") > 8_000_000
    del mapped  # the mapping goes: those bytes are free
    with held_in_another_thread(chest.engine.lock):  # as another thread's flush would, during its disk I/O
        unlocked = value(registry, "spillkit_memory_bytes", chest="c", tier="disk")
    assert unlocked == value(registry, "spillkit_memory_bytes", chest="c", tier="disk") == 0
    chest.close()
