"""The detection engine end to end on hand-built events: first-copy alerts, group waits, incidents,
lateness, spikes, exposure rows, checkpoints."""

from __future__ import annotations

import itertools
import json
import uuid

import pytest

from mailaudit.config import DetectConfig, SpikeRules
from mailaudit.detect.engine import DetectionEngine
from mailaudit.detect.exposure import summarise
from mailaudit.ingest.privacy import AddressHasher
from mailaudit.ingest.wire import Event

T0 = 1_790_000_040_000          # on a minute boundary
_ids = itertools.count()


def ev(to, env, *, t=0, service="svc", mid=None, cc="", bcc=None, campaign=None, template=None):
    n = next(_ids)
    return Event(
        event_id=str(uuid.uuid5(uuid.NAMESPACE_OID, f"eng-{n}")), sent_at_ms=T0 + t, service=service,
        message_id=mid or f"<m{n}@acme.example>", from_="Acme <noreply@acme.example>", to=to,
        envelope_to=list(env), cc=cc, bcc=bcc, campaign=campaign, template=template,
    )


def users(n, offset=0):
    return [f"user{i}@d{i % 41}.example" for i in range(offset, offset + n)]


def run(engine, events):
    out = []
    for e in events:
        out.extend(engine.process(e))
    return out


def no_spikes(**kw) -> DetectConfig:
    return DetectConfig(spikes=SpikeRules(enabled=False), **kw)


def benign_events(t0=0, n=300):
    """Normal mail of several shapes, all of which must stay silent."""
    out = []
    staff = [f"s{i}@acme.example" for i in range(300)]
    for i in range(n):
        t = t0 + i * 200
        k = i % 6
        if k == 0:
            u = users(1, i)[0]
            out.append(ev(f"Reader <{u}>", [u], t=t, service="newsletter", campaign="nl-7"))
        elif k == 1:
            u = users(1, i)[0]
            out.append(ev(f'"Doe, J." <{u}>', [u], t=t, service="billing", template="receipt"))
        elif k == 2:
            out.append(ev(", ".join(staff), staff, t=t, service="internal"))
        elif k == 3:
            out.append(ev("undisclosed-recipients:;", users(400, i), t=t, service="internal"))
        elif k == 4:
            g = users(3, i)
            out.append(ev(", ".join(g[:2]), g, cc=g[2], t=t, service="support"))
        else:
            g = users(3, i)
            mid = f"<thread{i}@acme.example>"
            for j, a in enumerate(g):       # one copy per recipient, a few hundred ms apart
                out.append(ev(", ".join(g), [a], t=t + j * 300, service="support", mid=mid))
    return out


def test_benign_traffic_raises_nothing():
    eng = DetectionEngine(no_spikes())
    alerts = run(eng, benign_events()) + eng.flush()
    assert alerts == []
    assert eng.stats["waits"] > 0 and eng.stats["waits_fired"] == 0


def test_concatenated_to_campaign_alerts_on_copy_one_with_critical_severity():
    audience = users(200)
    to = ", ".join(audience)
    eng = DetectionEngine(no_spikes())
    first = eng.process(ev(to, [audience[0]], campaign="nl-leak", service="newsletter"))
    assert len(first) == 1
    a = first[0]
    assert (a.status, a.kind, a.severity, a.copies) == ("open", "concatenated_to", "critical", 1)
    assert a.evidence["kinds"] == ["concatenated_to", "visible_disclosure"]
    assert a.evidence["strangers"] == 199 and a.exposed == 199
    assert a.campaign == "nl-leak" and a.service == "newsletter"
    # Evidence quotes masked addresses only.
    blob = a.to_json()
    assert not any(u in blob for u in audience)
    assert all("***@" in s for s in a.evidence["sample"]) and len(a.evidence["sample"]) == 5


def test_five_thousand_copy_leak_is_one_incident_with_running_counts():
    eng = DetectionEngine(no_spikes())
    audience = users(5000)
    batches = [audience[i:i + 100] for i in range(0, 5000, 100)]
    alerts = []
    t = 0
    for batch in batches:
        to = ", ".join(batch)
        for a in batch:
            alerts += eng.process(ev(to, [a], t=t, campaign="leak", service="newsletter"))
            t += 25                                  # 40 copies/s: 125 s of event time
    alerts += eng.flush()
    assert len({a.incident_id for a in alerts}) == 1
    statuses = [a.status for a in alerts]
    assert statuses[0] == "open" and statuses[-1] == "resolved"
    assert statuses[1:-1] == ["update"] * (len(statuses) - 2)
    assert 1 <= statuses.count("update") <= 3        # 125 s at one per 60 s
    final = alerts[-1]
    assert final.copies == 5000 and final.exposed == 5000
    assert final.evidence["kinds"] == {"concatenated_to": 5000}


def test_group_message_sent_as_one_copy_per_recipient_does_not_alert():
    eng = DetectionEngine(no_spikes())
    g = users(4)
    mid = "<group@acme.example>"
    out = run(eng, [ev(", ".join(g), [a], t=i * 400, mid=mid) for i, a in enumerate(g)])
    out += eng.process(ev("x@y.example", ["x@y.example"], t=60_000))   # time moves past the wait
    out += eng.flush()
    assert out == []
    assert eng.stats["waits"] == 4 and eng.stats["waits_cleared"] == 4


def test_sibling_arriving_before_the_copy_also_accounts_for_it():
    eng = DetectionEngine(no_spikes())
    g = users(3)
    mid = "<g2@acme.example>"
    out = run(eng, [ev(", ".join(g), g[1:], t=1000, mid=mid),     # out of order: later copy first
                    ev(", ".join(g), [g[0]], t=0, mid=mid)])
    out += eng.flush()
    assert out == []


def test_unaccounted_strangers_fire_after_the_wait_and_not_before():
    eng = DetectionEngine(no_spikes())
    g = users(4)
    out = eng.process(ev(", ".join(g), [g[0]], t=0, mid="<lone@acme.example>"))
    assert out == []
    assert eng.process(ev("x@y.example", ["x@y.example"], t=4_999)) == []
    out = eng.process(ev("x@y.example", ["x@y.example"], t=5_000))
    assert len(out) == 1
    a = out[0]
    assert (a.kind, a.severity, a.status) == ("visible_disclosure", "warning", "open")
    assert a.evidence["strangers_unaccounted"] == 3 and a.exposed == 3
    assert a.detected_at_ms == T0                    # backtest mode: the trigger's own sent_at


def test_partially_accounted_group_fires_only_for_what_is_left():
    eng = DetectionEngine(no_spikes())
    g = users(5)
    mid = "<part@acme.example>"
    out = run(eng, [ev(", ".join(g), [g[0]], t=0, mid=mid), ev(", ".join(g), [g[1]], t=100, mid=mid)])
    out += eng.flush()
    fired = [a for a in out if a.status == "open"]
    assert len(fired) == 1 and fired[0].evidence["strangers_unaccounted"] == 3


def test_repeating_visible_list_across_a_campaign_fires_without_waiting():
    # Three parties: below campaign_list_parties (4 would fire on the first copy, see test_org.py).
    eng = DetectionEngine(no_spikes())
    g = users(3)
    to = ", ".join(g)
    out = []
    for i, a in enumerate(g[:3]):
        out += eng.process(ev(to, [a], t=i * 10, campaign="promo-9"))
    assert [a.status for a in out] == ["open"]
    assert out[0].severity == "critical" and out[0].evidence["repeated_on_messages"] == 3


def test_per_service_override_moves_the_threshold_for_that_service_only():
    cfg = no_spikes(services={"billing": {"disclosure": {"strangers_critical": 5}}})
    eng = DetectionEngine(cfg)
    g = users(7)
    assert len(eng.process(ev(", ".join(g), [g[0]], service="billing"))) == 1
    assert eng.process(ev(", ".join(g), [g[0]], service="shipping")) == []


def test_bad_override_fails_at_start():
    from mailaudit.config import ConfigError
    with pytest.raises(ConfigError, match="strangers_crit"):
        DetectionEngine(no_spikes(services={"billing": {"disclosure": {"strangers_crit": 5}}}))


def test_late_copy_is_counted_and_still_checked_for_disclosure():
    eng = DetectionEngine(no_spikes(lateness_s=60))
    eng.process(ev("a@x.example", ["a@x.example"], t=120_000))
    people = users(12)
    out = eng.process(ev("Undisclosed recipients:;", people, bcc=", ".join(people), t=0))
    assert eng.stats["late"] == 1
    assert [a.kind for a in out] == ["bcc_header"]


def test_incident_resolves_when_the_watermark_passes_and_advance_drives_idle_services():
    cfg = no_spikes(lateness_s=60, resolve_after_s=900)
    eng = DetectionEngine(cfg)
    people = users(12)
    open_ = eng.process(ev("Undisclosed recipients:;", people, bcc=", ".join(people), t=0))
    assert open_[0].status == "open"
    assert eng.advance(T0 + 900_000) == []
    out = eng.advance(T0 + 900_001)
    assert [a.status for a in out] == ["resolved"] and out[0].incident_id == open_[0].incident_id
    assert eng.open_incidents() == []


def test_clock_sets_detected_at_in_live_mode():
    eng = DetectionEngine(no_spikes(), clock=lambda: 42_000)
    people = users(12)
    a = eng.process(ev("Undisclosed recipients:;", people, bcc=", ".join(people)))[0]
    assert a.detected_at_ms == 42_000


def test_exposure_rows_list_exactly_the_exposed_addresses():
    hasher = AddressHasher(b"test-key-0123456789abcdef", "k7")
    eng = DetectionEngine(no_spikes(), hasher=hasher)
    cc = users(30)
    recipients = users(3, offset=100)
    events = [ev(f"Customer <{r}>", [r], cc=", ".join(cc), t=i * 100, template="notice")
              for i, r in enumerate(recipients)]
    benign = ev("z@q.example", ["z@q.example"], t=50)       # not part of the incident
    alerts = run(eng, events[:1] + [benign] + events[1:]) + eng.flush()
    rows = eng.take_exposures()
    inc = {a.incident_id for a in alerts}
    assert len(inc) == 1 and {r.incident_id for r in rows} == inc
    report = summarise(rows)
    assert {e.address_hash for e in report} == {hasher.hash(a) for a in cc}
    assert all(e.copies == 3 and e.recipients == 3 for e in report)
    assert {r.key_id for r in rows} == {"k7"}
    assert all(r.address_masked.count("***@") == 1 for r in rows)
    assert alerts[-1].exposed == 30
    assert eng.take_exposures() == []


def test_exposure_of_a_concatenated_list_includes_each_recipient_seen_by_the_others():
    hasher = AddressHasher(b"another-key-0123456789abcdef")
    eng = DetectionEngine(no_spikes(), hasher=hasher)
    g = users(12)
    run(eng, [ev(", ".join(g), [a], t=i, campaign="c") for i, a in enumerate(g[:2])])
    report = {e.address_hash: e for e in summarise(eng.take_exposures())}
    assert set(report) == {hasher.hash(a) for a in g}
    # g[0] is shown only by the copy sent to g[1]; g[2:] by both copies.
    assert report[hasher.hash(g[0])].copies == 1
    assert report[hasher.hash(g[5])].copies == 2


def test_checkpoint_restore_continues_without_duplicate_alerts():
    cfg = no_spikes()
    audience = users(300)
    events = []
    t = 0
    for batch in (audience[:150], audience[150:]):
        for a in batch:
            events.append(ev(", ".join(batch), [a], t=t, campaign="leak"))
            t += 500                                   # 150 s of event time
    g = users(4, offset=500)
    events.insert(10, ev(", ".join(g), [g[0]], t=events[9].sent_at_ms - T0, mid="<pend@acme.example>"))

    whole = DetectionEngine(cfg)
    expected = run(whole, events) + whole.flush()

    first = DetectionEngine(cfg)
    got = run(first, events[:11])                      # stop right after the waiting copy
    blob = json.dumps(first.state_dict())              # plain JSON, no pickle
    assert not any(a in blob for a in audience + g)
    second = DetectionEngine(cfg)
    second.load_state(json.loads(blob))
    got += run(second, events[11:]) + second.flush()
    assert [a.to_json() for a in got] == [a.to_json() for a in expected]
    assert [a.status for a in got].count("open") == 2  # the leak and the lone waiting copy


def test_volume_spike_after_warm_up_is_one_spike_incident():
    cfg = DetectConfig()
    eng = DetectionEngine(cfg)
    out = []
    # Three hours of steady traffic (30 messages a minute), then a minute with 20x that.
    for minute in range(180):
        for k in range(30):
            u = users(1, k)[0]
            out += eng.process(ev(f"<{u}>", [u], t=minute * 60_000 + k * 2000, service="notify", template="ping"))
    assert [a for a in out if a.kind == "volume_spike"] == []
    surge = []
    for k in range(600):
        u = users(1, k)[0]
        surge += eng.process(ev(f"<{u}>", [u], t=180 * 60_000 + k * 100, service="notify", template="ping"))
    # Decided while the minute is still filling (early verdict on a lower bound of its count), not
    # when the watermark closes it a minute later: 71 messages in 7 s already are a spike.
    assert [a.kind for a in surge] == ["volume_spike"]
    assert surge[0].evidence["partial"] is True and 60 <= surge[0].evidence["messages"] < 100
    assert surge[0].last_seen_ms - (T0 + 180 * 60_000) < 10_000    # its trigger: seconds into the surge
    out += surge
    for k in range(30):
        u = users(1, k)[0]
        out += eng.process(ev(f"<{u}>", [u], t=181 * 60_000 + k * 2000, service="notify", template="ping"))
    out += eng.advance(T0 + 183 * 60_000)
    spikes = [a for a in out if a.kind == "volume_spike"]
    assert spikes and spikes[0].status == "open" and spikes[0].severity == "warning"
    assert "score" in spikes[0].evidence
    assert not [a for a in spikes if a.evidence.get("messages") == 600]   # the full bucket adds no page
    # The template's own series spikes too, but the service-wide incident already covers it.
    assert len({a.incident_id for a in spikes}) == 1 and spikes[0].evidence.get("scope") is None
    assert not [a for a in out if a.category == "disclosure"]


def test_recipient_spike_fires_once_warm_and_never_during_warm_up():
    eng = DetectionEngine(DetectConfig())
    out = []
    # A brand-new service whose very first messages are big: warm-up, no alert.
    for k in range(5):
        out += eng.process(ev("undisclosed-recipients:;", users(300), t=k * 1000, service="fresh"))
    # Three and a half hours of single-recipient receipts, five a minute.
    for k in range(210 * 5):
        u = users(1, k)[0]
        out += eng.process(ev(f"<{u}>", [u], t=k * 12_000, service="receipts", template="receipt"))
    assert out == []
    big = ev("undisclosed-recipients:;", users(400), t=210 * 60_000 + 500, service="receipts", template="receipt")
    out += eng.process(big)
    # Decided on the message itself (recipient novelty: 400x everything this service ever sent), not
    # when its minute closes; the bucket detector agrees when the minute closes and adds no second alert.
    assert [a.kind for a in out] == ["recipient_spike"] and out[0].evidence["source"] == "novelty"
    out += eng.advance(T0 + 212 * 60_000)
    rs = [a for a in out if a.kind == "recipient_spike"]
    assert len(rs) == 1 and rs[0].trigger_event_id == big.event_id
    assert rs[0].evidence["recipients"] == 400 and rs[0].category == "spike" and rs[0].status == "open"
    assert not [a for a in out if a.service == "fresh"]


# --- against the simulator's traffic -------------------------------------------------------------

def test_simulated_benign_traffic_raises_no_disclosure_alert():
    from mailaudit.ingest.simulator import Simulator
    sim = Simulator(seed=21, rate=60.0)
    eng = DetectionEngine(no_spikes())
    alerts = run(eng, sim.events(900)) + eng.flush()
    assert eng.stats["events"] > 40_000 and eng.stats["waits"] > 0
    assert alerts == []


@pytest.mark.parametrize("kind", ["concatenated_to", "run_together", "cc_leak", "bcc_left"])
def test_simulated_disclosure_incident_alerts_on_its_first_copy(kind):
    from mailaudit.ingest.simulator import Simulator
    sim = Simulator(seed=22, rate=40.0)
    hasher = AddressHasher(b"sim-key-0123456789abcdef0123")
    eng = DetectionEngine(no_spikes(), hasher=hasher)
    alerts = run(eng, sim.events(400, incident=kind, incident_at_s=200)) + eng.flush()
    (inj,) = sim.injected
    assert alerts, f"{kind} not detected"
    assert alerts[0].trigger_event_id == inj.event_ids[0]          # copy #1
    assert alerts[0].status == "open" and alerts[0].severity == "critical"
    assert {a.incident_id for a in alerts} == {alerts[0].incident_id}
    assert alerts[-1].status == "resolved" and alerts[-1].copies == len(inj.event_ids)
    report = summarise(eng.take_exposures())
    assert {e.address_hash for e in report} == {hasher.hash(a) for a in inj.exposed}
    assert alerts[-1].exposed == len(set(inj.exposed))


class _Recorder:
    """A test double standing in for the spike detector: records what the engine feeds it."""

    log: list = []

    def __init__(self):
        self.fed = []
        _Recorder.log.append(self.fed)

    def update(self, ts, value):
        self.fed.append((int(ts * 1000) - T0, value))

        class R:
            alert, score, baseline, direction = False, 0.0, None, None
        return R()


def test_buckets_close_on_the_watermark_and_late_events_do_not_reopen_them():
    _Recorder.log = []
    eng = DetectionEngine(DetectConfig(lateness_s=60, spikes=SpikeRules(per_campaign=False)),
                          spike_factory=_Recorder)
    for k in range(5):
        eng.process(ev("a@x.example", ["a@x.example"], t=k * 1000))
    volume, recipients = _Recorder.log             # the service's two series, made with the service
    for k in range(3):
        eng.process(ev("undisclosed-recipients:;", users(7), t=60_000 + k * 1000))
    assert volume == []                            # nothing closed yet: watermark is far behind
    eng.process(ev("a@x.example", ["a@x.example"], t=180_000))     # watermark -> 120 s
    assert volume == [(0, 5), (60_000, 3)]
    assert recipients == [(0, 1), (60_000, 7)]
    eng.process(ev("a@x.example", ["a@x.example"], t=30_000))      # late for the closed minute 0
    assert eng.stats["late"] == 1
    eng.flush()
    # minute 0 is not fed again; the empty minute 2 is a zero; minute 3 holds its one message
    assert volume == [(0, 5), (60_000, 3), (120_000, 0), (180_000, 1)]
    assert recipients == [(0, 1), (60_000, 7), (180_000, 1)]


def test_events_within_the_lateness_window_still_count_in_their_bucket():
    _Recorder.log = []
    eng = DetectionEngine(DetectConfig(lateness_s=60, spikes=SpikeRules(per_campaign=False)),
                          spike_factory=_Recorder)
    eng.process(ev("a@x.example", ["a@x.example"], t=100_000))
    volume, _ = _Recorder.log
    eng.process(ev("a@x.example", ["a@x.example"], t=50_000))       # 50 s out of order: within lateness
    eng.flush()
    assert eng.stats["late"] == 0
    assert volume == [(0, 1), (60_000, 1)]


@pytest.mark.parametrize("with_key", [False, True])
def test_exposed_count_matches_brute_force_over_repeated_lists(with_key):
    import random
    rng = random.Random(5)
    pool = users(48)
    lists = [pool[i:i + 12] for i in range(0, 48, 12)]         # disjoint lists, each repeated on many copies
    eng = DetectionEngine(no_spikes(), hasher=AddressHasher(b"k" * 32) if with_key else None)
    exposed: set[str] = set()
    alerts = []
    for i in range(300):
        vis = rng.choice(lists)
        env = rng.sample(vis, 1) if rng.random() < 0.8 else rng.sample(pool, rng.randint(0, 3))
        alerts += eng.process(ev(", ".join(vis), env, t=i * 10, campaign="c"))
        envs = set(env)
        exposed.update(a for a in vis if envs - {a})          # seen by someone other than itself
    alerts += eng.flush()
    assert alerts[-1].status == "resolved" and alerts[-1].exposed == len(exposed)
