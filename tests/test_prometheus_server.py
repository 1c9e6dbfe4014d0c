"""Integration: a real Prometheus server scrapes spillkit's exporter; the dashboard's queries return data.

Prometheus (Debian's ``prometheus`` package; ``.ci/run`` installs it) runs in the
foreground on 127.0.0.1 with a temporary config and storage, and is stopped by
its process id. Every wait is bounded.
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from spillkit import Chest
from spillkit.metrics import instrument, serve

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "dashboards" / "spillkit.json"
WAIT = 60.0  # seconds: the bound on every wait
KB = 1000

needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus not installed (Debian: apt-get install prometheus)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Call ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, ValueError) as error:  # not up yet, or an HTTP error
            last = error
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


class Prometheus:
    """Prometheus' HTTP API on 127.0.0.1 (urllib, loopback only)."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise ValueError(f"{url}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/query", query=expr)["result"])

    def query_range(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step="1")
        return list(data["result"])


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[int], Prometheus]]:
    """``start(exporter_port)`` runs Prometheus scraping 127.0.0.1:exporter_port every second."""
    started: list[subprocess.Popen[bytes]] = []

    def start(exporter_port: int) -> Prometheus:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: spillkit\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{exporter_port}']\n"
        )
        log_path = tmp_path / "prometheus.log"
        command = [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        with open(log_path, "wb") as log:  # a file, not a pipe: a full pipe would block the server
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        started.append(process)
        server = Prometheus(port)

        def ready() -> bool:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited with {process.returncode}:\n{log_path.read_text()}")
            with urllib.request.urlopen(f"{server.base}/-/ready", timeout=5) as response:
                return response.status == 200

        wait_for("Prometheus to be ready", ready)
        return server

    yield start
    for process in started:  # stop the server by its pid: terminate, wait, kill if needed
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=20)


def expected_series(chest: Chest) -> dict[str, float]:
    """PromQL selector -> the value it must have, from the Chest and its Stats."""
    s = chest.stats
    c = 'chest="it"'
    return {
        f'spillkit_spill_count_total{{{c},activity="memory-read"}}': s.hits,
        f'spillkit_spill_count_total{{{c},activity="disk-read"}}': s.loads,
        f'spillkit_spill_count_total{{{c},activity="disk-write"}}': s.disk_writes,
        f'spillkit_spill_bytes_total{{{c},activity="disk-read"}}': s.load_bytes,
        f'spillkit_spill_bytes_total{{{c},activity="disk-write"}}': s.spill_bytes,
        f'spillkit_spill_time_seconds_total{{{c},activity="disk-read"}}': s.load_seconds,
        f'spillkit_spill_time_seconds_total{{{c},activity="disk-write"}}': s.spill_seconds,
        f'spillkit_disk_latency_seconds_count{{{c},activity="disk-write"}}': sum(s.write_latency),
        f'spillkit_disk_latency_seconds_count{{{c},activity="disk-read"}}': sum(s.read_latency),
        f"spillkit_misses_total{{{c}}}": s.misses,
        f'spillkit_spill_errors_total{{{c},reason="serialize"}}': s.unspillable,
        f'spillkit_memory_bytes{{{c},tier="memory"}}': chest.memory_bytes,
        f'spillkit_memory_bytes{{{c},tier="disk"}}': chest.disk_bytes,
        f'spillkit_keys{{{c},tier="memory"}}': len(chest.inmem),
        f'spillkit_keys{{{c},tier="disk"}}': len(chest) - len(chest.inmem),
    }


def dashboard_queries() -> list[str]:
    """Every ``expr`` in the dashboard, with its variables substituted."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                found.append(node["expr"])
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(json.loads(DASHBOARD.read_text()))
    substituted = [e.replace("$__rate_interval", "5s").replace("${chest}", "it").replace("$chest", "it") for e in found]
    assert substituted and not any("$" in e for e in substituted), substituted
    return substituted


@needs_prometheus
@pytest.mark.timeout(240)
def test_prometheus_scrapes_what_stats_say(tmp_path: Path, prometheus: Callable[[int], Prometheus]) -> None:
    registry = CollectorRegistry()
    chest = Chest(path=tmp_path / "chest", available_memory=3 * KB, sizeof=len)
    instrument(chest, registry, name="it")
    exporter = serve(0, registry=registry)
    try:
        server = prometheus(exporter.server_port)
        wait_for("the first scrape", lambda: server.query('spillkit_keys{chest="it"}'))
        began = time.time()
        # The known sequence: 12 puts into room for 3, reads of hot and cold keys, misses.
        for i in range(12):
            chest[f"k{i}"] = bytes([i]) * KB
        for i in (11, 10, 0, 1, 11, 5, 0):
            assert chest[f"k{i}"] == bytes([i]) * KB
        for _ in range(3):
            assert chest.get("absent") is None
        s = chest.stats
        assert s.hits > 0 and s.loads > 0 and s.misses == 3 and s.disk_writes > 0
        expected = expected_series(chest)

        def scraped_equals_stats() -> bool:
            for selector, want in expected.items():
                result = server.query(selector)
                if len(result) != 1 or float(result[0]["value"][1]) != want:
                    return False
            return True

        wait_for("Prometheus' values to equal chest.stats", scraped_equals_stats)
        chests = server.get("/api/v1/label/chest/values", **{"match[]": "spillkit_chest_info"})
        assert chests == ["it"]  # what the dashboard's chest variable (label_values) offers

        def empty_dashboard_queries() -> list[str]:
            # rate() needs two scrapes in its window: a query may have no finite value yet (a slow machine)
            empty = []
            for expr in dashboard_queries():
                result = server.query_range(expr, began - 2, time.time())
                values = [float(v) for series in result for _, v in series["values"]]
                if not any(math.isfinite(v) for v in values):
                    empty.append(expr)
            return empty

        wait_for("data for every dashboard query", lambda: not empty_dashboard_queries())
    finally:
        exporter.shutdown()
        exporter.server_close()
        chest.close()


def read_line(process: subprocess.Popen[str], pattern: str, deadline: float) -> re.Match[str]:
    """Read the process' stdout until a line matches ``pattern`` (bounded by ``deadline``)."""
    assert process.stdout is not None
    seen: list[str] = []
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            line = process.stdout.readline()
            if not line:
                break
            seen.append(line)
            if match := re.search(pattern, line):
                return match
    pytest.fail(f"no line matching {pattern!r} in time; output so far: {''.join(seen)!r}")


@pytest.mark.timeout(120)
def test_demo_serves_metrics(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "spillkit", "demo", "--serve-metrics", f"127.0.0.1:{port}", "--seconds", "4"]
    command += ["--arrays", "12", "--array-size", "16 KiB", "--budget", "64 KiB", "--reads", "30"]
    command += ["--policy", "lru", "--policy", "cost"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        match = read_line(process, r"http://127\.0\.0\.1:(\d+)/metrics", time.monotonic() + WAIT)
        assert int(match.group(1)) == port

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                body = str(response.read().decode())
            # the Chests are made (and instrumented) by the demo's threads just after it starts serving
            return body if body.count("spillkit_chest_info{") == 2 else ""

        body = wait_for("the demo's two Chests on /metrics", scrape)
        for policy, name in (("lru", "LRU"), ("cost", "CostAware")):
            assert re.search(rf'spillkit_chest_info{{chest="{policy}",codec="pickle",policy="{name}"', body), body
            assert f'spillkit_spill_count_total{{activity="disk-write",chest="{policy}"}}' in body
        output, _ = process.communicate(timeout=WAIT)
        assert process.returncode == 0, output
        assert re.search(r"^policy\s+hits\s+loads", output, re.MULTILINE), output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=20)
