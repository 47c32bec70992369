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


def test_kind_learn_leaves_the_state_update_leaves():
    """``KindNovelty.learn`` (the engine's path for messages under ``min_recipients``) must end in the
    very state ``update`` does, kinds' order and evictions included, over mixed sequences."""
    from mailaudit.detect.novelty import KindNovelty
    rng = random.Random(16)
    for trial in range(30):
        a, b = KindNovelty(max_kinds=4), KindNovelty(max_kinds=4)
        for i in range(rng.randrange(1, 3000)):
            v = rng.choice([0, 1, 1, 1, 2, 3, 7, 40, 300, rng.randrange(0, 5000), float("nan"), float("inf")])
            kind = rng.choice(["receipt", "digest", "", "\x00campaign", f"t{rng.randrange(8)}"])
            a.update(i, v, kind)
            b.learn(v, kind)
        assert json.dumps(b.to_state()) == json.dumps(a.to_state()), trial
        assert list(b.kinds) == list(a.kinds)


def test_engine_state_and_alerts_with_the_learn_only_path_equal_the_verdict_on_every_message():
    """The engine asks for a verdict only from messages of ``min_recipients`` or more; forcing the
    verdict on every message (as before) gives the same alerts and the same stored state."""
    import mailaudit.detect.novelty as novelty

    def events():
        rng = random.Random(7)
        out = []
        for k in range(2500):
            n = rng.choice([1, 1, 1, 1, 2, 3, 5, 25, 40])
            if k in (900, 2000):
                n = 400
            tpl = rng.choice(["receipt", "digest", None])
            g = users(n, k)
            out.append(ev(", ".join(g[:1]), g, t=k * 700, service=rng.choice(["a", "b"]), template=tpl,
                          campaign=None if tpl else rng.choice([None, f"c{k // 300}"])))
        return out

    stream = events()          # once: the helper numbers its events

    def run_with(learn_only: bool):
        eng = DetectionEngine(DetectConfig())
        saved = novelty.KindNovelty.learn
        if not learn_only:
            novelty.KindNovelty.learn = lambda self, value, kind="": self.update(0.0, value, kind)
        try:
            alerts = [(a.kind, a.trigger_event_id) for e in stream for a in eng.process(e)]
        finally:
            novelty.KindNovelty.learn = saved
        return alerts, json.dumps(eng.state_dict(), sort_keys=True, default=str)

    fast, forced = run_with(True), run_with(False)
    assert fast == forced
    assert ("recipient_spike" in {k for k, _ in fast[0]})      # the 400s are judged, and alert
