"""How the dashboard is launched: the ``streamlit run`` command line and its environment.

One place for it, used by ``mailaudit dashboard`` (which execs it), by the screenshot script and
by the browser test (which start it as a child), so all three serve the same app the same way:
headless, no usage statistics, no file watcher, errors shown by type only (never a stack trace
to a browser), on the host and port of ``DashboardConfig``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping

APP = Path(__file__).resolve().parent / "app.py"

THEME = {
    "theme.base": "light",
    "theme.primaryColor": "#1d4ed8",
    "theme.backgroundColor": "#ffffff",
    "theme.secondaryBackgroundColor": "#f4f6f9",
    "theme.textColor": "#1f2933",
}


def streamlit_argv(host: str, port: int) -> list[str]:
    args = [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.address", host, "--server.port", str(int(port)),
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none", "--server.runOnSave", "false",
            "--client.toolbarMode", "viewer", "--client.showErrorDetails", "type",
            "--global.developmentMode", "false"]
    for k, v in THEME.items():
        args += [f"--{k}", v]
    return args


def child_env(config_path: str | os.PathLike | None, base: Mapping[str, str] | None = None,
              overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The app loads its config like the CLI: ``MAILAUDIT_CONFIG`` (file) < ``MAILAUDIT_*`` variables."""
    env = dict(os.environ if base is None else base)
    if config_path:
        env["MAILAUDIT_CONFIG"] = str(config_path)
    env.update(overrides or {})
    env.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
    return env
