"""The product's mail-unit minimums on top of the scale-free detector (`_is_spike` in detect/engine.py):
upward only, at least 20 messages (or recipients), at least 2x the detector's baseline. Each case checks
that the detector itself *did* flag the value, so what keeps the page away is the minimum under test."""

from __future__ import annotations

import random

from mailaudit.config import DetectConfig, SpikeRules
from mailaudit.detect.engine import DetectionEngine
from mailaudit.detect.spikes import SpikeDetector

from test_engine import T0, ev, users


class Recording(SpikeDetector):
    """The real detector, remembering every verdict (value, alert, direction)."""

    log: list = []

    def update(self, ts, value):
        r = super().update(ts, value)
        Recording.log.append((ts, value, r.alert, r.direction))
        return r


def _run(per_minute, last_minute, minutes=200, seed=1):
    Recording.log = []
    rng = random.Random(seed)
    eng = DetectionEngine(DetectConfig(spikes=SpikeRules(per_campaign=False)), spike_factory=Recording)
    out = []
    for m in range(minutes + 1):
        n = last_minute if m == minutes else per_minute + rng.randint(-per_minute // 10, per_minute // 10)
        for k in range(n):
            u = users(1, k)[0]
            out += eng.process(ev(f"<{u}>", [u], t=m * 60_000 + k * (59_000 // max(n, 1)), service="svc"))
    out += eng.advance(T0 + (minutes + 3) * 60_000)
    flagged = [(v, d) for ts, v, a, d in Recording.log if a and ts == (T0 + minutes * 60_000) / 1000.0]
    return [a for a in out if a.category == "spike"], flagged


def test_a_rare_rise_below_twenty_messages_is_not_paged():
    spikes, flagged = _run(per_minute=3, last_minute=15)
    assert (15, "up") in flagged                 # 5x a quiet service: the detector flags it ...
    assert spikes == []                          # ... but 15 messages are under the 20-message minimum


def test_a_rare_rise_under_twice_the_baseline_is_not_paged():
    spikes, flagged = _run(per_minute=100, last_minute=175, minutes=180)
    assert (175, "up") in flagged                # far outside +-10 %: statistically certain ...
    assert spikes == []                          # ... but 1.75x the baseline is not a spike


def test_a_drop_is_never_a_spike_and_the_same_service_pages_on_twice_its_volume():
    spikes, flagged = _run(per_minute=100, last_minute=20, minutes=180)
    assert (20, "down") in flagged
    assert spikes == []
    spikes, flagged = _run(per_minute=100, last_minute=260, minutes=180)
    assert [a.kind for a in spikes if a.status == "open"] == ["volume_spike"]
