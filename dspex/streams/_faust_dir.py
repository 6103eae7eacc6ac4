"""A scratch directory for a Faust app.

Faust creates ``<app id>-data`` in the current directory even when every
table lives in memory, as every DSPEx app's does. A worker started from a
checkout or a service's working directory would leave one behind per app id;
each process gets a private temporary directory instead, removed at exit.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

__all__ = ["scratch_datadir"]


def scratch_datadir(app_id: str) -> Path:
    """A fresh directory for ``app_id``'s Faust data, removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix=f"dspex-{app_id}-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
