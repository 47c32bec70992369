"""Recipient-count novelty (detect/novelty.py), alone and in the engine: an order-of-magnitude jump in
recipients per message alerts on that message without warm-up; ordinary growth and counts the service
has sent before do not."""

from __future__ import annotations

import json
import random

from mailaudit.config import DetectConfig
from mailaudit.detect.engine import DetectionEngine
from mailaudit.detect.novelty import RecipientNovelty

from test_engine import ev, users


def feed(nov, values, t0=0.0):
    return [nov.update(t0 + i, v) for i, v in enumerate(values)]


def test_single_recipient_service_then_hundreds_is_novel_after_a_short_history():
    nov = RecipientNovelty()
    out = feed(nov, [1] * 8 + [300])
    assert [r.novel for r in out] == [False] * 8 + [True]
    assert out[-1].reference == 1 and out[-1].ratio == 300


def test_no_verdict_before_min_history():
    nov = RecipientNovelty()
    assert not any(r.novel for r in feed(nov, [1, 1, 1, 1, 500]))     # four messages are not a history


def test_ordinary_growth_is_not_novel():
    """A mailing list growing 3 % a day, one message a day for a year, with day-to-day noise."""
    rng = random.Random(1)
    nov = RecipientNovelty()
    sizes = [max(1, int(20 * 1.03 ** d * rng.uniform(0.8, 1.2))) for d in range(365)]
    assert sizes[-1] > 1000
    assert not any(r.novel for r in feed(nov, sizes))


def test_a_size_sent_before_is_not_novel_and_one_outlier_does_not_blind_it():
    nov = RecipientNovelty()
    feed(nov, [1] * 20 + [400] + [1] * 20)
    assert not nov.update(100, 400).novel                 # seen before (history < 100: the largest counts)
    nov = RecipientNovelty()
    feed(nov, [2] * 500 + [5000] + [2] * 500)             # one 5000 among 1000 twos: set aside as the top 1 %
    assert nov.reference() == 2
    assert nov.update(2000, 300).novel


def test_state_is_json_and_resumes_exactly():
    rng = random.Random(2)
    values = [rng.choice([1, 1, 1, 2, 3, 7]) for _ in range(300)] + [90, 1, 2]
    a = [r.as_dict() for r in feed(RecipientNovelty(), values)]
    nov = RecipientNovelty()
    feed(nov, values[:150])
    state = json.loads(json.dumps(nov.to_state()))
    nov = RecipientNovelty.from_state(state)
    assert [r.as_dict() for r in feed(nov, values[150:], t0=150)] == a[150:]
    assert nov.state_size() < 40


# --- in the engine --------------------------------------------------------------------------------

def test_engine_alerts_on_the_jump_itself_with_a_ten_minute_history():
    eng = DetectionEngine(DetectConfig())
    out = []
    for k in range(30):                                       # ten minutes of single-recipient receipts
        u = users(1, k)[0]
        out += eng.process(ev(f"<{u}>", [u], t=k * 20_000, service="receipts"))
    assert out == []
    big = ev("undisclosed-recipients:;", users(250), t=30 * 20_000 + 700, service="receipts")
    alerts = eng.process(big)
    assert [(a.kind, a.trigger_event_id) for a in alerts] == [("recipient_spike", big.event_id)]
    ev_ = alerts[0].evidence
    assert ev_["source"] == "novelty" and ev_["recipients"] == 250 and ev_["reference"] == 1


def test_engine_stays_silent_on_growth_small_jumps_and_new_services():
    eng = DetectionEngine(DetectConfig())
    out = []
    t = 0
    # A team list growing from 30 to ~200 addresses over 60 messages: no jump of 10x.
    for k in range(60):
        n = int(30 * 1.033 ** k)
        out += eng.process(ev("team@acme.example", users(n), t=t, service="teams"))
        t += 30_000
    # One to fifteen recipients: ten times the usual, but under the 20-recipient mail minimum.
    for k in range(10):
        u = users(1, k)[0]
        out += eng.process(ev(f"<{u}>", [u], t=t, service="small"))
        t += 10_000
    out += eng.process(ev("x@acme.example", users(15), t=t, service="small"))
    # A service whose first messages are already big has no history to jump from.
    for k in range(3):
        out += eng.process(ev("undisclosed-recipients:;", users(300), t=t + k, service="fresh"))
    assert [a for a in out if a.category == "spike"] == []


# --- per kind of message (template; template-less campaign mail; the rest) -------------------------

def test_a_new_kind_of_message_is_not_judged_on_its_size_but_a_known_template_is():
    """Receipts (one recipient each) then: a first Bcc timetable of 40, a first template-less campaign in
    50-recipient submissions — new kinds, silent; then the receipt template itself mailed to 300
    envelope recipients — the bug the check exists for."""
    eng = DetectionEngine(DetectConfig())
    out = []
    for k in range(40):
        u = users(1, k)[0]
        out += eng.process(ev(f"<{u}>", [u], t=k * 20_000, service="studio", template="receipt"))
    t = 40 * 20_000
    out += eng.process(ev("hello@yoga.example", users(40), t=t, service="studio", template="timetable"))
    for j in range(3):
        out += eng.process(ev("undisclosed-recipients:;", users(50, 100 * j), t=t + 1000 + j, service="studio",
                              campaign="agm-2026"))
    assert [a for a in out if a.category == "spike"] == []
    bug = ev("undisclosed-recipients:;", users(300), t=t + 5000, service="studio", template="receipt")
    alerts = eng.process(bug)
    assert [(a.kind, a.trigger_event_id) for a in alerts] == [("recipient_spike", bug.event_id)]


def test_kind_novelty_state_is_json_and_bounded():
    from mailaudit.detect.novelty import KindNovelty, message_kind
    kn = KindNovelty(max_kinds=3)
    for i, kind in enumerate(["a", "b", "c", "a", "d"]):
        kn.update(i, 1, kind)
    assert list(kn.kinds) == ["c", "a", "d"]             # "b" least recently seen, dropped
    back = KindNovelty.from_state(json.loads(json.dumps(kn.to_state())))
    assert back.to_state() == kn.to_state()
    assert message_kind("receipt", "c1") == "receipt" and message_kind(None, "c1") != message_kind(None, None)
