"""The anomaly model was measured on the pattern catalogue and removed (docs/model.md): its settings and
verb are gone and refused clearly, and the evaluation that justified it still runs (bench/model_eval.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import corpus
from mailaudit.config import ConfigError, load_config


@pytest.mark.parametrize("setting", ['model_path = "/var/lib/mailaudit/model.pkl"', "model_threshold = 0.9"])
def test_removed_model_settings_fail_at_start(tmp_path, setting):
    cfg = tmp_path / "mailaudit.toml"
    cfg.write_text(f"[detect]\n{setting}\n")
    with pytest.raises(ConfigError, match="model_"):
        load_config(cfg, env={})


def test_model_verb_is_gone():
    out = subprocess.run([sys.executable, "-m", "mailaudit", "model", "train", "--service", "x"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "model" in out.stderr and "Traceback" not in out.stderr
    assert not list((__import__("pathlib").Path(__file__).parent.parent / "detect").glob("model*.py"))


def test_calibration_flags_at_most_one_per_alerts_per():
    from mailaudit.bench.model_eval import calibrate

    rng = np.random.default_rng(0)
    s = rng.random(25_000)
    th = calibrate(s, 10_000)
    assert int((s > th).sum()) == 2                   # floor(25,000 / 10,000)
    small = rng.random(300)
    assert calibrate(small, 10_000) == small.max()    # fewer than alerts_per: nothing seen in training flags


def test_model_eval_pattern_rows_are_well_formed_and_deterministic():
    from mailaudit.bench.model_eval import DESIGNS, eval_pattern

    leak = corpus.PATTERNS["cc_leak_per_copy"]
    r1, r2 = eval_pattern(leak, 0.3), eval_pattern(leak, 0.3)
    assert r1 == r2                                   # seeded data, random_state=0 forests
    assert r1["model"] and r1["history"] >= 50 and r1["class"] == "visible_list"
    for d in DESIGNS:
        assert {"false_flags", "false_incidents", "caught", "in_time", "leak_flags"} <= set(r1[d])
        assert r1[d]["false_incidents"] <= r1[d]["false_flags"]
    # The range guard sees the first Cc this service ever sent; the shape-only forest does not split on a
    # feature that was constant in training, so it is blind to it (the reason the model was removed).
    assert r1["forest_guard"]["in_time"] and not r1["forest_shape"]["caught"]
    benign = eval_pattern(corpus.PATTERNS["transactional_daily_rhythm"], 0.3)
    assert "caught" not in benign["forest"] and benign["benign_scored"] > 0
