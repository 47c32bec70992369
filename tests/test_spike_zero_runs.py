"""``SpikeDetector.learn_zeros``: the engine's fast path for a lull's empty buckets must leave every
detector exactly where one ``update(t, 0)`` per bucket leaves it: same later scores and alerts, same
``to_state()`` (compared as JSON text, so floats must be the same bits)."""

from __future__ import annotations

import io
import json
import math
import random

import pytest

import corpus
from mailaudit.config import DetectConfig
from mailaudit.detect import engine as engine_mod
from mailaudit.detect.backtest import run_backtest
from mailaudit.detect.spikes import SpikeDetector

T0 = 1_793_577_600          # 2026-11-02 00:00:00 UTC


def _sparse_series(seed: int, step: int, n: int):
    """NAB-like counts (a daily rhythm, bursts, a level shift) with quiet gaps of 1 to 600 rows."""
    rng = random.Random(seed)
    out, i = [], 0
    while i < n:
        busy = rng.randint(1, 400)
        for _ in range(busy):
            t = T0 + i * step
            lam = 6.0 * (1.0 + 0.7 * math.sin(2 * math.pi * ((t % 86400) / 86400 - 0.375)))
            if i > n // 2:
                lam *= 3.0                                   # a level shift half way
            v = rng.choice((0, 0, 1)) * int(rng.expovariate(1.0 / lam))
            if rng.random() < 0.004:
                v = rng.choice((200, 1000, 60))              # bursts and a few odd values
            out.append((t, v))
            i += 1
        gap = rng.choice((1, 2, 5, 24, 25, 60, 150, 600))
        out.extend((T0 + (i + j) * step, 0) for j in range(gap))
        i += gap
    return out


def _run(series, fast: bool, overrides: dict, checkpoints=()):
    det = SpikeDetector(**overrides)
    results, states = [], []
    i = 0
    while i < len(series):
        if fast and series[i][1] == 0:
            j = i
            while j < len(series) and series[j][1] == 0:
                j += 1
            det.learn_zeros(float(t) for t, _ in series[i:j])
            i = j
        else:
            r = det.update(float(series[i][0]), series[i][1]).as_dict()
            if series[i][1] != 0:                            # zeros' results are never read (the engine)
                results.append(r)
            i += 1
        if i in checkpoints:
            states.append(json.dumps(det.to_state()))
    return results, states, json.dumps(det.to_state())


@pytest.mark.parametrize("seed,step,overrides", [
    (1, 300, {}),                                            # NAB's 5-minute spacing
    (2, 60, {}),                                             # the engine's 1-minute buckets
    (3, 60, {"memory": 400, "memory_days": 0.1, "warmup": 40, "refractory": 20.0}),   # eviction, early warmth
    (4, 300, {"two_sided": False, "schedules": False, "diff_lag": 1}),
    (5, 60, {"warmup": 3000}),                               # days of lulls before warm-up (profile flushes)
])
def test_learn_zeros_leaves_the_same_state_as_updates(seed, step, overrides):
    series = _sparse_series(seed, step, 12000)
    assert sum(v == 0 for _, v in series) > len(series) // 2
    ends = [i for i in range(1, len(series)) if series[i - 1][1] == 0 and series[i][1] != 0]   # after a lull
    marks = {ends[len(ends) // 7], ends[len(ends) // 3], ends[len(ends) // 2]}
    slow = _run(series, False, overrides, marks)
    fast = _run(series, True, overrides, marks)
    assert fast[0] == slow[0]                                # every non-zero row: score, alert, evidence
    assert len(slow[1]) == 3 and fast[1] == slow[1] and fast[2] == slow[2]          # state mid-way and at the end, bit for bit
    assert any(r["alert"] for r in slow[0])                  # the series does exercise the alert path
    det = SpikeDetector.from_state(json.loads(fast[2]))      # and the state still round-trips
    assert json.dumps(det.to_state()) == fast[2]


def test_learn_zeros_of_nothing_is_nothing():
    det = SpikeDetector()
    det.learn_zeros([])
    assert json.dumps(det.to_state()) == json.dumps(SpikeDetector().to_state())


class _Recorder:
    """A spike factory that keeps every detector it builds (in build order) and counts fast-path calls."""

    def __init__(self):
        self.dets: list[SpikeDetector] = []
        self.zero_calls = 0

    def __call__(self):
        rec = self

        class _Counting(SpikeDetector):
            def learn_zeros(self, times):
                rec.zero_calls += 1
                return super().learn_zeros(times)

        d = _Counting()
        self.dets.append(d)
        return d


def _catalogue_lines():
    evs = [e for p in corpus.PATTERNS.values() for e in p.generate(1.0).events]
    evs.sort(key=lambda e: e["sent_at"])
    return [json.dumps(e, separators=(",", ":")).encode() for e in evs]


def test_whole_catalogue_backtest_identical_with_and_without_the_fast_path(monkeypatch):
    lines = _catalogue_lines()
    runs = {}
    for fast in (False, True):
        monkeypatch.setattr(engine_mod, "FAST_ZEROS", fast)
        rec = _Recorder()
        out = io.StringIO()
        res = run_backtest(lines, DetectConfig(), out, io.StringIO(), spike_factory=rec, jobs=1)
        runs[fast] = (out.getvalue(), [json.dumps(d.to_state()) for d in rec.dets], rec.zero_calls, res)
    slow, fast = runs[False], runs[True]
    assert slow[2] == 0 and fast[2] > 100                    # the fast path really ran (and only when on)
    assert fast[0] == slow[0] and slow[0].count("\n") > 10   # the same alerts, byte for byte
    assert len(fast[1]) == len(slow[1]) and fast[1] == slow[1]   # every detector's state, bit for bit
