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
            print(error)
        else:
            print("built")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f'{message}: pip install "spillkit[dask]"', done.stdout
