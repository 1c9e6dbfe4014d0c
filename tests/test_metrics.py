"""spillkit.metrics: the Prometheus collector, instrument/uninstrument, serve. A fresh registry per test."""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import pytest
from helpers import held_in_another_thread
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

import spillkit
import spillkit.reserve
from spillkit import Chest, SpillWarning
from spillkit.metrics import ChestCollector, instrument, serve, uninstrument
from spillkit.stats import LATENCY_BOUNDS

REPO = Path(__file__).resolve().parent.parent
KB = 1000


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def make_chest(tmp_path: Path, name: str = "c", budget: int = 3 * KB, **kwargs: Any) -> Chest:
    # sizeof=len makes memory accounting exact: three 1000-byte values fill the budget
    kwargs.setdefault("sizeof", len)
    return Chest(path=tmp_path / name, available_memory=budget, **kwargs)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def run_sequence(chest: Chest) -> None:
    """Five puts into room for three (two spills), a hit, a load (one more spill), a miss."""
    for i in range(5):
        chest[f"k{i}"] = bytes([i]) * KB
    assert chest["k4"] == bytes([4]) * KB
    assert chest["k0"] == bytes([0]) * KB
    assert chest.get("absent") is None


def assert_matches_stats(registry: CollectorRegistry, chest: Chest, name: str) -> None:
    """Every exported number equals what the Chest and its Stats say now."""
    s = chest.stats
    c = {"chest": name}
    assert value(registry, "spillkit_memory_bytes", **c, tier="memory") == chest.memory_bytes
    assert value(registry, "spillkit_memory_bytes", **c, tier="disk") == chest.disk_bytes
    assert value(registry, "spillkit_keys", **c, tier="memory") == len(chest.inmem)
    assert value(registry, "spillkit_keys", **c, tier="disk") == len(chest) - len(chest.inmem)
    assert value(registry, "spillkit_memory_budget_bytes", **c) == chest.available_memory
    expected = {
        "memory-read": (s.hits, None, None),
        "disk-read": (s.loads, s.load_bytes, s.load_seconds),
        "disk-write": (s.disk_writes, s.spill_bytes, s.spill_seconds),
    }
    for activity, (count, nbytes, seconds) in expected.items():
        assert value(registry, "spillkit_spill_count_total", **c, activity=activity) == count
        assert value(registry, "spillkit_spill_bytes_total", **c, activity=activity) == nbytes
        assert value(registry, "spillkit_spill_time_seconds_total", **c, activity=activity) == seconds
    assert value(registry, "spillkit_misses_total", **c) == s.misses
    reasons = {
        "disk": s.disk_errors,
        "changed": s.changed_errors,
        "writer": s.writer_errors,
        "serialize": s.unspillable,
        "quota": s.quota_errors,
        "corrupt": s.load_failures,
        "reserve": s.reserve_failures,
    }
    for reason, n in reasons.items():
        assert value(registry, "spillkit_spill_errors_total", **c, reason=reason) == n
    for activity, buckets, total in (
        ("disk-write", s.write_latency, s.spill_seconds),
        ("disk-read", s.read_latency, s.load_seconds),
    ):
        h = {**c, "activity": activity}
        cumulative = [
            value(registry, "spillkit_disk_latency_seconds_bucket", **h, le=le)
            for le in [repr(float(b)) for b in LATENCY_BOUNDS] + ["+Inf"]
        ]
        assert None not in cumulative
        per_bucket = [int(b - a) for a, b in zip([0.0, *cumulative[:-1]], cumulative, strict=True)]  # type: ignore[operator]
        assert per_bucket == buckets
        assert value(registry, "spillkit_disk_latency_seconds_count", **h) == sum(buckets)
        assert value(registry, "spillkit_disk_latency_seconds_sum", **h) == total


def test_values_equal_stats_after_known_sequence(tmp_path: Path, registry: CollectorRegistry) -> None:
    chest = make_chest(tmp_path)
    instrument(chest, registry, name="etl")
    assert_matches_stats(registry, chest, "etl")  # all zeros, every series present
    run_sequence(chest)
    s = chest.stats
    assert (s.hits, s.loads, s.misses, s.disk_writes) == (1, 1, 1, 3)
    assert value(registry, "spillkit_keys", chest="etl", tier="memory") == 3
    assert value(registry, "spillkit_keys", chest="etl", tier="disk") == 2
    assert value(registry, "spillkit_spill_count_total", chest="etl", activity="disk-write") == 3
    assert value(registry, "spillkit_memory_bytes", chest="etl", tier="memory") == 3 * KB
    assert_matches_stats(registry, chest, "etl")
    chest.close()


def test_info_metric(tmp_path: Path, registry: CollectorRegistry) -> None:
    chest = make_chest(tmp_path, policy="lfu")
    instrument(chest, registry, name="etl")
    labels = {"chest": "etl", "version": spillkit.__version__, "policy": "LFU", "codec": "pickle"}
    assert registry.get_sample_value("spillkit_chest_info", labels) == 1
    chest.close()


def test_error_reasons(tmp_path: Path, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    chest = make_chest(tmp_path, available_disk=5 * KB, sizeof=lambda v: KB)
    instrument(chest, registry, name="e")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpillWarning)
        chest["lock"] = threading.Lock()  # cannot be pickled: set aside when offered for spilling
        for i in range(4):
            chest[f"k{i}"] = bytes(KB)
        assert chest.stats.unspillable == 1
        with pytest.raises(spillkit.DiskQuotaExceeded):
            for i in range(4, 12):
                chest[f"k{i}"] = bytes(KB)
        store = chest.engine.disk

        def full(key: object, value: object) -> int:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(store, "write", full)
        chest["one-more"] = bytes(KB)
        monkeypatch.undo()
        victim = next(k for k in chest if k not in chest.inmem)
        Path(store.filename(victim)).write_bytes(b"garbage")  # type: ignore[attr-defined]
        with pytest.raises(spillkit.CorruptSpillFile):
            chest[victim]
    # A put on a failing disk tries two victims before its round stops (spillkit.rounds): two disk errors.
    for reason, count in (("disk", 2), ("serialize", 1), ("quota", 1), ("corrupt", 1)):
        assert value(registry, "spillkit_spill_errors_total", chest="e", reason=reason) == count, reason
    assert_matches_stats(registry, chest, "e")
    chest.drop()


def test_a_reserve_file_that_cannot_be_made_is_an_error_reason(
    tmp_path: Path, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    chest = make_chest(tmp_path)
    instrument(chest, registry, name="r")
    chest["k"] = bytes(KB)
    assert value(registry, "spillkit_spill_errors_total", chest="r", reason="reserve") == 0

    def no_room(fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spillkit.reserve.os, "posix_fallocate", no_room)
    with pytest.warns(SpillWarning, match="could not make the reserve"):
        chest.flush()  # committed; the manifest's room on a full disk could not be set aside
    assert value(registry, "spillkit_spill_errors_total", chest="r", reason="reserve") == 1
    assert_matches_stats(registry, chest, "r")
    chest.drop()


def test_two_chests_on_one_registry(tmp_path: Path, registry: CollectorRegistry) -> None:
    a, b = make_chest(tmp_path, "a"), make_chest(tmp_path, "b", budget=10 * KB, policy="size")
    assert instrument(a, registry, name="a") is instrument(b, registry, name="b")  # one collector per registry
    run_sequence(a)
    b["x"] = bytes(KB)
    assert_matches_stats(registry, a, "a")
    assert_matches_stats(registry, b, "b")
    assert value(registry, "spillkit_keys", chest="b", tier="memory") == 1
    assert value(registry, "spillkit_chest_info", chest="b", version=spillkit.__version__, policy="SizeAware",
                 codec="pickle") == 1  # fmt: skip
    a.close()
    assert value(registry, "spillkit_keys", chest="a", tier="memory") is None
    assert value(registry, "spillkit_keys", chest="b", tier="memory") == 1
    b.close()


def test_same_name_twice_is_a_clear_error(tmp_path: Path, registry: CollectorRegistry) -> None:
    a, b = make_chest(tmp_path, "a"), make_chest(tmp_path, "b")
    instrument(a, registry, name="etl")
    with pytest.raises(ValueError, match="'etl' is already instrumented"):
        instrument(b, registry, name="etl")
    with pytest.raises(ValueError, match="already instrumented as 'etl'"):
        instrument(a, registry, name="other")
    a["x"] = bytes(KB)
    assert value(registry, "spillkit_keys", chest="etl", tier="memory") == 1  # still the first Chest
    instrument(b, CollectorRegistry(), name="etl")  # another registry is another namespace of names
    instrument(b, registry, name="etl", namespace="other")  # and so is another metric namespace
    assert value(registry, "other_keys", chest="etl", tier="memory") == 0
    a.close()
    b.close()


def test_clash_with_another_collector_registers_nothing(tmp_path: Path, registry: CollectorRegistry) -> None:
    Gauge("spillkit_keys", "someone else's", registry=registry)
    chest = make_chest(tmp_path)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        instrument(chest, registry, name="etl")
    assert value(registry, "spillkit_memory_bytes", chest="etl", tier="memory") is None
    chest.close()


def families(registry: CollectorRegistry) -> set[str]:
    return {metric.name for metric in registry.collect()}


def test_close_unregisters_and_frees_the_name(tmp_path: Path, registry: CollectorRegistry) -> None:
    temporary, kept = Chest(available_memory=KB), make_chest(tmp_path)
    instrument(temporary, registry, name="t")
    instrument(kept, registry, name="k")
    temporary.close()  # a temporary Chest is dropped
    assert value(registry, "spillkit_keys", chest="t", tier="memory") is None
    assert value(registry, "spillkit_keys", chest="k", tier="memory") == 0
    kept.close()  # a Chest with a path is flushed
    assert list(registry.collect()) == []  # not even HELP and TYPE lines
    again = make_chest(tmp_path, "again")
    instrument(again, registry, name="k")  # the name is free again
    assert value(registry, "spillkit_keys", chest="k", tier="memory") == 0
    again.close()


def test_uninstrument_restores_the_registry(tmp_path: Path, registry: CollectorRegistry) -> None:
    before = families(registry)
    a, b = make_chest(tmp_path, "a"), make_chest(tmp_path, "b")
    instrument(a, registry, name="a")
    instrument(b, registry, name="b")
    assert uninstrument(a, registry)
    assert not uninstrument(a, registry)
    assert value(registry, "spillkit_keys", chest="b", tier="memory") == 0
    assert uninstrument(b, registry)
    assert families(registry) == before
    Gauge("spillkit_keys", "the names are free again", registry=registry)
    a.close()
    b.close()


def test_garbage_collected_chest_disappears(registry: CollectorRegistry) -> None:
    chest = Chest(available_memory=KB)
    instrument(chest, registry, name="gone")
    del chest
    gc.collect()
    assert value(registry, "spillkit_keys", chest="gone", tier="memory") is None


def test_nothing_runs_per_operation(tmp_path: Path, registry: CollectorRegistry) -> None:
    chest = make_chest(tmp_path)
    instrument(chest, registry, name="etl")
    assert chest.engine.listeners == []
    chest.close()


def test_scrapes_are_consistent_under_load(tmp_path: Path, registry: CollectorRegistry) -> None:
    chest = make_chest(tmp_path)
    instrument(chest, registry, name="busy")
    stop = threading.Event()

    def hammer() -> None:
        i = 0
        while not stop.is_set():
            chest[f"k{i % 7}"] = bytes(KB)
            chest.get(f"k{(i * 3) % 7}")
            i += 1

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        for _ in range(200):
            scrape = {(s.name, frozenset(s.labels.items())): s.value for m in registry.collect() for s in m.samples}

            def get(name: str, scrape: dict[Any, float] = scrape, **labels: str) -> float:
                return scrape[(name, frozenset({"chest": "busy", **labels}.items()))]

            for activity in ("disk-read", "disk-write"):
                inf = get("spillkit_disk_latency_seconds_bucket", activity=activity, le="+Inf")
                assert inf == get("spillkit_spill_count_total", activity=activity)
                assert get("spillkit_disk_latency_seconds_sum", activity=activity) == get(
                    "spillkit_spill_time_seconds_total", activity=activity
                )
            assert get("spillkit_keys", tier="memory") * KB == get("spillkit_memory_bytes", tier="memory")
    finally:
        stop.set()
        thread.join()
    chest.close()


def test_promtool_check_metrics_reports_nothing(tmp_path: Path, registry: CollectorRegistry) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian: apt-get install prometheus)")
    a, b = make_chest(tmp_path, "a"), make_chest(tmp_path, "b")
    instrument(a, registry, name="a")
    instrument(b, registry, name="b")
    run_sequence(a)
    text = generate_latest(registry)
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    a.close()
    b.close()


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO), **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=environment)


def test_import_registers_nothing() -> None:
    done = run_python(
        "from prometheus_client import REGISTRY\n"
        "before = {m.name for m in REGISTRY.collect()}\n"
        "import spillkit.metrics\n"
        "assert {m.name for m in REGISTRY.collect()} == before, 'import registered metrics'\n"
        "assert not any(m.name.startswith('spillkit') for m in REGISTRY.collect())\n"
    )
    assert done.returncode == 0, done.stderr


def test_serve_binds_loopback_and_stops(tmp_path: Path, registry: CollectorRegistry) -> None:
    chest = make_chest(tmp_path)
    instrument(chest, registry, name="served")
    server = serve(0, registry=registry)
    try:
        assert server.server_address[0] == "127.0.0.1"
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = response.read().decode()
        assert 'spillkit_memory_budget_bytes{chest="served"} 3000.0' in body
    finally:
        server.shutdown()
        server.server_close()
    chest.close()


def test_collector_can_be_registered_by_hand(tmp_path: Path, registry: CollectorRegistry) -> None:
    collector = ChestCollector(namespace="app_cache")
    registry.register(collector)
    chest = make_chest(tmp_path)
    collector.add("x", chest)
    assert collector.names() == ["x"]
    assert value(registry, "app_cache_memory_budget_bytes", chest="x") == 3 * KB
    assert collector.remove(chest)
    assert collector.names() == []
    chest.close()


def test_a_dask_worker_metrics_endpoint_serves_instrumented_chests() -> None:
    """A dask.distributed worker's /metrics serves the global registry, so instrument(chest) shows there."""
    distributed = pytest.importorskip("distributed")
    chest = Chest(available_memory=KB, sizeof=len)
    with distributed.LocalCluster(
        n_workers=1,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        scheduler_port=0,
        dashboard_address="127.0.0.1:0",
        worker_dashboard_address="127.0.0.1:0",
    ) as cluster:
        worker = next(iter(cluster.workers.values()))
        instrument(chest, name="worker-data")  # the global REGISTRY, as a worker's data= integration would
        try:
            chest["x"] = bytes(10)
            url = f"http://127.0.0.1:{worker.http_server.port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                body = response.read().decode()
        finally:
            assert uninstrument(chest)
    assert 'spillkit_keys{chest="worker-data",tier="memory"} 1.0' in body
    assert "dask_worker_memory_bytes" in body  # the worker's own metrics, on the same page
    chest.close()


def test_each_failure_counts_under_one_reason(tmp_path: Path, registry: CollectorRegistry) -> None:
    # Before: "disk" was every failure less the serialization ones, so a background write refused by the
    # quota counted as both disk and quota, and a flush that met a value set aside as unserializable as disk.
    np = pytest.importorskip("numpy")
    reasons = ("disk", "changed", "serialize", "quota")
    background = Chest(available_memory=2_000_000, available_disk=1_500_000, write_behind=True, pack_threshold=0)
    instrument(background, registry, name="b")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", spillkit.SpillWarning)
        for i in range(6):
            background[i] = np.ones(100_000)  # 800 kB each: the quota refuses the second write on
        background.wait_for_writes()
    counts = {r: value(registry, "spillkit_spill_errors_total", chest="b", reason=r) for r in reasons}
    assert counts["quota"] > 0 and counts["disk"] == 0 and counts["quota"] == background.stats.spill_failures
    background.drop()

    kept = Chest(path=tmp_path / "k", available_memory=1000, sizeof=lambda v: 600)
    instrument(kept, registry, name="k")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", spillkit.SpillWarning)
        kept["lock"] = threading.Lock()  # cannot be serialized: set aside when "other" needs the room
        kept["other"] = [1]
        with pytest.raises(spillkit.SpillError):
            kept.flush()  # meets the lock again
    counts = {r: value(registry, "spillkit_spill_errors_total", chest="k", reason=r) for r in reasons}
    # Set aside once, then the flush's failed write: two failures, both the value's (before helper-83, the
    # flush's was counted in spill_failures under no reason).
    assert counts == {"disk": 0, "changed": 0, "serialize": 2, "quota": 0}
    assert kept.stats.spill_failures == 2
    kept.drop()


@pytest.mark.parametrize("namespace", ["bad-name!", "1abc", "has space", "", "app:cache", "ünï"])
def test_a_namespace_that_is_no_metric_name_prefix_is_refused(
    tmp_path: Path, registry: CollectorRegistry, namespace: str
) -> None:
    """prometheus_client 0.26 takes any string: "has space" was served as has_space_* (helper-97)."""
    with pytest.raises(ValueError, match="namespace must be a Prometheus metric name prefix"):
        ChestCollector(namespace=namespace)
    chest = make_chest(tmp_path)
    with pytest.raises(ValueError, match="namespace must be a Prometheus metric name prefix"):
        instrument(chest, registry, name="c", namespace=namespace)
    instrument(chest, registry, name="c", namespace="has_space")  # the name is still free, and a good namespace works
    assert value(registry, "has_space_memory_budget_bytes", chest="c") == 3 * KB
    chest.close()


@pytest.mark.parametrize("name", [os.fsdecode(b"etl-\xff"), 7, None, b"etl"])
def test_a_name_prometheus_cannot_write_is_refused_and_every_scrape_still_works(
    tmp_path: Path, registry: CollectorRegistry, name: Any
) -> None:
    """Before (helper-106): accepted, and from then on every scrape of the whole registry raised."""
    Counter("app_requests", "the application's own metric", registry=registry).inc()
    good, other = make_chest(tmp_path / "good"), make_chest(tmp_path / "other")
    instrument(good, registry, name="good")
    with pytest.raises(ValueError, match="metrics name must be"):
        instrument(other, registry, name=name)
    text = generate_latest(registry).decode()
    assert "app_requests_total 1.0" in text and 'chest="good"' in text
    instrument(other, registry, name="other")  # the Chest is free to export under a good name
    assert value(registry, "spillkit_memory_budget_bytes", chest="other") == 3 * KB
    good.close()
    other.close()


class Gated:
    """A value whose pickling (on the writer thread) waits until the test lets it go."""

    entered = threading.Event()
    release = threading.Event()

    def __init__(self) -> None:
        self.data = os.urandom(MB)

    def __reduce__(self) -> tuple[Any, ...]:
        Gated.entered.set()
        assert Gated.release.wait(30)
        return (bytes, (self.data,))


MB = 2**20


def discarded(registry: CollectorRegistry, name: str) -> float | None:
    return value(registry, "spillkit_spill_bytes_total", chest=name, activity="discarded-write")


@pytest.mark.parametrize("how", ["delete", "overwrite"])
def test_a_background_write_dropped_for_its_keys_change_counts_its_bytes(
    tmp_path: Path, registry: CollectorRegistry, how: str
) -> None:
    # Before (helper-106): the whole value went to a temporary file, thrown away, and no counter had it.
    Gated.entered.clear()
    Gated.release.clear()
    chest = Chest(path=tmp_path / "c", available_memory=int(1.5 * MB), sizeof=lambda v: MB, write_behind=True)
    instrument(chest, registry, name="wb")
    chest["a"] = Gated()
    chest["b"] = b"x"  # over the budget: a's write goes to the writer thread
    assert Gated.entered.wait(30)
    if how == "delete":
        del chest["a"]  # cancels a's write, in flight
    else:
        chest["a"] = b"new"
    Gated.release.set()
    chest.wait_for_writes()
    assert chest.stats.spill_bytes < 1000  # a's value was never spilled (an overwrite spills a small one)
    assert MB < discarded(registry, "wb") < MB + 4096  # the value's file (and its header) was written
    assert_matches_stats(registry, chest, "wb")
    chest.close()


def test_a_write_made_again_because_the_value_changed_counts_the_first(
    tmp_path: Path, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    np = pytest.importorskip("numpy")
    import spillkit.storage

    array = np.zeros(MB // 8)
    write_all, calls = spillkit.storage._write_all, []

    def then_change(fd: int, frames: list[Any]) -> None:  # another thread changes the array as it is written
        write_all(fd, frames)
        calls.append(fd)
        if len(calls) == 1:
            array[0] = 1.0

    monkeypatch.setattr(spillkit.storage, "_write_all", then_change)
    chest = Chest(path=tmp_path / "c", available_memory=MB, pack_threshold=0)  # synchronous, writes checked
    instrument(chest, registry, name="sync")
    chest["x"] = array  # (memory: not over the budget yet)
    chest["y"] = np.ones(MB // 8)  # spills x, which is written twice
    assert len(calls) == 2
    assert chest.stats.spills == 1
    assert discarded(registry, "sync") == chest.stats.spill_bytes  # the first write, as large as the second
    assert float(chest["x"][0]) == 1.0
    chest.close()


def test_a_child_forked_while_the_writer_counts_discarded_bytes_counts_them_too(tmp_path: Path) -> None:
    # Before (helper-108): the child inherited the count's lock held, and hung at its first discard.
    chest = Chest(path=tmp_path / "c", available_memory=100, write_behind=True)
    store = getattr(chest._store, "inner", chest._store)
    with held_in_another_thread(store._discarded_lock):  # the writer thread, inside count_discarded
        pid = os.fork()
        if pid == 0:
            signal.alarm(10)  # a hang ends the child (SIGALRM), and fails the test
            store.count_discarded(10)
            os._exit(0 if store.discarded_bytes == 10 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    chest.drop()
