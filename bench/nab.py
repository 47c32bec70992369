"""NAB figures of the spike detector, with the reference windowed Gaussian scored in the same run.

``bench_nab(nab_dir)`` runs the shared NAB scorer (``nab_dir/score.py``, a subprocess of this
interpreter) three times: the detector's continuous score (``SpikeDetector``), its default alert
decision (``SpikeAlerts``, what users get) and NAB's windowed Gaussian from
``nab_dir/reference_detectors.py``, which doubles as a check that the scorer reproduces its published
50.87 / 31.13 / 59.02. It also measures the detector's updates/s in pure Python on one core over every
NAB row. ``python -m mailaudit.bench.nab [NAB_DIR]`` prints the figures as JSON.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DETECTORS = {
    "spike_score": "mailaudit.detect.spikes:SpikeDetector",
    "spike_alert": "mailaudit.detect.spikes:SpikeAlerts",
}
REFERENCE = "reference_detectors.py:WindowedGaussianDetector"
PROFILES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")

# NAB's published per-row results scored with the same scorer on the same 34 series (nab_dir/README.md).
PUBLISHED = {
    "ARTime": (80.42, 71.61, 85.46),
    "CAD OSE": (77.16, 74.90, 79.80),
    "Numenta HTM": (72.76, 65.97, 76.87),
    "earthgecko Skyline": (65.41, 51.87, 71.46),
    "Random Cut Forest": (52.41, 42.65, 60.92),
    "windowed Gaussian": (50.87, 31.13, 59.02),
}


def _score(nab_dir: Path, spec: str, jobs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nabbench-") as tmp:
        details = Path(tmp) / "details.json"
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, str(nab_dir / "score.py"), spec, "--jobs", str(jobs),
                            "--details", str(details)],
                           cwd=nab_dir, capture_output=True, text=True, check=False)
        if p.returncode != 0:
            tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"score.py {spec} failed: {' | '.join(tail)}")
        final = json.loads(p.stdout.strip().splitlines()[-1])
        out: dict[str, Any] = {prof: round(final[prof], 2) for prof in PROFILES}
        if details.exists():
            d = json.loads(details.read_text())
            out["threshold"] = d["profiles"]["standard"]["detector"]["threshold"]
            c = d["profiles"]["standard"]["detector"]
            out["rows_detected"] = {"in_windows": c["TP"], "outside": c["FP"]}
        out["wall_s"] = round(time.monotonic() - t0, 1)
        return out


def _rows(nab_dir: Path) -> list[list[tuple[dt.datetime, float]]]:
    series = []
    for path in sorted((nab_dir / "data").glob("*/*.csv")):
        with path.open(newline="") as f:
            r = csv.reader(f)
            next(r)
            series.append([(dt.datetime.fromisoformat(ts), float(v)) for ts, v in r])
    return series


def updates_per_second(series, runs: int = 3, limit: int | None = None) -> float:
    """Median over ``runs`` of rows/s of fresh ``SpikeDetector``s fed every series (pure Python, 1 core)."""
    from mailaudit.detect.spikes import SpikeDetector

    rates = []
    for _ in range(max(1, runs)):
        n = 0
        t0 = time.perf_counter()
        for rows in series:
            det = SpikeDetector()
            update = det.update
            for ts, v in rows[:limit] if limit else rows:
                update(ts, v)
            n += min(len(rows), limit) if limit else len(rows)
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates)


def bench_nab(nab_dir: str | os.PathLike = "../shared/nab", jobs: int = 2, runs: int = 3,
              n: int | None = None, cv: bool = False) -> dict[str, Any]:
    """NAB scores (all profiles) of the detector's score and alert outputs and of the windowed Gaussian,
    plus updates/s. ``n`` caps the rows per series for the speed measurement (default: all).
    ``cv``: the cross-validated figures instead (``bench/nab_cv.py``: LOCO and LOFO beside in-sample)."""
    if cv:
        from mailaudit.bench.nab_cv import bench_cv
        return bench_cv(nab_dir, jobs=jobs)
    nab = Path(nab_dir).resolve()
    if not (nab / "score.py").is_file():
        raise FileNotFoundError(f"no NAB scorer at {nab}/score.py")
    out: dict[str, Any] = {"nab_dir": str(nab), "series": None, "rows": None}
    series = _rows(nab)
    out["series"], out["rows"] = len(series), sum(len(s) for s in series)
    out["updates_per_s"] = round(updates_per_second(series, runs=runs, limit=n))
    scores = {name: _score(nab, spec, jobs) for name, spec in DETECTORS.items()}
    scores["windowed_gaussian"] = _score(nab, REFERENCE, jobs)
    out["scores"] = scores
    out["published"] = {k: dict(zip(PROFILES, v)) for k, v in PUBLISHED.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("nab_dir", nargs="?", default="../shared/nab")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    print(json.dumps(bench_nab(args.nab_dir, jobs=args.jobs, runs=args.runs), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
