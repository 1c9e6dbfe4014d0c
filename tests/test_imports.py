"""Every module of spillkit imports on its own, first, in a fresh interpreter state (no import cycles).

helper-125: ``import spillkit.recorder`` before anything else failed with a circular import
(recorder imported trace, which re-exported the recorder); ``spillkit.trace`` first worked,
so nothing that imports in the usual order saw it.
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import textwrap

import spillkit

CHECK = textwrap.dedent(
    """
    import importlib, sys, traceback
    failed = []
    for name in sys.argv[1:]:
        for loaded in [m for m in sys.modules if m == "spillkit" or m.startswith("spillkit.")]:
            del sys.modules[loaded]
        try:
            importlib.import_module(name)
        except Exception:
            failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
    print("\\n".join(failed))
    """
)


def test_every_module_imports_first_on_its_own() -> None:
    names = [info.name for info in pkgutil.walk_packages(spillkit.__path__, "spillkit.")]
    names = [name for name in names if not name.endswith("__main__")]  # (that one runs the command line)
    assert "spillkit.recorder" in names and len(names) > 100
    done = subprocess.run([sys.executable, "-c", CHECK, *names], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", done.stdout
