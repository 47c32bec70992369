"""The streaming spike detector on synthetic series: what the detection engine relies on.

Series are per-minute message counts (Poisson around a daily rhythm) and per-message recipient
counts, generated from fixed seeds so every assertion is about the detector, not about luck.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import pickle
import random
import time

import pytest

from mailaudit.detect.spikes import DEFAULTS, SpikeAlerts, SpikeDetector, SpikeResult

DAY = 86400
MINUTE = 60
T0 = 1_793_577_600          # 2026-11-02 00:00:00 UTC: midnight, so the phase of the rhythm is known


def poisson(rng: random.Random, lam: float) -> int:
    """Number of arrivals of a unit-time Poisson process (exact; lam is at most a few thousand here)."""
    n, t = 0, rng.expovariate(lam) if lam > 0 else math.inf
    while t < 1.0:
        n += 1
        t += rng.expovariate(lam)
    return n


def rhythm(t: float, base: float = 100.0, depth: float = 0.7) -> float:
    """Messages per minute: low at night, high in the afternoon (peak at 15:00 UTC)."""
    return base * (1.0 + depth * math.sin(2 * math.pi * ((t % DAY) / DAY - 0.375)))


def rhythmic_minutes(days: float, seed: int, base: float = 100.0, t0: int = T0):
    rng = random.Random(seed)
    return [(t0 + i * MINUTE, poisson(rng, rhythm(t0 + i * MINUTE, base))) for i in range(int(days * 1440))]


def feed(det: SpikeDetector, series) -> list[SpikeResult]:
    return [det.update(t, v) for t, v in series]


# --- warm-up, rhythm, surges, shifts --------------------------------------------------------------

def test_warm_up_is_silent_even_for_wild_values():
    det = SpikeDetector()
    rng = random.Random(1)
    out = [det.update(T0 + i * MINUTE, rng.choice([1, 5, 20_000, 0, 3_000_000])) for i in range(DEFAULTS["warmup"])]
    assert not any(r.alert for r in out)
    assert all(r.score == 0.0 and not r.warm for r in out)
    r = det.update(T0 + DEFAULTS["warmup"] * MINUTE, 1)
    assert r.warm


@pytest.mark.parametrize("seed", [2, 3])
def test_several_days_of_daily_rhythm_raise_no_alert(seed):
    series = rhythmic_minutes(days=4, seed=seed)
    out = feed(SpikeDetector(), series)
    alerts = [(i, v) for i, ((t, v), r) in enumerate(zip(series, out)) if r.alert]
    assert alerts == []
    # the detector did look: after warm-up the scores are computed, just never at the alert line
    assert all(r.warm for r in out[DEFAULTS["warmup"]:])


def test_daily_rhythm_at_five_minute_resolution_raises_no_alert():
    rng = random.Random(4)
    series = [(T0 + i * 300, poisson(rng, 5 * rhythm(T0 + i * 300, 40.0))) for i in range(288 * 10)]
    assert not any(r.alert for r in feed(SpikeDetector(), series))


@pytest.mark.parametrize("hour", [3, 15])     # the night trough and the afternoon peak
def test_eightfold_surge_alerts_within_two_updates_and_only_once(hour):
    rng = random.Random(10 + hour)
    det = SpikeDetector()
    start = T0 + 3 * DAY + hour * 3600
    series = [(t, poisson(rng, rhythm(t))) for t in range(T0, start, MINUTE)]
    assert not any(r.alert for r in feed(det, series))
    surge = [det.update(t, poisson(rng, 8 * rhythm(t))) for t in range(start, start + 10 * MINUTE, MINUTE)]
    first = next(i for i, r in enumerate(surge) if r.alert)
    assert first <= 1
    assert sum(r.alert for r in surge) == 1                      # one surge, one alert
    r = surge[first]
    assert r.direction == "up" and r.source in ("value", "daily") and r.score >= 0.5
    assert r.baseline < r.threshold < r.value                     # the evidence explains the alert
    after = [det.update(t, poisson(rng, rhythm(t))) for t in range(start + 10 * MINUTE, start + DAY, MINUTE)]
    assert not any(r.alert and r.direction == "up" for r in after)


def test_level_shift_alerts_once_then_becomes_the_new_normal():
    rng = random.Random(20)
    det = SpikeDetector()
    shift = T0 + 3 * DAY
    before = [det.update(t, poisson(rng, 100.0)) for t in range(T0, shift, MINUTE)]
    after = [det.update(t, poisson(rng, 300.0)) for t in range(shift, shift + 5 * DAY, MINUTE)]
    assert not any(r.alert for r in before)
    alerts = [i for i, r in enumerate(after) if r.alert]
    assert alerts and alerts[0] == 0                              # the shift itself is caught at once
    assert len(alerts) <= 2 and alerts[-1] < 60                   # ... and not for ever
    assert after[-1].baseline > 200                               # re-baselined once the new level
                                                                  # is most of the (8-day) history


def test_campaign_bursts_then_pauses_are_normal():
    """A newsletter service sends each campaign in a burst, then pauses: half the minutes are empty."""
    rng = random.Random(30)
    series = []
    for i in range(2 * 1440):
        burst = i % 2 == 0
        series.append((T0 + i * MINUTE, int(1600 * rng.uniform(0.5, 1.5)) if burst else rng.randint(0, 3)))
    assert not any(r.alert for r in feed(SpikeDetector(), series))


def test_a_drop_is_reported_as_down():
    rng = random.Random(40)
    det = SpikeDetector()
    feed(det, [(t, poisson(rng, 500.0)) for t in range(T0, T0 + 3 * DAY, MINUTE)])
    r = det.update(T0 + 3 * DAY, 0)
    assert r.alert and r.direction == "down"


def test_recipients_per_message_spike_alerts_on_that_message():
    """Per-message series: irregular times, many values per second, a norm of one recipient."""
    rng = random.Random(50)
    det = SpikeDetector()
    t = float(T0)
    out = []
    for _ in range(20_000):
        t += rng.expovariate(5.0)
        out.append(det.update(t, rng.choices([1, 2, 3, 12], weights=[90, 7, 2.5, 0.5])[0]))
    assert not any(r.alert for r in out)
    r = det.update(t + 0.1, 500)
    assert r.alert and r.direction == "up"
    assert r.baseline == 1 and r.threshold < 500
    assert not det.update(t + 0.2, 1).alert


# --- contract --------------------------------------------------------------------------------------

def test_score_and_alert_contract():
    series = rhythmic_minutes(days=3, seed=60)
    series[3000] = (series[3000][0], 5000)
    for r in feed(SpikeDetector(), series):
        assert 0.0 <= r.score <= 1.0
        assert r.alert == (r.score >= 0.5)        # the default decision is the 0.5 line of the score
    alerts = SpikeAlerts()
    flags = [alerts.update(t, v) for t, v in series]
    assert all(type(f) is bool for f in flags)
    assert flags.index(True) == 3000


def test_datetime_and_epoch_seconds_give_the_same_results():
    series = rhythmic_minutes(days=2, seed=70)
    series[2500] = (series[2500][0], 4000)
    a = feed(SpikeDetector(), series)
    naive = [(dt.datetime(1970, 1, 1) + dt.timedelta(seconds=t), v) for t, v in series]
    aware = [(dt.datetime.fromtimestamp(t, tz=dt.timezone.utc), v) for t, v in series]
    assert [r.as_dict() for r in feed(SpikeDetector(), naive)] == [r.as_dict() for r in a]
    assert [r.as_dict() for r in feed(SpikeDetector(), aware)] == [r.as_dict() for r in a]


def test_deterministic_and_resumable_from_a_pickle():
    series = rhythmic_minutes(days=3, seed=80)
    series[3500] = (series[3500][0], 3000)
    a = [r.as_dict() for r in feed(SpikeDetector(), series)]
    assert a == [r.as_dict() for r in feed(SpikeDetector(), series)]
    det = SpikeDetector()
    feed(det, series[:2000])
    det = pickle.loads(pickle.dumps(det))           # the detection engine checkpoints its detectors
    assert [r.as_dict() for r in feed(det, series[2000:])] == a[2000:]


def test_score_one_does_not_learn_and_learn_one_does():
    series = rhythmic_minutes(days=2, seed=90)
    ref = [r.as_dict() for r in feed(SpikeDetector(), series)]
    det = SpikeDetector()
    out = []
    for t, v in series:
        det.score_one({"ts": t, "value": 10 * v})   # peeking must not change what comes next
        out.append(det.update(t, v).as_dict())
    assert out == ref
    river = SpikeDetector()
    for t, v in series:
        river.learn_one({"ts": t, "value": v})
    assert river.n == len(series)
    assert river.score_one({"ts": series[-1][0] + MINUTE, "value": 50_000}) > 0.5


def test_non_finite_values_are_skipped():
    series = rhythmic_minutes(days=1, seed=100)
    ref = [r.as_dict() for r in feed(SpikeDetector(), series)]
    det = SpikeDetector()
    out = []
    for i, (t, v) in enumerate(series):
        if i % 97 == 0:
            assert not det.update(t, float("nan")).alert
            assert not det.update(t, float("inf")).alert
        out.append(det.update(t, v).as_dict())
    assert out == ref


def test_unknown_option_is_refused():
    with pytest.raises(TypeError, match="memroy"):
        SpikeDetector(memroy=10)


# --- resources -------------------------------------------------------------------------------------

def test_memory_is_bounded():
    det = SpikeDetector(memory=500)
    rng = random.Random(110)
    sizes = []
    for i in range(12_000):
        t = T0 + i * MINUTE
        det.update(t, poisson(rng, rhythm(t, 20.0)) * (6 if i % 1000 == 999 else 1))
        if i in (7_000, 9_500, 11_999):     # the daily profile is full after season_days + 1 days
            sizes.append((det.state_size(), len(pickle.dumps(det))))
    assert sizes[0][0] == sizes[1][0] == sizes[2][0]
    assert max(s[1] for s in sizes) < 1.1 * min(s[1] for s in sizes)


def test_update_speed_smoke():
    """Not a timing assertion (the machine is shared): it runs, and the rate is printed for the log."""
    series = rhythmic_minutes(days=14, seed=120)
    det = SpikeDetector()
    t0 = time.perf_counter()
    for t, v in series:
        det.update(t, v)
    rate = len(series) / (time.perf_counter() - t0)
    print(f"SpikeDetector: {rate:,.0f} updates/s")
    assert det.n == len(series)


# --- mail rhythms: weekly and monthly schedules -----------------------------------------------------

WEEK = 7 * DAY


def office(t: float, base: float = 40.0) -> float:
    """Messages per minute of a business service: a daily rhythm on weekdays, a third of it at weekends
    (T0 is a Monday)."""
    weekend = ((t - T0) // DAY) % 7 >= 5
    return rhythm(t, base) * (0.3 if weekend else 1.0)


def test_weekly_blast_alerts_in_its_first_week_only_and_a_surge_elsewhere_still_alerts():
    """A Tuesday 09:00 newsletter blast (10x the weekday peak for 5 minutes) on top of a weekday/weekend
    shape: a known schedule once seen, so weeks 2 and 3 are silent; the same surge on a Wednesday
    afternoon of week 3 is not on any schedule and alerts."""
    rng = random.Random(130)
    det = SpikeDetector()
    blast = {T0 + w * WEEK + 1 * DAY + 9 * 3600 + m * MINUTE for w in range(3) for m in range(5)}
    surge_at = T0 + 2 * WEEK + 2 * DAY + 14 * 3600
    surge = {surge_at + m * MINUTE for m in range(5)}
    alerts = []
    for t in range(T0, T0 + 3 * WEEK, MINUTE):
        lam = 10 * 1.7 * 40.0 if t in blast or t in surge else office(t)
        r = det.update(t, poisson(rng, lam))
        if r.alert and r.direction == "up":       # what pages (the engine's _is_spike is upward only)
            alerts.append(t)
    def in_blast(w):
        at = T0 + w * WEEK + DAY + 9 * 3600
        return [t for t in alerts if at <= t < at + 5 * MINUTE]

    assert len(in_blast(0)) >= 1            # the first blast is news (after warm-up: day 2 of the series)
    assert in_blast(1) == [] and in_blast(2) == []
    elsewhere = [t for t in alerts if t in surge]
    assert elsewhere and elsewhere[0] == surge_at       # at once (and at most an escalation as it grows)
    assert len(alerts) == len(in_blast(0)) + len(elsewhere)     # weekday/weekend shape: nothing else


def test_monthly_run_stops_alerting_once_seen():
    """An invoicing run on the 1st of each month, 02:00-02:30 (5-min buckets, 4x the busiest daytime bucket):
    news in its first month, a schedule from the second; a run of the same size on the 20th alerts."""
    rng = random.Random(140)
    det = SpikeDetector()
    runs = [1_796_083_200, 1_798_761_600, 1_801_440_000]   # Dec, Jan, Feb 1st 00:00 UTC
    run_slots = {r + 2 * 3600 + k * 300 for r in runs for k in range(6)}
    odd = 1_800_403_200 + 2 * 3600          # 2027-01-20 02:00 UTC, a Wednesday (no run on that weekday)
    odd_slots = {odd + k * 300 for k in range(6)}
    alerts = []
    for t in range(T0, runs[-1] + 5 * DAY, 300):
        lam = 12 * 5 * 24.0 if t in run_slots or t in odd_slots else 5 * rhythm(t, 40.0)
        r = det.update(t, poisson(rng, lam))
        if r.alert and r.direction == "up":
            alerts.append(t)
    per_run = [[t for t in alerts if r <= t < r + 3 * 3600] for r in runs]
    assert per_run[0], "the first run is news"
    assert per_run[1] == [] and per_run[2] == []
    elsewhere = [t for t in alerts if t in odd_slots]
    assert elsewhere and elsewhere[0] == odd
    # Anything else is the Poisson tail of the rhythm itself: one bucket (395 where ~330 is usual, day 50)
    # in these three months; docs/spike-detector.md lists this benign rate.
    assert len(alerts) - len(per_run[0]) - len(elsewhere) <= 1


def test_state_is_plain_json_and_resumes_exactly():
    """to_state()/from_state(): the versioned non-pickle checkpoint format (issue 17) needs plain JSON."""
    series = [(t, poisson(random.Random(t), office(t))) for t in range(T0, T0 + 9 * DAY, 5 * MINUTE)]
    series[2000] = (series[2000][0], 3000)
    a = [r.as_dict() for r in feed(SpikeDetector(), series)]
    for cut in (100, 1500):                 # during warm-up (no daily profile yet) and long after it
        det = SpikeDetector()
        feed(det, series[:cut])
        text = json.dumps(det.to_state(), allow_nan=False)
        det = SpikeDetector.from_state(json.loads(text))
        assert [r.as_dict() for r in feed(det, series[cut:])] == a[cut:]
    with pytest.raises(ValueError, match="format"):
        SpikeDetector.from_state({"format": "something/9"})
