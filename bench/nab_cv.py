"""Cross-validated NAB figures of the spike detector: ``mailaudit bench nab --cv``.

A NAB score measured on the series the detector was shaped on says little about series it has never
seen (issue 13: 75 in-sample, 47 on two unseen categories). So every choice here — which candidate
configuration, which alert threshold — is made on *training* files only and applied to held-out
files it never saw:

* **LOCO** (leave one category out): the folds are the shared categories; ``artificialNoAnomaly``
  has no anomaly window, so it never forms a fold alone: it always stays in training and its files
  are also scored with the threshold of the ``artificialWithAnomaly`` fold (pooled with it).
* **LOFO** (leave one file out): each file is held out once.

For each fold and each NAB cost profile, the (configuration, threshold) pair with the best NAB score
on the training files is fixed; the held-out files' raw scores become binary detections at that
threshold. The detections of all held-out folds are pooled and scored in ONE run of the shared NAB
scorer (``nab_dir/score.py``, via :class:`Replay`, which plays the stored detections back through the
ordinary ``update(ts, value)`` interface). With binary scores the scorer's own threshold sweep has
nothing left to choose. Each profile has its own thresholds, hence its own detections: by default
``score.py`` confirms the standard profile's (``--all-profiles``: every profile's).

Two procedures are reported: constants *and* threshold chosen on the training folds from ``GRID``
(``loco``, ``lofo``), and the default constants with only the threshold chosen there
(``loco_default``, ``lofo_default``); ``loco_single_config`` is each grid entry alone (the CV
sensitivity of one constant).

The inner choices use :class:`FastNab`, a numpy re-implementation of NAB's sweeper (same window
weights, probation, sigmoid, cost matrices); ``bench_cv`` checks it against ``score.py`` on the
in-sample run (``in_sample.check``), so the two cannot silently disagree.

Raw per-file scores are cached per (configuration, detector source) under ``cache_dir``: a grid of a
few configurations costs one detector pass each, and later runs only re-score.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

PROFILES = {"standard": (0.11, 1.0), "reward_low_FP_rate": (0.22, 1.0), "reward_low_FN_rate": (0.11, 2.0)}
NO_ANOMALY = "artificialNoAnomaly"
POOL_WITH = "artificialWithAnomaly"
_PROBATION = 0.15
_ID_ROWS = 140                    # rows that identify a file for Replay (all inside NAB's probation)
_MAX_TP = 2.0 / (1.0 + math.exp(-5.0)) - 1.0

# Candidate configurations searched on the training folds: the defaults and one step either side of the
# constants that matter most (each is also the CV sensitivity of that constant). Kept small: a config
# costs one detector pass over the 228k rows.
GRID: dict[str, dict[str, Any]] = {
    "default": {},
    "diff_lag=12": {"diff_lag": 12},
    "diff_lag=48": {"diff_lag": 48},
    "memory=3000": {"memory": 3000},
    "refractory=100": {"refractory": 100.0},
    "refractory=400": {"refractory": 400.0},
    "escalation=1.5": {"escalation": 1.5},
    "young_extra=5": {"young_extra": 5.0},
    "young_extra=20": {"young_extra": 20.0},
    "excursion_max=4": {"excursion_max": 4},
    "excursion_max=16": {"excursion_max": 16},
    "season_days=5": {"season_days": 5},
    "schedules=off": {"schedules": False},
    "schedule_ratio=1.5": {"schedule_ratio": 1.5},
    "tail_k=16": {"tail_k": 16},
    "tail_k=64": {"tail_k": 64},
    "decluster_q=0.001": {"decluster_q": 0.001},
    "decluster_q=0.01": {"decluster_q": 0.01},
    "diff_rho=0.1": {"diff_rho": 0.1},
    "diff_rho=0.4": {"diff_rho": 0.4},
    "warmup=300": {"warmup": 300},
    "season_tol=0": {"season_tol": 0},
    "season_explained=0.8,0.4": {"season_explained": (0.8, 0.4)},
    "memory_days=16": {"memory_days": 16.0},
    "memory=12000": {"memory": 12000},
    "two_sided=off": {"two_sided": False},
    "schedule_ratio=2": {"schedule_ratio": 2.0},
}


# --- data ------------------------------------------------------------------------------------------

def load_corpus(nab_dir: Path) -> dict[str, dict[str, Any]]:
    """``{"cat/file.csv": {"ts": [datetime], "values": [float], "windows": [(i0, i1)], "cat": cat}}``."""
    windows = json.loads((nab_dir / "labels" / "combined_windows.json").read_text())
    out = {}
    for rel in sorted(windows):
        with (nab_dir / "data" / rel).open(newline="") as f:
            r = csv.reader(f)
            next(r)
            rows = [(dt.datetime.fromisoformat(a), float(b)) for a, b in r]
        ts = [t for t, _ in rows]
        index = {t: i for i, t in enumerate(ts)}
        wins = [(index[dt.datetime.fromisoformat(a)], index[dt.datetime.fromisoformat(b)]) for a, b in windows[rel]]
        out[rel] = {"ts": ts, "values": [v for _, v in rows], "windows": wins, "cat": rel.split("/")[0]}
    return out


# --- NAB scoring in numpy --------------------------------------------------------------------------

def _sigmoid_score(pos: np.ndarray) -> np.ndarray:
    """NAB's scaledSigmoid: 2*sigmoid(-5 pos) - 1, and -1 beyond 3 window widths."""
    v = 2.0 / (1.0 + np.exp(5.0 * pos)) - 1.0
    return np.where(pos > 3.0, -1.0, v)


class FastNab:
    """NAB v1 scoring (nab/sweeper.py) of per-file score arrays, vectorised.

    Per row: the window it belongs to (or none) and NAB's unweighted sigmoid score; probationary rows
    (the first min(15 %, 750) of each file) are dropped. ``sweep(files, profile)`` returns every
    candidate threshold with its raw NAB score over ``files``, exactly as nab.sweeper sweeps them.
    """

    def __init__(self, corpus: dict[str, dict[str, Any]]):
        self.rows: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.nwin: dict[str, int] = {}
        for rel, f in corpus.items():
            n = len(f["ts"])
            win = np.full(n, -1, dtype=np.int64)
            u = np.full(n, -1.0)
            prev_right = prev_width = None
            wins = sorted(f["windows"])
            wi = 0
            i = 0
            while i < n:
                if wi < len(wins) and i == wins[wi][0]:
                    a, b = wins[wi]
                    width = float(b - a + 1)
                    idx = np.arange(a, b + 1)
                    u[a:b + 1] = _sigmoid_score(-(b - idx + 1) / width) / _MAX_TP   # already tp-weighted
                    win[a:b + 1] = wi
                    prev_right, prev_width = b, width
                    wi += 1
                    i = b + 1
                    continue
                j = wins[wi][0] if wi < len(wins) else n
                if prev_right is not None:
                    idx = np.arange(i, j)
                    u[i:j] = _sigmoid_score(np.abs(prev_right - idx) / (prev_width - 1.0))
                i = j
            prob = int(min(math.floor(_PROBATION * n), _PROBATION * 5000))
            keep = np.arange(n) >= prob
            # a window counts only if one of its rows is past probation
            self.rows[rel] = (keep, win, u)
            self.nwin[rel] = len(set(win[keep & (win >= 0)].tolist()))

    def sweep(self, scores: dict[str, np.ndarray], files, profile: str) -> tuple[np.ndarray, np.ndarray]:
        """(thresholds descending, raw NAB score at each): detection = score >= threshold."""
        fpw, fnw = PROFILES[profile]
        fp_s, fp_w, win_parts = [], [], []
        nwin = 0
        for rel in files:
            keep, win, u = self.rows[rel]
            s = scores[rel]
            m = keep & (win < 0)
            fp_s.append(s[m])
            fp_w.append(u[m] * fpw)
            for w in np.unique(win[keep & (win >= 0)]):
                mw = keep & (win == w)
                win_parts.append((s[mw], u[mw]))
            nwin += self.nwin[rel]
        fs = np.concatenate(fp_s) if fp_s else np.zeros(0)
        fw = np.concatenate(fp_w) if fp_w else np.zeros(0)
        cand = [fs] + [ws for ws, _ in win_parts]
        thr = np.unique(np.concatenate(cand + [np.array([1.1])]))[::-1]
        order = np.argsort(-fs, kind="stable")
        cum = np.concatenate([[0.0], np.cumsum(fw[order])])
        neg = -fs[order]
        total = cum[np.searchsorted(neg, -thr, side="right")]
        for ws, wu in win_parts:
            o = np.argsort(-ws, kind="stable")
            cm = np.maximum.accumulate(wu[o])
            k = np.searchsorted(-ws[o], -thr, side="right")
            total = total + np.where(k > 0, cm[np.maximum(k - 1, 0)], -fnw)
        return thr, total

    def best(self, scores, files, profile: str) -> tuple[float, float]:
        thr, total = self.sweep(scores, files, profile)
        i = int(np.argmax(total))
        return float(thr[i]), float(total[i])

    def at(self, scores, files, profile: str, threshold: float) -> float:
        """Raw NAB score of binary detections ``score >= threshold``."""
        det = {rel: (scores[rel] >= threshold).astype(float) for rel in files}
        thr, total = self.sweep(det, files, profile)
        return float(total[np.nonzero(thr == 1.0)[0][0]]) if (thr == 1.0).any() else float(total[0])

    def normalise(self, raw: float, files, profile: str) -> float:
        """100 (S - S_null) / (S_perfect - S_null); the null detector (constant 0.5) at its best threshold."""
        null = {rel: np.full(len(self.rows[rel][0]), 0.5) for rel in files}
        _, s_null = self.best(null, files, profile)
        perfect = float(sum(self.nwin[rel] for rel in files))
        return 100.0 * (raw - s_null) / (perfect - s_null)


# --- raw scores per configuration (cached) ---------------------------------------------------------

def _read_source() -> str:
    """The detector's code as imported now (forked workers run this same code), without comments and
    docstrings: the cache key, so a wording change does not cost a re-run."""
    import ast

    from mailaudit.detect import spikes
    tree = ast.parse(Path(spikes.__file__).read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha1(ast.dump(tree).encode()).hexdigest()[:12]


_SOURCE_KEY = _read_source()


def _source_key() -> str:
    return _SOURCE_KEY


def _run_file(args) -> tuple[str, list[float]]:
    rel, ts, values, overrides = args
    from mailaudit.detect.spikes import SpikeDetector
    det = SpikeDetector(**overrides)
    up = det.update
    return rel, [float("%.12g" % up(t, v).score) for t, v in zip(ts, values)]


def raw_scores(corpus, overrides: dict[str, Any], cache_dir: Path, jobs: int = 2) -> dict[str, np.ndarray]:
    key = hashlib.sha1(json.dumps([_source_key(), sorted(overrides.items())], default=str).encode()).hexdigest()[:16]
    path = cache_dir / f"{key}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {rel: z[rel.replace("/", "__")] for rel in corpus}
    work = sorted(corpus, key=lambda r: -len(corpus[r]["ts"]))
    args = [(rel, corpus[rel]["ts"], corpus[rel]["values"], overrides) for rel in work]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as ex:
            res = dict(ex.map(_run_file, args))
    else:
        res = dict(map(_run_file, args))
    out = {rel: np.asarray(res[rel]) for rel in corpus}
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **{rel.replace("/", "__"): a for rel, a in out.items()})
    os.replace(tmp, path)
    return out


# --- folds -----------------------------------------------------------------------------------------

def loco_folds(corpus) -> list[tuple[str, list[str]]]:
    """One fold per category with anomalies; artificialNoAnomaly's files are held out with
    artificialWithAnomaly's fold (and are in training for every other fold)."""
    cats = sorted({f["cat"] for f in corpus.values()})
    folds = []
    for c in cats:
        if c == NO_ANOMALY:
            continue
        held = [rel for rel, f in corpus.items() if f["cat"] == c or (c == POOL_WITH and f["cat"] == NO_ANOMALY)]
        folds.append((c, held))
    return folds


def lofo_folds(corpus) -> list[tuple[str, list[str]]]:
    return [(rel, [rel]) for rel in corpus]


def cross_validate(corpus, nab: FastNab, grid_scores: dict[str, dict[str, np.ndarray]], folds,
                   profile: str) -> dict[str, Any]:
    """Per fold: the (config, threshold) best on the training files; held-out detections pooled."""
    files = list(corpus)
    det: dict[str, np.ndarray] = {}
    chosen = []
    for name, held in folds:
        train = [r for r in files if r not in held]
        best = None
        for cfg, sc in grid_scores.items():
            thr, raw = nab.best(sc, train, profile)
            if best is None or raw > best[2] + 1e-12:
                best = (cfg, thr, raw)
        cfg, thr, _ = best
        fold_det = {rel: (grid_scores[cfg][rel] >= thr).astype(float) for rel in held}
        det.update(fold_det)
        entry = {"fold": name, "config": cfg, "threshold": round(thr, 6)}
        if any(nab.nwin[rel] for rel in held):     # the fold alone, normalised over its own files
            entry["held_out"] = round(nab.normalise(nab.at(fold_det, held, profile, 1.0), held, profile), 2)
        chosen.append(entry)
    raw = nab.at(det, files, profile, 1.0)
    return {"score": round(nab.normalise(raw, files, profile), 2), "chosen": chosen, "detections": det}


# --- replay through the shared scorer --------------------------------------------------------------

def _fingerprint(rows) -> str:
    return hashlib.sha1(repr([(t.isoformat(), float(v)) for t, v in rows]).encode()).hexdigest()


class Replay:
    """Plays stored per-file detections back through NAB's ``update(ts, value)`` interface.

    The file is recognised by its first ``_ID_ROWS`` rows (all inside NAB's probation period, which is
    never scored; the stored detections there are 0 anyway: the detector is still warming up).
    ``path``: JSON ``{fingerprint: [0/1 per row]}`` written by :func:`write_replay`.
    """

    def __init__(self, path: str):
        with open(path) as f:
            self._table = json.load(f)
        self._head: list = []
        self._out: list | None = None
        self._i = 0

    def update(self, ts, value) -> float:
        i = self._i
        self._i += 1
        if self._out is None:
            self._head.append((ts, value))
            if len(self._head) == _ID_ROWS:
                self._out = self._table[_fingerprint(self._head)]
            return 0.0
        return float(self._out[i])


def write_replay(corpus, det: dict[str, np.ndarray], path: Path) -> None:
    table = {}
    for rel, f in corpus.items():
        d = det[rel]
        if d[:_ID_ROWS].any():
            raise ValueError(f"{rel}: detections inside the identification rows")
        fp = _fingerprint(list(zip(f["ts"][:_ID_ROWS], f["values"][:_ID_ROWS])))
        if fp in table:
            raise ValueError(f"{rel}: first {_ID_ROWS} rows not unique")
        table[fp] = [int(x) for x in d]
    path.write_text(json.dumps(table))


def score_py(nab_dir: Path, spec: str, jobs: int, init_kwargs: dict | None = None) -> dict[str, float]:
    cmd = [sys.executable, str(nab_dir / "score.py"), spec, "--jobs", str(jobs)]
    if init_kwargs:
        cmd += ["--init-kwargs", json.dumps(init_kwargs)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1].parent)] +
                                         ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    p = subprocess.run(cmd, cwd=nab_dir, capture_output=True, text=True, check=False, env=env)
    if p.returncode != 0:
        raise RuntimeError("score.py failed: " + " | ".join((p.stderr or p.stdout).strip().splitlines()[-3:]))
    final = json.loads(p.stdout.strip().splitlines()[-1])
    return {k: round(v, 2) for k, v in final.items()}


# --- the bench -------------------------------------------------------------------------------------

def bench_cv(nab_dir: str | os.PathLike = "../shared/nab", jobs: int = 2, grid: dict | None = None,
             cache_dir: str | os.PathLike | None = None, scorer: bool | str = True) -> dict[str, Any]:
    """LOCO and LOFO cross-validated NAB figures (all three profiles) beside the in-sample ones.

    ``scorer``: also score the pooled held-out detections with the shared ``score.py`` — the standard
    profile's (one run per scheme; ``"all"``: every profile's) — and the default configuration
    in-sample; ``score_py`` beside ``fast`` is the check that FastNab and NAB agree. Each score.py run
    costs 20-50 s here, so the default keeps the whole bench to a few minutes once the grid's raw
    scores are cached (a first run also spends ~2 min on one detector pass per grid entry)."""
    nab_dir = Path(nab_dir).resolve()
    grid = GRID if grid is None else grid
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    cache = Path(cache_dir) if cache_dir else base / "mailaudit" / "nab-cv"
    t0 = time.monotonic()
    corpus = load_corpus(nab_dir)
    nab = FastNab(corpus)
    files = list(corpus)
    grid_scores = {name: raw_scores(corpus, ov, cache, jobs) for name, ov in grid.items()}
    t_det = time.monotonic() - t0
    out: dict[str, Any] = {"nab_dir": str(nab_dir), "files": len(files), "grid": list(grid)}
    # in-sample: each config with its threshold swept on all files (what NAB's scorer reports)
    ins = {}
    for cfg, sc in grid_scores.items():
        ins[cfg] = {p: round(nab.normalise(nab.best(sc, files, p)[1], files, p), 2) for p in PROFILES}
    out["in_sample"] = ins
    # CV sensitivity of each constant: its config alone, threshold still fixed on the training folds
    sens = {}
    for cfg, sc in grid_scores.items():
        sens[cfg] = {p: cross_validate(corpus, nab, {cfg: sc}, loco_folds(corpus), p)["score"] for p in PROFILES}
    out["loco_single_config"] = sens
    # Two procedures, each scored on the pooled held-out detections:
    #   "<scheme>": constants AND threshold chosen on the training folds from the whole grid;
    #   "<scheme>_default": the default constants, only the threshold chosen on the training folds.
    for scheme, folds in (("loco", loco_folds(corpus)), ("lofo", lofo_folds(corpus))):
        default_only = {"default": grid_scores["default"]} if "default" in grid_scores else None
        for suffix, cand in (("", grid_scores), ("_default", default_only)):
            if cand is None:
                continue
            res = {}
            for p in PROFILES:
                cv = cross_validate(corpus, nab, cand, folds, p)
                entry = {"fast": cv["score"]}
                if scheme == "loco":
                    entry["chosen"] = cv["chosen"]
                else:
                    entry["configs_chosen"] = sorted({c["config"] for c in cv["chosen"]})
                if scorer == "all" or scorer and p == "standard":
                    with tempfile.TemporaryDirectory(prefix="nabcv-") as tmp:
                        path = Path(tmp) / "replay.json"
                        write_replay(corpus, cv["detections"], path)
                        entry["score_py"] = score_py(nab_dir, "mailaudit.bench.nab_cv:Replay", jobs,
                                                     {"path": str(path)})[p]
                res[p] = entry
            out[scheme + suffix] = res
    if scorer:
        out["in_sample_check"] = {"fast": ins.get("default"),
                                  "score_py": score_py(nab_dir, "mailaudit.detect.spikes:SpikeDetector", jobs)}
    out["detect_s"] = round(t_det, 1)
    out["wall_s"] = round(time.monotonic() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("nab_dir", nargs="?", default="../shared/nab")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--no-scorer", action="store_true", help="FastNab figures only (no score.py runs)")
    ap.add_argument("--all-profiles", action="store_true", help="score.py for every profile, not only standard")
    ap.add_argument("--only", help="comma-separated grid entries")
    args = ap.parse_args(argv)
    grid = {k: GRID[k] for k in args.only.split(",")} if args.only else None
    scorer = False if args.no_scorer else ("all" if args.all_profiles else True)
    print(json.dumps(bench_cv(args.nab_dir, jobs=args.jobs, grid=grid, scorer=scorer), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
