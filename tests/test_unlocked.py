"""spillkit.unlocked: a load reads, checks and decodes its file without the engine's lock.

A codec whose ``decode`` waits on the test stands a load still in the middle of its read,
so what other threads can do meanwhile (load too, put, delete, overwrite) is shown with
events and barriers, never with timings. Each reconciliation case checks the value served,
the value kept and the memory accounting.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import pytest

from spillkit import Chest, CorruptSpillFile, PickleCodec

WAIT = 30.0  # seconds before a test calls a barrier broken: only reached when the code is wrong
UNIT = 100_000  # every value counts this many bytes; values are big enough for files of their own


class GatedCodec(PickleCodec):
    """Pickle, with a hook run inside ``decode`` (where a load is while it has let the lock go)."""

    def __init__(self) -> None:
        super().__init__()
        self.hook: Callable[[], None] | None = None

    def decode(self, data: memoryview) -> Any:
        if self.hook is not None:
            self.hook()
        return super().decode(data)


def make(tmp_path: Path, budget_units: int = 1, **kwargs: Any) -> tuple[Chest, GatedCodec]:
    codec = GatedCodec()
    chest = Chest(
        path=tmp_path / "chest", available_memory=budget_units * UNIT, sizeof=lambda v: UNIT, codec=codec, **kwargs
    )
    return chest, codec


def value(tag: str) -> bytes:
    return tag.encode() * (UNIT // len(tag))  # over the packing threshold: a file of its own


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as error:  # handed to the test, which re-raises it
            out["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def spill_all(chest: Chest) -> None:
    while chest.inmem:
        assert chest.evict() > 0
    assert not chest.inmem


def assert_accounting(chest: Chest) -> None:
    engine = chest.engine
    assert chest.memory_bytes == UNIT * len(chest.inmem)
    assert engine._spilled_nbytes == UNIT * (len(chest) - len(chest.inmem))  # values only on disk
    assert chest.memory_bytes <= chest.available_memory
    assert set(engine.memory) <= set(chest)


@pytest.mark.parametrize("first_read", ["get", "setdefault"])
def test_two_threads_load_at_the_same_time(tmp_path: Path, first_read: str) -> None:
    # setdefault: before, it held the engine's lock through its disk read, so the other load waited
    # for it and the barrier between the two decodes broke.
    chest, codec = make(tmp_path, budget_units=3)
    for key in "abc":
        chest[key] = value(key)
    spill_all(chest)
    both = threading.Barrier(2, timeout=WAIT)
    codec.hook = both.wait  # each load waits in decode until the other is in decode too
    read = (lambda: chest["a"]) if first_read == "get" else (lambda: chest.setdefault("a", b"default"))
    first, out_a = in_thread(read)
    second, out_b = in_thread(lambda: chest["b"])
    first.join()
    second.join()
    codec.hook = None
    assert "error" not in out_a and "error" not in out_b, (out_a, out_b)  # a held lock breaks the barrier
    assert out_a["value"] == value("a") and out_b["value"] == value("b")
    assert set(chest.inmem) == {"a", "b"}
    assert chest.setdefault("d", b"default") == b"default" and chest["d"] == b"default"
    assert_accounting(chest)
    chest.drop()


def test_setdefault_reads_a_key_stored_by_another_thread_after_its_miss(tmp_path: Path) -> None:
    # The miss and the store are two steps: a key stored in between is returned, not overwritten.
    chest, _ = make(tmp_path, budget_units=3)
    engine = chest.engine
    real_contains = type(engine).__contains__
    stored = []

    def contains(self: Any, key: object) -> bool:
        if not stored:  # once, inside setdefault's locked step: another thread stores the key first
            stored.append(True)
            thread, _ = in_thread(lambda: chest.__setitem__("k", value("other")))
            thread.join(0.2)  # it waits for the lock this thread holds
            assert thread.is_alive()
            self.lock.release()  # let it store, then take the lock back
            thread.join()
            self.lock.acquire()
        return real_contains(self, key)

    type(engine).__contains__ = contains  # type: ignore[method-assign]
    try:
        got = chest.setdefault("k", b"default")
    finally:
        type(engine).__contains__ = real_contains  # type: ignore[method-assign]
    assert got == value("other") and chest["k"] == value("other")
    chest.drop()


def setdefault_raced(chest: Chest, again: Any, spill: bool) -> Any:
    """``chest.setdefault("k", ...)`` while, during its unlocked read, "k" is deleted and stored again as ``again``.

    The read is one ``chest["k"]`` that meets the key deleted (a miss); with ``spill``, the value stored
    again is on disk by the time setdefault looks again.
    """
    real = type(chest).__getitem__
    raced = []

    def getitem(self: Chest, key: Hashable) -> Any:
        if raced:
            return real(self, key)
        raced.append(True)  # the unlocked read: another thread deletes the key first, then stores it again
        del self["k"]
        try:
            return real(self, key)  # a miss
        finally:
            self["k"] = again
            if spill:
                spill_all(self)

    type(chest).__getitem__ = getitem  # type: ignore[method-assign]
    try:
        return chest.setdefault("k", None)
    finally:
        type(chest).__getitem__ = real  # type: ignore[method-assign]


def test_setdefault_of_a_key_deleted_and_stored_again_during_its_read_counts_one_read(tmp_path: Path) -> None:
    # Found by review (helper-78): that race path took back the miss it had counted (a counter going
    # down, which Prometheus forbids). Now it returns the value stored meanwhile, counting no second read.
    chest, _ = make(tmp_path, budget_units=3)
    chest["k"] = value("old")
    spill_all(chest)
    before = (chest.stats.hits, chest.stats.loads, chest.stats.misses)
    got = setdefault_raced(chest, value("again"), spill=False)
    after = (chest.stats.hits, chest.stats.loads, chest.stats.misses)
    assert after[2] - before[2] == 1 and after[:2] == before[:2]  # one read: the miss; nothing taken back
    assert got == value("again") and chest["k"] == value("again")
    chest.drop()


class Basket:
    """A value that can be weakly referenced (a list cannot), changed in place through ``items``."""

    def __init__(self, *items: str) -> None:
        self.items = list(items)


def test_setdefault_race_path_keeps_an_in_place_change_of_the_value_it_read_from_disk(tmp_path: Path) -> None:
    # Found by review (helper-80): when the value stored again meanwhile was on disk, setdefault read it
    # and neither kept nor remembered it: d.setdefault(k, ...).items.append(x) was lost.
    chest = Chest(path=tmp_path / "c", available_memory=3 * UNIT, sizeof=lambda v: UNIT)
    chest["k"] = Basket("old")
    spill_all(chest)
    got = setdefault_raced(chest, Basket("again"), spill=True)
    got.items.append("appended")
    assert chest["k"].items == ["again", "appended"]
    chest.drop()


class Paused:
    """Pause the next load inside its decode until released; say when it got there."""

    def __init__(self, codec: GatedCodec) -> None:
        self.codec = codec
        self.inside = threading.Event()
        self.go = threading.Event()
        codec.hook = self.hook

    def hook(self) -> None:
        self.codec.hook = None  # only the first load pauses
        self.inside.set()
        assert self.go.wait(WAIT)


def paused_load(chest: Chest, codec: GatedCodec, key: Hashable) -> tuple[Paused, threading.Thread, dict[str, Any]]:
    pause = Paused(codec)
    thread, out = in_thread(lambda: chest[key])
    assert pause.inside.wait(WAIT)  # the load is in decode now, without the lock
    return pause, thread, out


def finish(pause: Paused, thread: threading.Thread, out: dict[str, Any]) -> Any:
    pause.go.set()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def spilled(tmp_path: Path, **kwargs: Any) -> tuple[Chest, GatedCodec]:
    chest, codec = make(tmp_path, budget_units=2, **kwargs)
    chest["k"] = value("old")
    chest["x"] = value("x")
    spill_all(chest)
    return chest, codec


def test_a_put_and_a_hit_run_while_a_load_reads(tmp_path: Path) -> None:
    chest, codec = spilled(tmp_path)
    pause, thread, out = paused_load(chest, codec, "k")
    chest["y"] = value("y")  # would wait for the load if it held the lock
    assert chest["y"] == value("y")
    assert finish(pause, thread, out) == value("old")
    assert chest["k"] == value("old") and "k" in chest.inmem
    assert_accounting(chest)
    chest.drop()


def test_a_key_deleted_during_its_load_is_served_and_stays_deleted(tmp_path: Path) -> None:
    chest, codec = spilled(tmp_path)
    pause, thread, out = paused_load(chest, codec, "k")
    del chest["k"]
    assert finish(pause, thread, out) == value("old")  # the get began before the delete
    assert "k" not in chest and "k" not in chest.inmem
    with pytest.raises(KeyError):
        chest["k"]
    assert_accounting(chest)
    chest.drop()


def test_a_key_overwritten_during_its_load_keeps_the_new_value(tmp_path: Path) -> None:
    chest, codec = spilled(tmp_path)
    pause, thread, out = paused_load(chest, codec, "k")
    chest["k"] = value("new")
    assert finish(pause, thread, out) == value("new")  # the resident value is served
    assert chest["k"] == value("new")
    assert_accounting(chest)
    chest.drop()


def test_a_key_overwritten_and_spilled_again_during_its_load_never_gets_the_old_value_back(tmp_path: Path) -> None:
    chest, codec = spilled(tmp_path)
    pause, thread, out = paused_load(chest, codec, "k")
    chest["k"] = value("new")
    spill_all(chest)  # the new value has a newer record now, and nothing is resident
    assert finish(pause, thread, out) == value("old")  # what the read found; the get began before
    assert "k" not in chest.inmem  # the old value was not admitted over the newer record
    assert chest["k"] == value("new")
    assert_accounting(chest)
    chest.drop()


def test_two_loads_of_one_key_end_with_one_object(tmp_path: Path) -> None:
    chest, codec = spilled(tmp_path)
    pause, thread, out = paused_load(chest, codec, "k")
    second, out_second = in_thread(lambda: chest["k"])  # reads too, and admits first
    second.join()
    first_value = finish(pause, thread, out)
    assert first_value is out_second["value"] is chest["k"]  # the later finisher serves the admitted one
    assert_accounting(chest)
    chest.drop()


def test_a_damaged_file_found_without_the_lock_raises_and_the_lock_is_free(tmp_path: Path) -> None:
    chest, codec = spilled(tmp_path)

    def damage() -> None:
        codec.hook = None
        raise ValueError("decode failed")

    codec.hook = damage
    with pytest.raises(ValueError, match="decode failed") as info:
        chest["k"]
    assert any("'k'" in note for note in info.value.__notes__)
    assert chest.stats.load_failures == 1 and "k" in chest and "k" not in chest.inmem
    acquired, _ = in_thread(lambda: chest.engine.lock.acquire(timeout=WAIT) and chest.engine.lock.release())
    acquired.join()
    assert chest["k"] == value("old")
    assert_accounting(chest)
    chest.drop()


def test_a_missing_file_is_reported_before_the_lock_is_let_go(tmp_path: Path) -> None:
    chest, _ = spilled(tmp_path, pack_threshold=0)
    (tmp_path / "chest" / chest._store.names()["k"]).unlink()
    with pytest.raises(CorruptSpillFile, match="missing"):
        chest["k"]
    assert chest["x"] == value("x")
    chest.drop()


def test_a_caller_holding_the_lock_keeps_it_through_the_load(tmp_path: Path) -> None:
    chest, codec = spilled(tmp_path)
    owned: list[bool] = []
    codec.hook = lambda: owned.append(chest.engine.lock._is_owned())  # type: ignore[attr-defined]
    chest["k"]
    with chest.engine.lock:  # a caller that relies on nothing changing across its block
        chest["x"]
    assert owned == [False, True]
    chest.drop()


def test_packed_values_are_read_under_the_lock(tmp_path: Path) -> None:
    codec = GatedCodec()
    chest = Chest(path=tmp_path / "chest", available_memory=100, sizeof=lambda v: 100, codec=codec)
    chest["small"] = b"s" * 100  # under the packing threshold: a record in a segment
    chest["other"] = b"o" * 100
    assert chest._store.location("small")[0] is not None
    owned: list[bool] = []
    codec.hook = lambda: owned.append(chest.engine.lock._is_owned())  # type: ignore[attr-defined]
    assert chest["small"] == b"s" * 100
    assert owned == [True]  # compaction may move a packed record: its read keeps the lock
    chest.drop()


# ---- found by review ------------------------------------------------------------------------------


def test_a_value_put_back_with_another_size_during_its_load_is_not_admitted_at_the_old_size(tmp_path: Path) -> None:
    size = [UNIT]
    codec = GatedCodec()
    chest = Chest(path=tmp_path / "chest", available_memory=10 * UNIT, sizeof=lambda v: size[0], codec=codec)
    chest["k"] = value("same")
    spill_all(chest)
    pause, thread, out = paused_load(chest, codec, "k")
    size[0] = 7 * UNIT  # the same bytes (same record, same tag) under another size estimate
    chest["k"] = value("same")
    spill_all(chest)
    assert finish(pause, thread, out) == value("same")
    engine = chest.engine
    on_disk_only = sum(n for key, n in engine._nbytes.items() if key not in engine.memory)
    assert engine._spilled_nbytes == on_disk_only and engine.memory_bytes == sum(
        engine._nbytes[key] for key in engine.memory
    )
    chest.drop()


def test_two_overlapping_loads_of_one_key_give_listeners_a_load_and_a_hit(tmp_path: Path) -> None:
    chest, codec = spilled(tmp_path)
    kinds: list[str] = []
    chest.add_listener(lambda event: kinds.append(event.kind) if event.key == "k" else None)
    both = threading.Barrier(2, timeout=WAIT)
    codec.hook = both.wait
    threads = [in_thread(lambda: chest["k"]) for _ in range(2)]
    for thread, _ in threads:
        thread.join()
    codec.hook = None
    assert sorted(kinds) == ["hit", "load"]  # every get is an event, as in a trace
    chest.drop()


class Box:
    """A value that can be weakly referenced (live-object reuse), big enough for a file of its own."""

    def __init__(self, tag: str) -> None:
        self.tag, self.pad = tag, value(tag)


def test_a_load_never_admits_its_copy_over_a_live_object_spilled_meanwhile(tmp_path: Path) -> None:
    # Thread A reads "k" without the lock; meanwhile B loads it, evicts it (its file still holds
    # it: no write) and changes the object it holds. A admitted its own copy of the old record
    # over B's live object, so reads lost B's change; now the live object is what A serves.
    chest, codec = make(tmp_path, budget_units=2)
    chest["k"] = Box("original")
    spill_all(chest)
    pause, thread, out = paused_load(chest, codec, "k")
    mine = chest["k"]  # B's own load (the codec pauses only the first)
    spill_all(chest)  # evicted again without a write; B still holds the object
    mine.tag = "changed by B"
    assert finish(pause, thread, out) is mine  # before: A's copy of "original"
    assert chest["k"] is mine and chest["k"].tag == "changed by B"
    chest.drop()


def test_a_load_finishing_while_another_threads_copy_is_being_written_serves_that_copy(tmp_path: Path) -> None:
    # Thread A reads "k" without the lock; meanwhile B loads it, changes it, and it is handed to the
    # background writer. A served its own copy of the old record (two objects for one key, the
    # change on one of them), as the write was still queued: nothing was resident or remembered.
    chest, codec = make(tmp_path, budget_units=2, write_behind=True)
    gate, started = threading.Event(), threading.Event()
    chest["k"] = Box("original")
    spill_all(chest)
    chest.wait_for_writes()
    pause, thread, out = paused_load(chest, codec, "k")
    mine = chest["k"]  # B's own load
    mine.tag = "changed by B"  # so an eviction writes it again
    real_encode = codec.encode

    def held_encode(obj: Any) -> Any:  # B's write waits in the writer thread until A is done
        if threading.current_thread().name == "spillkit-writer":
            started.set()
            assert gate.wait(WAIT)
        return real_encode(obj)

    codec.encode = held_encode  # type: ignore[method-assign]
    chest["x"] = value("x")
    chest["y"] = value("y")  # "k" is handed to the writer, held there
    assert started.wait(WAIT) and "k" not in chest.inmem
    try:
        assert finish(pause, thread, out) is mine  # before: A's copy, "original"
    finally:
        gate.set()
    chest.wait_for_writes()
    assert chest["k"] is mine
    chest.drop()


def test_a_load_that_finds_its_key_loaded_meanwhile_tells_the_policy_of_the_hit(tmp_path: Path) -> None:
    # Before (helper-58): listeners (and so traces) were told of a hit, but the policy was not: LRU then
    # evicted this key, read last, rather than one read before it, and a replay of the trace decided otherwise.
    chest, codec = spilled(tmp_path)
    hits: list[Hashable] = []
    chest.add_listener(lambda event: hits.append(event.key) if event.kind == "hit" else None)
    pause, thread, out = paused_load(chest, codec, "k")
    second, out_second = in_thread(lambda: chest["k"])  # reads too, and admits "k" first
    second.join()
    chest["y"] = value("y")  # after "k": LRU order k, y
    assert finish(pause, thread, out) is out_second["value"]  # the paused load finds "k" loaded: a hit
    assert hits == ["k"]
    chest["z"] = value("z")  # evicts the least recently used: "y", read before the hit on "k"
    assert "k" in chest.inmem and "y" not in chest.inmem
    assert_accounting(chest)
    chest.drop()


class _InterruptedAfterLettingGo:
    """The engine's RLock, with a KeyboardInterrupt landing just as the read lets go of it (once)."""

    def __init__(self, real: Any) -> None:
        self.real, self.armed = real, True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def __enter__(self) -> Any:
        return self.real.__enter__()

    def __exit__(self, *exc: object) -> Any:
        return self.real.__exit__(*exc)

    def _release_save(self) -> Any:
        state = self.real._release_save()
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt  # (after the release: where a Ctrl-C landing as the call returns is raised)
        return state


def test_an_interrupt_as_the_read_lets_go_of_the_lock_is_raised_as_itself_and_the_lock_comes_back(
    tmp_path: Path,
) -> None:
    # helper-126: the lock stayed let go, and get's own release then raised RuntimeError ("cannot release
    # un-acquired lock") in place of the KeyboardInterrupt.
    chest, _ = spilled(tmp_path)
    real = chest.engine.lock
    chest.engine.lock = _InterruptedAfterLettingGo(real)  # type: ignore[assignment]
    with pytest.raises(KeyboardInterrupt):
        chest["k"]
    assert real._recursion_count() == 0  # not held by this thread any more: get let go of it, once
    acquired, _ = in_thread(lambda: real.acquire(timeout=WAIT) and real.release())
    acquired.join()
    chest.engine.lock = real  # type: ignore[assignment]
    assert chest["k"] == value("old")
    assert_accounting(chest)
    chest.drop()
