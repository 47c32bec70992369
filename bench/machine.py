"""What machine a figure was measured on, written into every bench report.

Figures from different sessions come from different machines (the same code cost 1.2-1.7x the CPU per
event on one than on the one before it), and load averages alone do not say that: each report names
the CPU model, its clock, the cores and the Python that ran it, so a figure is compared only with
figures from the same kind of machine.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def _cpuinfo(text: str) -> dict[str, str]:
    """The first processor's fields of a ``/proc/cpuinfo`` text (every core repeats them)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip(), value.strip())
    return out


def describe(cpuinfo_path: str = "/proc/cpuinfo") -> dict:
    """CPU model, clock (MHz, as the kernel reads it now), logical cores, Python; fields the system
    does not expose are None (not Linux, or a restricted ``/proc``)."""
    try:
        info = _cpuinfo(Path(cpuinfo_path).read_text())
    except OSError:
        info = {}
    try:
        mhz = round(float(info["cpu MHz"]))
    except (KeyError, ValueError):
        mhz = None
    return {
        "cpu_model": info.get("model name") or platform.processor() or None,
        "cpu_mhz": mhz,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
