"""Copies that reach the detector late: their group wait runs from their arrival on the service's clock.

A publisher's spool replayed after an outage, a backlog loaded behind live traffic, a sending host whose
clock runs behind: the copies arrive after the service's clock (moved on by newer events, or by the
consumer's ``advance`` once it is caught up) has passed their send time + ``group_wait_s``. Judged at
once, a thread sent one copy per recipient became a false disclosure incident (found in session 10,
when ``mailaudit run`` reloaded an hour of history behind its own watermark). Pure engine, no servers.
"""

from __future__ import annotations

import itertools
import uuid

from mailaudit.config import DetectConfig, DisclosureRules, SpikeRules
from mailaudit.detect.engine import DetectionEngine
from mailaudit.detect.slips import SlipTracker
from mailaudit.ingest.wire import Event

T0 = 1_790_000_040_000
HOUR = 3_600_000
_ids = itertools.count()


def ev(to, env, *, t=0, service="support", mid=None, cc="", campaign=None, template=None):
    n = next(_ids)
    return Event(
        event_id=str(uuid.uuid5(uuid.NAMESPACE_OID, f"late-{n}")), sent_at_ms=T0 + t, service=service,
        message_id=mid or f"<late{n}@acme.example>", from_="Acme <help@acme.example>", to=to,
        envelope_to=list(env), cc=cc, campaign=campaign, template=template,
    )


def engine(**rules) -> DetectionEngine:
    return DetectionEngine(DetectConfig(spikes=SpikeRules(enabled=False), lateness_s=60,
                                        disclosure=DisclosureRules(**rules)))


def people(n, offset=0):
    return [f"p{i}@d{i % 7}.example" for i in range(offset, offset + n)]


def threads(n, t0=0):
    """Group messages sent as one copy per recipient, copies a few hundred ms apart, each thread's
    copies interleaved with the next thread's (two sending workers), plus one-to-one replies."""
    out = []
    for k in range(n):
        g = people(4, 4 * k)
        mid = f"<thread{k}@acme.example>"
        for j, a in enumerate(g):
            out.append((t0 + k * 1000 + j * 400, ev(", ".join(g), [a], mid=mid)))
        r = people(1, 10_000 + k)[0]
        out.append((t0 + k * 1000 + 150, ev(r, [r])))
    out.sort(key=lambda x: x[0])
    for t, e in out:
        e.sent_at_ms = T0 + t
    return [e for _, e in out]


def live_until(eng, t_ms):
    """The service sent up to ``t_ms``, and the consumer, caught up, advanced the watermark to it."""
    eng.process(ev("x@live.example", ["x@live.example"], t=t_ms))
    return eng.advance(T0 + t_ms - 60_000)


def test_threads_replayed_an_hour_late_wait_for_their_siblings():
    in_order = engine()
    out = [a for e in threads(200) for a in in_order.process(e)] + in_order.flush()
    assert out == [] and in_order.stats["waits"] == 800

    eng = engine()
    assert live_until(eng, HOUR) == []
    out = [a for e in threads(200) for a in eng.process(e)]
    out += eng.advance(T0 + HOUR - 60_000 + 10_000)          # the clock moves on: every wait ends
    assert eng.stats["late"] >= 1000
    assert out == [], [(a.kind, a.evidence.get("strangers_unaccounted")) for a in out]
    assert eng.stats["waits"] == 800 and eng.stats["waits_cleared"] == 800
    assert not eng.services["support"].pending


def test_a_late_lone_copy_still_fires_once_the_wait_from_its_arrival_is_over():
    eng = engine()
    live_until(eng, HOUR)
    clock = eng.services["support"].clock_ms
    g = people(5)
    assert eng.process(ev(", ".join(g), [g[0]], mid="<lone@acme.example>")) == []   # sent an hour ago
    assert eng.advance(clock - 60_000 + 4_999) == []          # 4.999 s of the service's clock later
    out = [a for a in eng.advance(clock - 60_000 + 5_000) if a.status == "open"]
    assert [(a.kind, a.severity) for a in out] == [("visible_disclosure", "warning")]
    assert out[0].evidence["strangers_unaccounted"] == 4
    assert out[0].first_seen_ms == T0                          # the copy's own send time


def test_a_late_concatenated_to_fires_on_its_copy_without_waiting():
    eng = engine()
    live_until(eng, HOUR)
    users = people(40)
    out = eng.process(ev(", ".join(users), [users[0]], campaign="update"))
    assert [(a.kind, a.severity) for a in out] == [("concatenated_to", "critical")]


def test_a_mail_merge_slip_replayed_late_is_still_caught_and_a_late_group_is_not_a_slip():
    customers = [f"cust{i}@{('gmail.com', 'yahoo.com', 'gmx.de')[i % 3]}" for i in range(40)]
    eng = engine()
    live_until(eng, HOUR)
    out = []
    for i in range(39):
        out += eng.process(ev(customers[i], [customers[i]], cc=customers[i + 1], t=i * 2000,
                              campaign="renewal"))
    out += eng.advance(T0 + HOUR - 60_000 + 10_000)
    opened = [a for a in out if a.status == "open"]
    assert len(opened) == 1 and opened[0].evidence["pattern"] == "per_copy_slip"

    eng = engine()
    live_until(eng, HOUR)
    copies = []
    for k in range(20):           # the Cc'd party gets the same Message-ID in its own copy, 4 s later
        a, b = f"x{k}@gmail.com", f"y{k}@yahoo.com"
        mid = f"<g{k}@acme.example>"
        copies += [ev(a, [a], cc=b, t=k * 3000, mid=mid, template="ticket"),
                   ev(a, [b], cc=b, t=k * 3000 + 4000, mid=mid, template="ticket")]
    copies.sort(key=lambda e: e.sent_at_ms)       # the next ticket's first copy comes in between
    out = [a for e in copies for a in eng.process(e)]
    out += eng.advance(T0 + HOUR - 60_000 + 70_000)
    assert out == []


def test_a_copy_behind_its_service_by_seconds_waits_from_its_arrival():
    eng = engine()
    g = people(4)
    mid = "<skew@acme.example>"
    assert eng.process(ev("x@live.example", ["x@live.example"], t=8_000)) == []
    # Sent at 0 by a host whose clock runs 8 s behind; its siblings arrive over the next seconds.
    assert eng.process(ev(", ".join(g), [g[0]], t=0, mid=mid)) == []
    assert eng.process(ev("x@live.example", ["x@live.example"], t=9_000)) == []
    assert eng.process(ev(", ".join(g), g[1:], t=1_000, mid=mid)) == []
    assert eng.process(ev("x@live.example", ["x@live.example"], t=30_000)) == []
    assert eng.stats["waits"] >= 1 and eng.stats["waits_cleared"] == eng.stats["waits"]


def test_slip_candidates_checkpointed_without_a_ripe_time_ripen_at_send_time_plus_the_wait():
    old = {"due_ms": 5_000, "scopes": {"c": {"cand": [[0, "e1", "c", None, "<m>", [], [1], None]],
                                             "env": [], "confirmed": [], "unfired": [], "armed_until": 0}}}
    t = SlipTracker.from_state(old)
    assert t.take_ripe(4_999, 5_000) == []
    assert [c[1] for _, c in t.take_ripe(5_000, 5_000)] == ["e1"]
    t.add("c", [0, "e2", "c", None, "<m2>", [], [2], None], 65_000)     # arrived late: ripe later
    assert t.take_ripe(60_000, 5_000) == [] and t.due_ms == 65_000
    assert [c[1] for _, c in t.take_ripe(65_000, 5_000)] == ["e2"]
