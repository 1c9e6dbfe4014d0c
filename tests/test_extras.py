"""spillkit.extras: without an optional package, the module that needs it names the pip install.

Each case runs in a fresh interpreter where the package is made unimportable (``sys.modules[name]
= None``, as if not installed), imports that module alone, and checks the one-line message.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from spillkit.extras import missing_extra

REPO = Path(__file__).resolve().parent.parent
OPTIONAL = ["dask", "distributed", "prometheus_client", "matplotlib", "numpy", "scipy", "lz4", "zstandard", "pandas"]


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_message() -> None:
    error = missing_extra("spillkit.metrics", "prometheus-client", "metrics")
    assert isinstance(error, ImportError)
    assert str(error) == 'spillkit.metrics needs prometheus-client: pip install "spillkit[metrics]"'


def test_import_spillkit_loads_no_optional_package() -> None:
    done = run_python(f"""
        import sys
        import spillkit, spillkit.cli, spillkit.workloads, spillkit.replay, spillkit.bounds, spillkit.plots
        loaded = sorted(name for name in {OPTIONAL!r} if name in sys.modules)
        print(loaded)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# (module imported, packages hidden, the message's first words): every integration module a user
# may import directly, each reached without going through another that would fail first.
CASES = [
    ("spillkit.dask", ["dask"], 'spillkit.dask needs dask: pip install "spillkit[dask]"'),
    ("spillkit.dask_callback", ["dask"], 'spillkit.dask needs dask: pip install "spillkit[dask]"'),
    ("spillkit.dask_record", ["dask"], 'spillkit.dask needs dask: pip install "spillkit[dask]"'),
    ("spillkit.dask_loads", ["dask"], 'spillkit.dask needs dask: pip install "spillkit[dask]"'),
    ("spillkit.dask_owner", ["dask"], 'spillkit.dask needs dask: pip install "spillkit[dask]"'),
    ("spillkit.distributed", ["distributed"], 'needs dask.distributed: pip install "spillkit[dask]"'),
    ("spillkit.distributed_hooks", ["distributed"], 'needs dask.distributed: pip install "spillkit[dask]"'),
    ("spillkit.distributed_preload", ["distributed"], 'needs dask.distributed: pip install "spillkit[dask]"'),
    ("spillkit.metrics", ["prometheus_client"], 'needs prometheus-client: pip install "spillkit[metrics]"'),
    ("spillkit.metrics_collector", ["prometheus_client"], 'needs prometheus-client: pip install "spillkit[metrics]"'),
    ("spillkit.metrics_families", ["prometheus_client"], 'needs prometheus-client: pip install "spillkit[metrics]"'),
]


@pytest.mark.parametrize(("module", "hidden", "message"), CASES, ids=[case[0] for case in CASES])
def test_an_integration_module_names_its_extra(module: str, hidden: list[str], message: str) -> None:
    done = run_python(f"""
        import importlib, sys
        for name in {hidden!r}:
            sys.modules[name] = None  # as if not installed
        try:
            importlib.import_module({module!r})
        except ImportError as error:
            print(error)
        else:
            print("imported")
    """)
    assert done.returncode == 0, done.stderr
    assert message in done.stdout, done.stdout
    assert "\n" not in done.stdout.strip()  # one line, no traceback


@pytest.mark.parametrize(
    ("workload", "hidden", "message"),
    [
        ("anomaly", "dask", "workload 'anomaly' needs dask.array"),
        ("shuffle", "dask.dataframe", "workload 'shuffle' needs dask.dataframe"),
        ("groupby", "pandas", "workload 'groupby' needs dask.dataframe"),
    ],
)
def test_a_workload_names_the_extra(workload: str, hidden: str, message: str) -> None:
    done = run_python(f"""
        import sys
        sys.modules[{hidden!r}] = None  # as if not installed
        from spillkit.workloads import build
        try:
            build({workload!r}, scale=0.01)
        except ImportError as error:
            assert isinstance(error.__cause__, ImportError), "raised without the original as its cause"
            print(error)
        else:
            print("built")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f'{message}: pip install "spillkit[dask]"', done.stdout


# ---- the command line: exit 4 with the message, before any work or output directory ----------------


def test_the_demo_without_numpy_exits_4(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from spillkit.cli import EXIT_MISSING_EXTRA, main

    monkeypatch.setitem(sys.modules, "numpy", None)  # (before: SystemExit with the text, exit 1)
    assert main(["demo", "--arrays", "2", "--array-size", "1 KiB", "--budget", "1 KiB"]) == EXIT_MISSING_EXTRA
    assert 'spillkit demo: the demo needs numpy: pip install "spillkit[demo]"' in capsys.readouterr().err


def test_compare_without_matplotlib_stops_before_the_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from spillkit.cli import EXIT_MISSING_EXTRA, main

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "report"
    trace = str(REPO / "experiments" / "traces" / "matmul.trace.gz")
    assert main(["compare", trace, "--no-bounds", "--policies", "lru", "-o", str(out)]) == EXIT_MISSING_EXTRA
    captured = capsys.readouterr()
    assert 'drawing figures needs matplotlib: pip install "spillkit[plot]"' in captured.err
    assert captured.out == "" and not out.exists()  # (before: every table printed and written, then exit 4)
    assert main(["compare", trace, "--no-bounds", "--no-plots", "--policies", "lru", "-o", str(out)]) == 0


def test_plot_without_matplotlib_makes_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from spillkit.cli import EXIT_MISSING_EXTRA, main

    results = tmp_path / "results.csv"
    results.write_text((REPO / "experiments" / "results.csv").read_text())
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = tmp_path / "figures"
    assert main(["plot", str(results), "-o", str(out)]) == EXIT_MISSING_EXTRA
    assert 'pip install "spillkit[plot]"' in capsys.readouterr().err
    assert not out.exists()  # (before: an empty directory was left)


def test_the_foo_bound_without_scipy_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("scipy")
    from spillkit.bounds import foo_lower_bound
    from spillkit.trace import Trace

    monkeypatch.setitem(sys.modules, "scipy.optimize", None)
    trace = Trace({}, ops=[("put", "a", 10, None, 0.0, 1), ("put", "b", 10, None, 0.1, 2), ("get", "a", 0.2, "load")])
    with pytest.raises(ImportError) as raised:
        foo_lower_bound(trace, 10)
    assert str(raised.value) == 'the FOO lower bound needs SciPy: pip install "spillkit[plot]"'
