"""The cross-validation harness's own parts on a hand-made corpus (no NAB data needed): NAB's scoring
rules in FastNab, the folds, threshold choice on training files only, and Replay's file recognition."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from mailaudit.bench.nab_cv import FastNab, Replay, _ID_ROWS, cross_validate, loco_folds, lofo_folds, write_replay

T = dt.datetime(2020, 1, 1)


def _file(cat, n, windows, seed):
    rng = np.random.default_rng(seed)
    ts = [T + dt.timedelta(minutes=5 * i) for i in range(n)]
    return {"ts": ts, "values": [float(v) for v in rng.normal(size=n)], "windows": windows, "cat": cat}


@pytest.fixture
def corpus():
    return {
        "catA/a1.csv": _file("catA", 1000, [(400, 449)], 1),
        "catA/a2.csv": _file("catA", 1000, [(600, 649)], 2),
        "catB/b1.csv": _file("catB", 1000, [(300, 349), (800, 849)], 3),
        "artificialNoAnomaly/n1.csv": _file("artificialNoAnomaly", 1000, [], 4),
        "artificialWithAnomaly/w1.csv": _file("artificialWithAnomaly", 1000, [(500, 549)], 5),
    }


def test_perfect_null_and_false_alarm_scores(corpus):
    nab = FastNab(corpus)
    files = list(corpus)
    zero = {r: np.zeros(1000) for r in files}
    perfect = {r: np.zeros(1000) for r in files}
    for r, f in corpus.items():
        for a, _ in f["windows"]:
            perfect[r][a] = 1.0                      # first row of each window: full TP weight
    assert nab.normalise(nab.at(perfect, files, "standard", 1.0), files, "standard") == pytest.approx(100.0)
    # no detection at all: every window is a false negative (-1 each)
    assert nab.at(zero, files, "standard", 1.0) == pytest.approx(-5.0)
    assert nab.at(zero, files, "reward_low_FN_rate", 1.0) == pytest.approx(-10.0)
    # one false alarm far from any window costs fpWeight (0.11 standard, 0.22 low FP)
    fa = {r: a.copy() for r, a in perfect.items()}
    fa["artificialNoAnomaly/n1.csv"][500] = 1.0
    assert nab.at(fa, files, "standard", 1.0) == pytest.approx(5.0 - 0.11)
    assert nab.at(fa, files, "reward_low_FP_rate", 1.0) == pytest.approx(5.0 - 0.22)
    # detections inside the probation period (first 15 %) are not scored
    pr = {r: a.copy() for r, a in perfect.items()}
    pr["catA/a1.csv"][100] = 1.0
    assert nab.at(pr, files, "standard", 1.0) == pytest.approx(5.0)


def test_late_detection_in_a_window_is_worth_less_and_the_sweep_finds_the_best_threshold(corpus):
    nab = FastNab(corpus)
    files = ["catA/a1.csv"]
    late = {"catA/a1.csv": np.zeros(1000)}
    late["catA/a1.csv"][440] = 0.9                    # late in the window
    early = {"catA/a1.csv": np.zeros(1000)}
    early["catA/a1.csv"][402] = 0.9
    assert 0 < nab.at(late, files, "standard", 0.9) < nab.at(early, files, "standard", 0.9) <= 1.0
    # a sweep over a score with a TP at 0.9 and a false alarm at 0.95: the best threshold keeps the TP
    # and the false alarm (0.89 > 1 - 0.11) rather than nothing
    sc = {"catA/a1.csv": np.zeros(1000)}
    sc["catA/a1.csv"][402] = 0.9
    sc["catA/a1.csv"][900] = 0.95
    thr, raw = nab.best(sc, files, "standard")
    assert thr == 0.9 and raw == pytest.approx(nab.at(early, files, "standard", 0.9) - 0.11, abs=0.02)


def test_folds_never_hold_out_no_anomaly_alone(corpus):
    folds = dict(loco_folds(corpus))
    assert set(folds) == {"catA", "catB", "artificialWithAnomaly"}
    assert set(folds["artificialWithAnomaly"]) == {"artificialWithAnomaly/w1.csv", "artificialNoAnomaly/n1.csv"}
    assert sorted(r for held in folds.values() for r in held) == sorted(corpus)
    assert [h for _, h in lofo_folds(corpus)] == [[r] for r in corpus]


def test_threshold_comes_from_the_training_files_only(corpus):
    """Two configs: 'a' is right on catA and catB, wrong on artificialWithAnomaly; the held-out fold gets
    what the *other* folds preferred, even when it is the wrong choice for that fold."""
    nab = FastNab(corpus)
    good = {r: np.zeros(1000) for r in corpus}
    for r, f in corpus.items():
        for a, _ in f["windows"]:
            good[r][a] = 0.8
    bad_on_w = {r: a.copy() for r, a in good.items()}
    bad_on_w["artificialWithAnomaly/w1.csv"][:] = 0.0
    alt = {r: np.zeros(1000) for r in corpus}               # config "alt" finds only the w1 window
    alt["artificialWithAnomaly/w1.csv"][500] = 0.8
    cv = cross_validate(corpus, nab, {"a": bad_on_w, "alt": alt}, loco_folds(corpus), "standard")
    chosen = {c["fold"]: c["config"] for c in cv["chosen"]}
    assert chosen == {"catA": "a", "catB": "a", "artificialWithAnomaly": "a"}
    assert not cv["detections"]["artificialWithAnomaly/w1.csv"].any()       # the held-out fold pays for it
    assert cv["score"] < 100


def test_replay_plays_detections_back_by_file(corpus, tmp_path):
    det = {r: np.zeros(1000) for r in corpus}
    det["catB/b1.csv"][300] = 1.0
    det["catA/a2.csv"][700] = 1.0
    path = tmp_path / "replay.json"
    write_replay(corpus, det, path)
    for rel, f in corpus.items():
        rp = Replay(str(path))
        out = [rp.update(t, v) for t, v in zip(f["ts"], f["values"])]
        assert out == det[rel].tolist()
    bad = dict(det)
    bad["catA/a1.csv"] = det["catA/a1.csv"].copy()
    bad["catA/a1.csv"][_ID_ROWS - 1] = 1.0
    with pytest.raises(ValueError, match="identification rows"):
        write_replay(corpus, bad, tmp_path / "x.json")
    assert json.loads(path.read_text())
