"""spillkit.distributed on real dask.distributed clusters of worker processes.

Each cluster: 2 worker processes (nannies), 1 thread each, 500 MiB memory limit each, on
127.0.0.1. The workload persists a 16,000 x 16,000 float64 array (2.05 GB, 250 chunks of
8 MB): about twice the workers' 1,000 MiB in all, so every worker spills, through its Chest's
own budget and through the memory monitor's ``evict()``. A weighted sum then reads every chunk
back and must equal its closed form.

The policy tests share one cluster (built with ``data=worker_storage``) and give its workers a
fresh Chest per policy, the way ``--preload spillkit.distributed_preload`` does; the ``(callable,
kwargs)`` form builds the cluster of the killed-worker test, and the command-line forms start
``dask worker`` processes. Worker processes are forked from a forkserver (dask's own test-suite
setting) so a cluster starts in about a second."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import cloudpickle
import dask
import dask.array as da
import numpy as np
import pytest
from dask.system import CPU_COUNT
from distributed import Client, LocalCluster, wait
from distributed.worker_memory import parse_memory_limit, worker_logger
from prometheus_client.parser import text_string_to_metric_families

import spillkit
from spillkit import Chest, SpillWarning, parse_bytes, policy_names
from spillkit.distributed import SUBDIRECTORY, storage_for, worker_budget, worker_storage

# Functions sent to workers (client.run) are pickled by value: worker processes need not
# be able to import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

MEMORY_LIMIT = "500 MiB"  # a worker process starts at ~110 MiB; dask's own default storage needs this much too
N, ROWS = 16_000, 64  # a 16,000 x 16,000 float64 array: 2.05 GB in 250 chunks of 8 MB, ~1.95x the two limits
M = N * N
# sum over i, j of (i * N + j) * (i + 1) = N**2 * sum(i * (i + 1)) + sum(j) * sum(i + 1)
EXPECTED = N * N * (N - 1) * N * (N + 1) / 3 + N * (N - 1) / 2 * N * (N + 1) / 2
TIMEOUT = 60  # seconds for any one wait; every wait below is bounded
T = TypeVar("T")


def workload() -> tuple[Any, Any]:
    """(x, a row-weighted sum of x) with x[i, j] = i * N + j.

    Row i is weighted by i + 1 (a second array, other keys), so a chunk that came back from
    disk under the wrong key, or damaged, changes the sum.
    """
    x = da.arange(M, chunks=ROWS * N, dtype=np.float64).reshape(N, N)
    rows = da.arange(1, N + 1, chunks=ROWS, dtype=np.float64)
    return x, (x * rows[:, None]).sum()


@pytest.fixture(scope="module", autouse=True)
def _forkserver() -> Iterator[None]:
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        yield


def poll(check: Callable[[], T], what: str, timeout: float = TIMEOUT) -> T:
    """Call ``check`` until it returns something true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {value!r})")
        time.sleep(0.1)


@contextlib.contextmanager
def cluster(tmp_path: Path, data: Any = None, n_workers: int = 2, **kwargs: Any) -> Iterator[Client]:
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=kwargs.pop("memory_limit", MEMORY_LIMIT),
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",  # ":0" listens on every interface
            local_directory=str(tmp_path),
            silence_logs=logging.ERROR,
            data=data,
            **kwargs,
        ) as local,
        Client(local, timeout=TIMEOUT) as client,
    ):
        if n_workers:
            client.wait_for_workers(n_workers, timeout=TIMEOUT)
        yield client


def storage_facts(dask_worker: Any) -> dict[str, Any]:
    data = dask_worker.data
    return {
        "type": type(data).__name__,
        "policy": type(data.policy).__name__,
        "budget": data.available_memory,
        "path": data.path,
        "local_directory": dask_worker.local_directory,
        "http_port": getattr(getattr(dask_worker, "http_server", None), "port", None),
        "name": dask_worker.name,
    }


def spill_counters(dask_worker: Any) -> dict[str, Any]:
    data = dask_worker.data
    return {
        "spilled_total": tuple(data.spilled_total),
        "spills": data.stats.spills,
        "loads": data.stats.loads,
        "keys": len(data),
        "status": dask_worker.status.name,
    }


def contains_never_loads(dask_worker: Any) -> bool:
    """``key in data`` on every spilled key (and an absent one) answers without a disk read."""
    data = dask_worker.data
    spilled = data.engine.spilled_keys
    loads = data.stats.loads
    found = all(key in data for key in spilled)
    absent = ("no-such-key", 0) in data
    return bool(spilled) and found and not absent and data.stats.loads == loads and not set(spilled) & set(data.fast)


def scheduler_spilled(dask_scheduler: Any) -> dict[str, int]:
    return {address: ws.metrics["spilled_bytes"]["disk"] for address, ws in dask_scheduler.workers.items()}


def check_workload(client: Client) -> None:
    """Persist x (spilling), check what workers and scheduler report, compute the sum, release x."""
    x, weighted = workload()
    x = client.persist(x)
    wait(x, timeout=TIMEOUT)
    after_persist = client.run(spill_counters)
    assert all(c["spilled_total"][0] > 0 and c["spilled_total"][1] > 0 for c in after_persist.values()), after_persist
    # The worker's own /metrics counts spilled tasks on disk (it reads len(data.slow); before: all in memory).
    for fact in client.run(storage_facts).values():
        assert metric_samples(fact["http_port"]).get(("dask_worker_tasks", (("state", "disk"),)), 0) > 0
    # The scheduler hears spilled bytes in the workers' heartbeats.
    poll(lambda: all(client.run_on_scheduler(scheduler_spilled).values()), "spilled bytes on the scheduler")
    assert all(client.run(contains_never_loads).values())

    result = client.compute(weighted).result(timeout=TIMEOUT)
    assert result == pytest.approx(EXPECTED, rel=1e-12)

    # Releasing x deletes every key; workers test membership first, which must never load.
    loads = {address: c["loads"] for address, c in client.run(spill_counters).items()}
    del x
    poll(lambda: all(c["keys"] == 0 for c in client.run(spill_counters).values()), "x to be released")
    final = client.run(spill_counters)
    assert {address: c["loads"] for address, c in final.items()} == loads
    assert all(c["spilled_total"] == (0, 0) for c in final.values())
    # No worker is left paused: the memory monitor could always evict.
    poll(lambda: all(c["status"] == "running" for c in client.run(spill_counters).values()), "workers to run")


def use_storage(options: dict[str, Any], dask_worker: Any) -> str:
    """Give the worker a new, empty Chest, as ``--preload spillkit.distributed_preload`` does; its policy."""
    from spillkit.distributed_preload import dask_setup

    dask_worker.data.drop()  # empty (the last test released everything); frees its metrics label
    with dask.config.set({"spillkit.worker": options}):
        dask_setup(dask_worker)
    return type(dask_worker.data.policy).__name__


def metric_samples(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples a worker's own /metrics endpoint serves now."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """One cluster for the policy tests (a cluster per policy would take a minute more)."""
    with cluster(tmp_path_factory.mktemp("shared"), worker_storage) as client:
        yield client


def test_callable_form_finds_the_worker_memory_limit(shared: Client) -> None:
    target = dask.config.get("distributed.worker.memory.target")
    for fact in shared.run(storage_facts).values():
        assert fact["type"] == "Chest"
        assert fact["policy"] == "LRU"
        assert fact["budget"] == int(parse_bytes(MEMORY_LIMIT) * target)  # found without memory_limit=
        assert fact["path"] == os.path.join(fact["local_directory"], SUBDIRECTORY)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("policy", policy_names())
def test_workload_twice_the_memory_limit(policy: str, shared: Client) -> None:
    names = set(shared.run(use_storage, {"policy": policy}).values())
    assert names == {type(spillkit.make_policy(policy)).__name__}
    pids = shared.run(os.getpid)
    facts = shared.run(storage_facts)
    check_workload(shared)
    assert shared.run(os.getpid) == pids, "a worker was restarted (its nanny kills it over 95% memory)"
    # Each worker exports its own Chest on its own /metrics endpoint.
    for fact in facts.values():
        samples = metric_samples(fact["http_port"])
        chest = ("chest", f"dask-worker-{fact['name']}")
        assert samples[("spillkit_memory_budget_bytes", (chest,))] == fact["budget"]
        assert samples[("spillkit_spill_bytes_total", (("activity", "disk-write"), chest))] > 0
        assert ("dask_worker_memory_bytes", (("type", "spilled"),)) in samples  # dask's own are still there


@pytest.mark.timeout(120)
def test_memory_monitor_alone_keeps_workers_running(tmp_path: Path) -> None:
    """With a budget far above the limit the Chest never spills by itself: only the worker's memory
    monitor, through ``fast`` and ``evict()``, keeps memory down. A mapping without them leaves the
    workers paused and the job hanging; here it must finish.

    The worker's monitor checks every 10 ms here, its nanny's every 100 ms (dask's default). Both at
    100 ms, a worker making an 8 MB chunk every few ms could grow from under 70% of its limit
    (spill) past 95% (its nanny kills it) between two of its monitor's checks: 1 clean-clone CI
    run of about 20 lost a worker that way (session 22). dask's own storage never relies on its
    monitor alone; it spills at every put."""
    worker_config = {"distributed.worker.memory.monitor-interval": "10ms"}
    with cluster(tmp_path, worker_storage, config=worker_config) as client:
        assert set(client.run(lambda: dask.config.get("distributed.worker.memory.monitor-interval")).values()) == {
            "10ms"
        }
        client.run(use_storage, {"policy": "lru", "available-memory": "64 GiB"})
        pids = client.run(os.getpid)
        check_workload(client)
        assert client.run(os.getpid) == pids, "a worker was restarted (its nanny kills it over 95% memory)"
        assert all(spills > 0 for spills in client.run(lambda dask_worker: dask_worker.data.stats.spills).values())


def four_megabytes(i: int) -> Any:
    return np.full(500_000, i, dtype=np.float64)


def twelve_megabytes() -> Any:
    return np.full(1_500_000, 12, dtype=np.float64)


def quota_facts(dask_worker: Any) -> dict[str, Any]:
    data = dask_worker.data
    return {
        "quota_errors": data.stats.quota_errors,
        "over_budget": data.memory_bytes > data.available_memory,
        "disk": data.disk_bytes,
        "cap": data._store.available_disk,
    }


def test_a_full_disk_quota_keeps_values_in_memory_and_fails_no_task(shared: Client) -> None:
    # Before (helper-60): a spill the quota refused raised DiskQuotaExceeded into whichever put made
    # room, so unrelated tasks erred (6 of 10), each naming the same victim. SpillBuffer keeps such
    # values in memory at max-spill; so does the Chest now.
    shared.run(use_storage, {"available-memory": "8 MB", "available-disk": "10 MB"})
    try:
        futures = shared.map(four_megabytes, range(12), pure=False)
        big = shared.submit(twelve_megabytes, pure=False)  # over the budget and the disk cap: kept in memory
        wait([*futures, big], timeout=TIMEOUT)
        assert [f.status for f in [*futures, big]] == ["finished"] * 13  # (helper-64: the big one erred)
        assert [float(f.result()[0]) for f in futures] == [float(i) for i in range(12)]
        assert float(big.result()[-1]) == 12.0
        facts = list(shared.run(quota_facts).values())
        assert all(f["cap"] == 10_000_000 and f["disk"] <= 10_000_000 for f in facts)
        assert sum(f["quota_errors"] for f in facts) > 0 and any(f["over_budget"] for f in facts)
        del futures, big
        poll(lambda: all(c["keys"] == 0 for c in shared.run(spill_counters).values()), "the arrays to be released")
    finally:
        shared.run(use_storage, {})


class OddlyMeasured:
    """A result whose size a function registered with dask.sizeof (in the task that makes it) gives as -5."""


def oddly_measured() -> OddlyMeasured:
    from dask.sizeof import sizeof

    sizeof.register(OddlyMeasured)(lambda value: -5)  # (here: the class a worker unpickles is the task's own)
    return OddlyMeasured()


def unregister_oddly_measured(dask_worker: Any) -> None:
    from dask.sizeof import sizeof

    for kind in [kind for kind in sizeof._lookup if getattr(kind, "__name__", "") == "OddlyMeasured"]:
        sizeof._lookup.pop(kind)


def test_a_registered_sizeof_that_gives_no_size_fails_no_task(shared: Client) -> None:
    # Before (helper-105): the Chest refused -5 (or NaN, inf) and the task failed; SpillBuffer stores it.
    try:
        future = shared.submit(oddly_measured, pure=False)
        wait([future], timeout=TIMEOUT)
        assert future.status == "finished" and type(future.result()).__name__ == "OddlyMeasured"
        del future
        poll(lambda: all(c["keys"] == 0 for c in shared.run(spill_counters).values()), "the value to be released")
    finally:
        shared.run(unregister_oddly_measured)


def exported_chests() -> set[str]:
    from prometheus_client import REGISTRY

    return {sample.labels["chest"] for family in REGISTRY.collect() if family.name == "spillkit_memory_bytes"
            for sample in family.samples}  # fmt: skip


@pytest.mark.timeout(120)
def test_an_in_process_workers_chest_is_dropped_when_the_worker_closes(tmp_path: Path) -> None:
    # Before (helper-60): a closed in-process worker kept its Chest open (a descriptor on its deleted
    # directory) and exported (disk bytes of files dask had deleted) until collected; each new cluster
    # added a label.
    before = exported_chests()
    with (
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            dashboard_address="127.0.0.1:0",  # (the inproc:// transport has no socket, but the HTTP servers do:
            worker_dashboard_address="127.0.0.1:0",  # with None they listened on every interface)
            memory_limit="1 GiB",
            local_directory=str(tmp_path),
            silence_logs=logging.ERROR,
            data=(worker_storage, {"available_memory": "8 MB"}),
        ) as local,  # fmt: skip
        Client(local, timeout=TIMEOUT) as client,
    ):
        futures = client.map(four_megabytes, range(6), pure=False)
        wait(futures, timeout=TIMEOUT)
        (chest,) = [worker.data for worker in local.workers.values()]
        assert chest.engine.spilled_keys and not chest.closed
        (label,) = exported_chests() - before  # this worker's Chest, exported in this process
        del futures
    assert chest.closed and not os.path.exists(chest.path)
    assert label not in exported_chests()


def preload_over_worker_storage(dask_worker: Any) -> tuple[bool, bool, list[str]]:
    """Run the preload on a worker whose storage is already a Chest: is that Chest closed, replaced; the labels."""
    from spillkit.distributed_preload import dask_setup

    old = dask_worker.data
    dask_setup(dask_worker)
    labels = sorted(name for name in exported_chests() if name.startswith(f"dask-worker-{dask_worker.name}"))
    return old.closed, dask_worker.data is not old, labels


def test_the_preload_over_worker_storage_drops_the_chest_it_replaces(shared: Client) -> None:
    # Before (helper-64): data=worker_storage plus --preload left the first, empty Chest open for the
    # worker's lifetime, holding its metrics label: the new Chest was exported under a fallback label.
    for name, (closed, replaced, labels) in zip(
        shared.run(lambda dask_worker: dask_worker.name).values(),
        shared.run(preload_over_worker_storage).values(),
        strict=True,
    ):
        assert closed and replaced and labels == [f"dask-worker-{name}"]
    shared.run(use_storage, {})


def memory_facts(dask_worker: Any) -> dict[str, Any]:
    manager = dask_worker.memory_manager
    return {
        "limit": manager.memory_limit,
        "target": manager.memory_target_fraction,
        "budget": dask_worker.data.available_memory,
        "cap": dask_worker.data._store.available_disk,
        "nthreads": dask_worker.state.nthreads,
    }


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("max_spill", "cap"), [("10 MB", 10_000_000), (0, 0)])
def test_max_spill_caps_the_disk_and_auto_is_the_workers_share(tmp_path: Path, max_spill: Any, cap: int) -> None:
    # Before (helper-60): max-spill was ignored (no cap), and memory_limit="auto" given to worker_storage
    # was parsed as the whole machine's (CPU_COUNT threads), not the worker's one thread: twice the budget.
    # Before (helper-105): max-spill 0 was taken for no cap, where SpillBuffer spills nothing.
    options = {"memory_limit": "auto", "instrument_metrics": False}
    with (
        dask.config.set({"distributed.worker.memory.max-spill": max_spill}),
        cluster(tmp_path, (worker_storage, options), n_workers=1, memory_limit="auto") as client,
    ):
        (facts,) = client.run(memory_facts).values()
        if not cap:  # the memory monitor's evict() finds nothing it may write
            future = client.submit(twelve_megabytes, pure=False)
            assert float(future.result()[-1]) == 12.0
            (evicted,) = client.run(evict_once).values()
            (facts_after,) = client.run(quota_facts).values()
            assert evicted == -1 and facts_after["quota_errors"] > 0 and facts_after["disk"] == 0
    assert facts["nthreads"] == 1
    assert facts["budget"] == int(facts["limit"] * facts["target"])
    assert facts["cap"] == cap


def evict_once(dask_worker: Any) -> int:
    return int(dask_worker.data.evict())


def worker_pid(dask_worker: Any) -> tuple[int, int]:
    return os.getpid(), dask_worker.data.stats.spills


@pytest.mark.timeout(180)
def test_killed_worker_is_replaced_and_result_correct(tmp_path: Path) -> None:
    with cluster(tmp_path, (worker_storage, {"policy": "cost"})) as client:
        before = set(client.scheduler_info()["workers"])
        victim = sorted(before)[0]
        x, weighted = workload()
        x = client.persist(x)
        # Kill the worker once it has spilled, while the persist is still running.
        pid, _ = poll(lambda: (info := client.run(worker_pid, workers=[victim])[victim])[1] > 0 and info, "a spill")
        assert not all(f.status == "finished" for f in client.futures_of(x)), "killed too late to test recovery"
        os.kill(pid, signal.SIGKILL)
        # The nanny starts a new worker process; the scheduler recomputes the lost chunks.
        poll(lambda: len(w := set(client.scheduler_info()["workers"])) == 2 and w != before, "a replacement worker")
        wait(x, timeout=TIMEOUT)
        assert client.compute(weighted).result(timeout=TIMEOUT) == pytest.approx(EXPECTED, rel=1e-12)
        assert {fact["type"] for fact in client.run(storage_facts).values()} == {"Chest"}


@pytest.mark.timeout(120)
def test_dask_worker_command_line_and_config_forms(tmp_path: Path) -> None:
    """The documented ``dask worker`` forms: --preload-nanny; --no-nanny --preload; only dask's config."""
    env = dict(os.environ, DASK_SPILLKIT__WORKER__POLICY="size")
    root = str(Path(spillkit.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    configured = dict(env, DASK_DISTRIBUTED__WORKER__PRELOAD='["spillkit.distributed_preload"]')
    with cluster(tmp_path, n_workers=0) as client:
        address = client.scheduler.address
        common = ["--nthreads", "1", "--memory-limit", "500MiB", "--host", "127.0.0.1", "--no-dashboard"]
        forms = [
            (env, ["--preload-nanny", "spillkit.distributed_preload", "--name", "nannied"]),
            (env, ["--no-nanny", "--preload", "spillkit.distributed_preload", "--name", "bare"]),
            (configured, ["--name", "configured"]),
        ]
        processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "distributed.cli.dask_worker",
                    address,
                    *common,
                    "--local-directory",
                    str(tmp_path / form[-1]),
                    *form,
                ],
                env=form_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for form_env, form in forms
        ]
        try:
            client.wait_for_workers(len(forms), timeout=TIMEOUT)
            facts = sorted(client.run(storage_facts).values(), key=lambda fact: str(fact["name"]))
            assert [(f["name"], f["type"], f["policy"]) for f in facts] == [
                ("bare", "Chest", "SizeAware"),
                ("configured", "Chest", "SizeAware"),
                ("nannied", "Chest", "SizeAware"),
            ]
            budget = int(parse_bytes("500MiB") * dask.config.get("distributed.worker.memory.target"))
            assert {f["budget"] for f in facts} == {budget}
            assert client.submit(sum, [1, 2, 3], pure=False).result(timeout=TIMEOUT) == 6
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)


@pytest.mark.timeout(120)
def test_a_misspelt_preload_option_fails_the_nannys_worker_with_its_message(tmp_path: Path) -> None:
    # Before (helper-85): dask_setup raised in the nanny, dask's PreloadManager logged it and started the
    # worker anyway, on dask's own SpillBuffer: a typo in the options left the cluster without spillkit.
    with (
        dask.config.set({"spillkit.worker": {"polcy": "cost"}}),
        pytest.raises(RuntimeError, match="failed to start") as raised,
        cluster(tmp_path, n_workers=1, preload_nanny=["spillkit.distributed_preload"]),
    ):
        pass
    assert "unknown spillkit.worker option(s) ['polcy']" in repr(raised.value.__cause__)


# ---- without a cluster -------------------------------------------------------------------


def test_budget_outside_a_worker(tmp_path: Path) -> None:
    target = dask.config.get("distributed.worker.memory.target")
    assert worker_budget("1 GiB") == int(2**30 * target)
    with pytest.warns(SpillWarning, match="no dask worker"):
        machine = worker_budget()
    assert 0 < machine < sys.maxsize
    with dask.config.set({"distributed.worker.memory.target": False}):
        assert worker_budget("1 GiB") == sys.maxsize  # as SpillBuffer: only evict() spills
    with dask.config.set({"distributed.worker.memory.max-spill": "10 MB"}):  # (helper-105: ignored outside a worker)
        chest = worker_storage(str(tmp_path), memory_limit="100 MiB", policy="lfu", instrument_metrics=False)
    try:
        assert chest._store.available_disk == 10_000_000
        assert isinstance(chest, Chest)
        assert chest.available_memory == int(100 * 2**20 * target)
        assert chest.path == str(tmp_path / SUBDIRECTORY)
        assert chest.evict() == -1  # nothing to spill: -1, never an exception
        assert chest.spilled_total == (0, 0)
    finally:
        chest.drop()


def test_a_worker_chest_whose_labels_are_taken_says_why_it_is_not_exported(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    chests = [worker_storage(str(tmp_path / str(n) / "w"), memory_limit="100 MiB", name="same") for n in range(2)]
    try:  # the first takes "same", the second "same-w"; the third finds both taken
        with pytest.warns(SpillWarning, match="not exported .*'same-w' is already instrumented"):
            chests.append(worker_storage(str(tmp_path / "2" / "w"), memory_limit="100 MiB", name="same"))
        chests.append(worker_storage(str(tmp_path / "3" / "w"), memory_limit="100 MiB", name=3))  # type: ignore[arg-type]
        assert "3" in exported_chests()  # as a dask worker's int name is (helper-108: exported as "3-w")
    finally:
        for chest in chests:
            chest.drop()


def test_preload_rejects_unknown_options() -> None:
    from spillkit.distributed_preload import storage_options

    with dask.config.set({"spillkit.worker": {"policy": "cost", "available-memory": "1 GiB"}}):
        assert storage_options() == {"policy": "cost", "available_memory": "1 GiB"}
    with dask.config.set({"spillkit.worker": {"polcy": "cost"}}), pytest.raises(ValueError, match="polcy"):
        storage_options()
    # Before (helper-88): a section that is no mapping raised TypeError ('bool' object is not iterable),
    # which the nanny's preload did not turn into a failed worker; "cost" listed its letters as options.
    for section in (True, "cost"):
        with dask.config.set({"spillkit.worker": section}), pytest.raises(ValueError, match="must be a mapping"):
            storage_options()


def test_import_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "spillkit.distributed")
    monkeypatch.setitem(sys.modules, "distributed.worker_memory", None)
    with pytest.raises(ImportError, match=r'pip install "spillkit\[dask\]"'):
        importlib.import_module("spillkit.distributed")


def slow_eight_megabytes(i: int) -> Any:
    time.sleep(0.5)
    return np.full(1_000_000, float(i))


def fast_eight_megabytes(i: int) -> Any:
    return np.full(1_000_000, float(i))


def given_costs(dask_worker: Any) -> dict[str, Any]:
    chest = dask_worker.data
    return {
        "costs": {str(key): chest.engine.given_cost(key) for key in chest},
        "spilled": [str(key) for key in chest.engine.spilled_keys],
    }


@pytest.mark.timeout(180)
def test_a_workers_chest_is_told_each_tasks_compute_time_so_cost_keeps_the_slow_results(tmp_path: Path) -> None:
    # helper-127: nothing gave a worker's Chest any cost, so policy="cost" spilled four one-second results
    # first, as lru does. The worker's own record of each task's compute time is now its result's cost.
    with cluster(tmp_path, (worker_storage, {"policy": "cost"}), n_workers=1) as client:
        slow = client.map(slow_eight_megabytes, range(4), pure=False)
        wait(slow, timeout=TIMEOUT)
        fast = client.map(fast_eight_megabytes, range(100, 150), pure=False)  # 400 MB through a ~300 MB budget
        wait(fast, timeout=TIMEOUT)
        (facts,) = client.run(given_costs).values()
        slow_keys = {future.key for future in slow}
        assert all(facts["costs"][key] >= 0.45 for key in slow_keys), facts["costs"]
        fast_costs = [facts["costs"][future.key] for future in fast]
        assert all(cost is not None and cost < 0.45 for cost in fast_costs)
        assert facts["spilled"] and not slow_keys & set(facts["spilled"])  # the fast results went to disk instead
        assert [float(x[0]) for x in client.gather(slow)] == [0.0, 1.0, 2.0, 3.0]


# ---- storage_for: the preload's builder, for a worker already built --------------------------------


@contextlib.contextmanager
def in_process_worker(tmp_path: Path, **config: Any) -> Iterator[Any]:
    """One in-process worker (1 thread, 1 GiB limit; dask's config as given): the Worker object itself."""
    with (
        dask.config.set(config),
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            dashboard_address="127.0.0.1:0",
            worker_dashboard_address="127.0.0.1:0",
            memory_limit="1 GiB",
            local_directory=str(tmp_path),
            silence_logs=logging.ERROR,
        ) as local,  # fmt: skip
    ):
        (worker,) = local.workers.values()
        yield worker


def test_storage_for_builds_the_chest_from_the_workers_own_limit_directory_and_max_spill(tmp_path: Path) -> None:
    # Catches: storage_for ignoring the worker it is given (the budget from the whole machine, with a
    # warning; the files outside the worker's directory; no max-spill cap) or a Chest left open after the
    # worker closes.
    with (
        in_process_worker(tmp_path, **{"distributed.worker.memory.max-spill": "10 MB"}) as worker,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("error", SpillWarning)  # no "no dask worker is being built"
        chest = storage_for(worker, policy="cost", instrument_metrics=False)
        target = worker.memory_manager.memory_target_fraction
        assert chest.available_memory == int(2**30 * target)
        assert chest.path == os.path.join(worker.local_directory, SUBDIRECTORY)
        assert type(chest.policy).__name__ == "CostAware"
        assert chest._store.available_disk == 10_000_000
        chest["x"] = b"x" * 100
        assert chest["x"] == b"x" * 100
    assert chest.closed and not os.path.exists(chest.path)


def test_storage_for_shares_the_machine_by_the_workers_threads(tmp_path: Path) -> None:
    # Catches: "auto" (and fractions) computed for all the machine's cores instead of the worker's one thread.
    if CPU_COUNT < 2:
        pytest.skip("one core: a worker's share and the machine are the same")
    with in_process_worker(tmp_path) as worker:
        chest = storage_for(worker, memory_limit="auto", instrument_metrics=False)
        target = worker.memory_manager.memory_target_fraction
        assert chest.available_memory == int(parse_memory_limit("auto", 1, logger=worker_logger) * target)
        assert chest.available_memory < int(parse_memory_limit("auto", CPU_COUNT, logger=worker_logger) * target)


def test_storage_for_forgets_its_worker_afterwards_even_when_it_fails(tmp_path: Path) -> None:
    # Catches: the worker left in the context variable after a failed build, so that a later worker_storage
    # outside any worker would take this worker's limit and be dropped when this worker closes.
    with in_process_worker(tmp_path) as worker:
        with pytest.raises(ValueError, match="no-such-policy"):
            storage_for(worker, policy="no-such-policy", instrument_metrics=False)
        with pytest.warns(SpillWarning, match="no dask worker is being built"):
            worker_budget()  # outside any worker again
        other = worker_storage(str(tmp_path / "elsewhere"), memory_limit="2 GiB", instrument_metrics=False)
        assert other.available_memory == int(2 * 2**30 * dask.config.get("distributed.worker.memory.target"))
    assert not other.closed  # not the worker's Chest: not dropped with it
    other.drop()
