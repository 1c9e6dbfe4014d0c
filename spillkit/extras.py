"""The error an absent optional dependency gives: one line that names the ``pip install`` to run.

spillkit's core needs no optional package (``import spillkit`` loads none); each
integration module imports its own at the top and turns an ``ImportError`` into
this one, so a user who lacks the extra reads what to install, not a bare
``No module named 'dask'``.

>>> str(missing_extra("spillkit.dask", "dask", "dask"))
'spillkit.dask needs dask: pip install "spillkit[dask]"'
"""

from __future__ import annotations

__all__ = ["missing_extra"]


def missing_extra(what: str, package: str, extra: str) -> ImportError:
    """The ImportError to raise (``from`` the original) when ``what`` cannot import ``package``."""
    return ImportError(f'{what} needs {package}: pip install "spillkit[{extra}]"')
