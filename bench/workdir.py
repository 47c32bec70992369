"""Where a bench keeps its servers' data, configs and state while it runs.

A bench run writes a local stack's ClickHouse and broker data (up to a few GB for the ingest and
dashboard suites) and per-run configs holding a hash key. A directory the caller named is theirs and
stays; one the bench made for itself is removed when it ends, so repeated runs do not fill ``/tmp``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable


def work_dir(state_dir: str | None, prefix: str) -> tuple[Path, Callable[[], None]]:
    """(the directory, the call that discards it): a no-op for ``state_dir``, removal for our own."""
    if state_dir:
        return Path(state_dir), lambda: None
    path = Path(tempfile.mkdtemp(prefix=prefix))
    return path, lambda: shutil.rmtree(path, ignore_errors=True)
