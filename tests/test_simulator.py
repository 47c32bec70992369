"""The simulator: deterministic, realistic benign traffic, and incidents of the right shape.

Addresses are read back with the standard library's ``email.utils.getaddresses`` (not the project's
parser) so these tests check the generated headers independently of the code under detection.
"""

from __future__ import annotations

import collections
import email.utils

import pytest
from kafka.partitioner.default import murmur2

from mailaudit.ingest.simulator import INCIDENT_KINDS, INCIDENT_SERVICE, SERVICES, Simulator
from mailaudit.ingest.wire import decode_event, format_time

START = 1_793_604_600_000           # 2026-11-02T07:30:00Z
TRANSACTIONAL = ("billing", "receipts", "auth", "notifications", "shipping")


def addrs(value: str | None) -> list[str]:
    return [a.lower() for _, a in email.utils.getaddresses([value or ""]) if a]


@pytest.fixture(scope="module")
def benign():
    """Ten minutes of benign traffic at 100 events/s, shared by the property tests."""
    return list(Simulator(seed=7, start_ms=START, rate=100).events(600))


def test_same_seed_same_events_other_seed_other_events():
    a = [e.encode() for e in Simulator(seed=3, start_ms=START, rate=200).events(30)]
    b = [e.encode() for e in Simulator(seed=3, start_ms=START, rate=200).events(30)]
    c = [e.encode() for e in Simulator(seed=4, start_ms=START, rate=200).events(30)]
    assert len(a) > 1000
    assert a == b
    assert a != c
    # A second call on the same object replays the same traffic (and the same incident).
    sim = Simulator(seed=3, start_ms=START, rate=200)
    first = [e.event_id for e in sim.events(30, incident="cc_leak", incident_at_s=5)]
    assert [e.event_id for e in sim.events(30, incident="cc_leak", incident_at_s=5)] == first


def test_events_are_valid_wire_v1_in_event_time_order(benign):
    assert len(benign) > 0.5 * 100 * 600
    times = [e.sent_at_ms for e in benign]
    assert times == sorted(times)
    assert START <= times[0] and times[-1] < START + 600_000
    assert len({e.event_id for e in benign}) == len(benign)
    for e in benign[:: max(1, len(benign) // 3000)]:
        back = decode_event(e.encode())
        assert back.to_wire() == e.to_wire()
    assert decode_event(benign[0].encode()).sent_at_ms == benign[0].sent_at_ms
    assert format_time(benign[0].sent_at_ms).startswith("2026-11-02T07:3")


def test_many_services_spread_over_partitions(benign):
    services = collections.Counter(e.service for e in benign)
    assert set(services) == set(SERVICES) and len(services) >= 8
    # Events are keyed by service: with kafka-python's default partitioner they reach all 4 partitions.
    partitions = {(murmur2(s.encode()) & 0x7FFFFFFF) % 4 for s in services}
    assert partitions == {0, 1, 2, 3}


def test_benign_traffic_discloses_nobody(benign):
    """Every visible address is delivered to, by this submission or a sibling with the same Message-ID,
    and no Bcc header is ever left in."""
    delivered = collections.defaultdict(set)
    for e in benign:
        delivered[e.message_id].update(a.lower() for a in e.envelope_to)
    for e in benign:
        assert e.bcc is None
        visible = addrs(e.to) + addrs(e.cc)
        assert set(visible) <= delivered[e.message_id], e.to_wire()
        assert len(visible) <= 15


def test_one_to_per_copy_for_transactional_and_campaign_mail(benign):
    checked = collections.Counter()
    for e in benign:
        if e.service in TRANSACTIONAL or e.service in ("newsletter", "promotions"):
            to = addrs(e.to)
            assert len(to) == 1 and to[0] == e.envelope_to[0].lower(), e.to_wire()
            assert addrs(e.to) + addrs(e.cc) == [a.lower() for a in e.envelope_to]
            checked[e.service] += 1
    assert all(checked[s] > 100 for s in TRANSACTIONAL + ("newsletter", "promotions"))


def test_newsletter_campaigns_are_bursts_of_distinct_recipients(benign):
    campaigns = collections.defaultdict(list)
    for e in benign:
        if e.service == "newsletter":
            assert e.campaign and e.template
            campaigns[e.campaign].append(e)
    assert len(campaigns) >= 2
    for copies in campaigns.values():
        rcpts = [e.envelope_to[0] for e in copies]
        assert len(set(rcpts)) == len(rcpts)
        assert len({e.message_id for e in copies}) == len(copies)
    # Bursty: the busiest 10 s carry far more than the mean 10 s.
    per10 = collections.Counter((e.sent_at_ms - START) // 10_000 for e in benign if e.service == "newsletter")
    mean = sum(per10.values()) / 60
    assert max(per10.values()) > 4 * mean


def test_internal_and_support_group_shapes(benign):
    internal = [e for e in benign if e.service == "internal"]
    assert all(e.from_.endswith("@acme.example>") for e in internal)
    undisclosed = [e for e in internal if e.to == "Undisclosed recipients:;"]
    assert undisclosed and all(len(e.envelope_to) >= 10 for e in undisclosed)
    groups = [e for e in internal if len(addrs(e.to) + addrs(e.cc)) >= 2]
    assert groups and all(a.endswith("@acme.example") for e in groups for a in addrs(e.to) + addrs(e.cc))

    support = collections.defaultdict(list)
    for e in benign:
        if e.service == "support":
            support[e.message_id].append(e)
    one_submission = [c for c in support.values() if len(c) == 1 and len(c[0].envelope_to) >= 2]
    per_recipient = [c for c in support.values() if len(c) >= 2]
    assert one_submission and per_recipient
    for copies in per_recipient:
        visible = addrs(copies[0].to) + addrs(copies[0].cc)
        assert 2 <= len(visible) <= 4
        assert all(len(c.envelope_to) == 1 for c in copies)
        assert sorted(c.envelope_to[0] for c in copies) == sorted(visible)
        assert copies[-1].sent_at_ms - copies[0].sent_at_ms < 5000


def test_headers_have_realistic_variety(benign):
    tos = [e.to for e in benign]
    assert any("=?utf-8?b?" in t.lower() for t in tos)
    assert any("=?utf-8?q?" in t.lower() for t in tos)
    assert any(t.startswith('"') and "," in t.split("<")[0] for t in tos)
    assert any(t.endswith(")") and "(" in t for t in tos)
    assert any("@" in t and "<" not in t and "(" not in t for t in tos)
    domains = collections.Counter(a.rpartition("@")[2] for e in benign for a in e.envelope_to)
    for d in ("gmail.com", "yahoo.com", "outlook.com", "acme.example"):
        assert domains[d] > 0


def test_daily_rhythm():
    night = Simulator(seed=1, start_ms=START - 4.5 * 3600_000, rate=50, services=["billing"])  # 03:00 UTC
    day = Simulator(seed=1, start_ms=START + 3.5 * 3600_000, rate=50, services=["billing"])     # 11:00 UTC
    n_night = sum(1 for _ in night.events(600))
    n_day = sum(1 for _ in day.events(600))
    assert n_day > 4 * n_night
    flat_night = sum(1 for _ in Simulator(seed=1, start_ms=START - 4.5 * 3600_000, rate=50,
                                          services=["billing"], rhythm=False).events(600))
    assert 0.8 * 50 * 600 < flat_night < 1.2 * 50 * 600


def test_steady_mode_has_no_bursts():
    evs = list(Simulator(seed=1, start_ms=START, rate=200, rhythm=False, burst=1).events(300))
    per10 = collections.Counter((e.sent_at_ms - START) // 10_000 for e in evs)
    assert len(per10) == 30
    assert max(per10.values()) < 1.3 * min(per10.values())
    assert 0.85 * 200 * 300 < len(evs) < 1.15 * 200 * 300


def test_services_subset_and_bad_arguments():
    evs = list(Simulator(seed=1, start_ms=START, rate=50, services=["auth", "internal"]).events(60))
    assert {e.service for e in evs} == {"auth", "internal"}
    with pytest.raises(ValueError):
        Simulator(services=["nope"])
    with pytest.raises(ValueError):
        list(Simulator().events(10, incident="nope"))


def run_incident(kind, **kw):
    sim = Simulator(seed=11, start_ms=START, rate=50)
    evs = list(sim.events(300, incident=kind, incident_at_s=60, **kw))
    [inj] = sim.injected
    by_id = {e.event_id: e for e in evs}
    injected = [by_id[i] for i in inj.event_ids]
    assert inj.kind == kind and inj.service == INCIDENT_SERVICE[kind]
    assert injected and all(e.service == inj.service for e in injected)
    assert inj.start_ms == START + 60_000
    assert inj.start_ms <= injected[0].sent_at_ms < inj.start_ms + 1000
    assert inj.end_ms == injected[-1].sent_at_ms
    ids = set(inj.event_ids)
    others = [e for e in evs if e.event_id not in ids]
    return inj, injected, others


def test_incident_concatenated_to():
    inj, copies, others = run_incident("concatenated_to", incident_size=120)
    assert len(copies) == 120 and inj.campaign and inj.template
    assert len(inj.exposed) == 120
    for e in copies:
        assert e.to.split(", ") == inj.exposed                 # the whole batch, joined with ", "
        assert len(e.envelope_to) == 1 and e.envelope_to[0] in inj.exposed
        assert e.campaign == inj.campaign
    assert sorted(e.envelope_to[0] for e in copies) == sorted(inj.exposed)
    assert not any(len(addrs(e.to)) > 15 for e in others)


def test_incident_run_together():
    inj, copies, others = run_incident("run_together", incident_size=40)
    assert len(copies) == 40 and len(inj.exposed) == 40
    for e in copies:
        assert "," not in e.to and ";" not in e.to and " " not in e.to
        assert e.to.count("@") == 5
        assert e.envelope_to[0] in e.to
        assert e.campaign == inj.campaign
    assert "".join(inj.exposed[:5]) == copies[0].to
    assert not any(e.to.count("@") > 1 and "," not in e.to and " " not in e.to for e in others)


def test_incident_cc_leak():
    inj, copies, others = run_incident("cc_leak", incident_size=25)
    assert len(copies) == 25 and len(inj.exposed) == 30
    for e in copies:
        cc = addrs(e.cc)
        assert cc == inj.exposed
        assert not set(cc) & {a.lower() for a in e.envelope_to}      # strangers: shown, not delivered
        assert addrs(e.to) == [e.envelope_to[0]]
    assert not any(len(addrs(e.cc)) > 5 for e in others)


def test_incident_bcc_left():
    inj, copies, others = run_incident("bcc_left")
    assert len(copies) == 5
    for e in copies:
        assert e.bcc and e.to == "Undisclosed recipients:;"
        assert addrs(e.bcc) == e.envelope_to
    assert set(inj.exposed) == {a for e in copies for a in e.envelope_to}
    assert all(e.bcc is None for e in others)


def test_incident_volume_spike():
    inj, extra, others = run_incident("volume_spike", incident_duration_s=120)
    svc = inj.service
    during = sum(1 for e in extra + others if e.service == svc and START + 60_000 <= e.sent_at_ms < START + 180_000)
    before = sum(1 for e in others if e.service == svc and START - 60_000 <= e.sent_at_ms - 60_000 < START + 60_000)
    assert before > 100
    assert 7 * before < during < 13 * before
    assert inj.end_ms < START + 180_000
    assert all(len(e.envelope_to) == 1 for e in extra)


def test_incident_recipient_spike():
    inj, msgs, others = run_incident("recipient_spike", incident_size=10)
    assert len(msgs) == 10
    assert all(200 <= len(e.envelope_to) <= 500 for e in msgs)
    assert all(addrs(e.to) == [] for e in msgs)
    assert max(len(e.envelope_to) for e in others if e.service == inj.service) == 1


def test_incidents_together_and_clipped_to_duration():
    sim = Simulator(seed=2, start_ms=START, rate=30)
    evs = list(sim.events(120, incident=list(INCIDENT_KINDS), incident_at_s=119.5, incident_size=400))
    assert [i.kind for i in sim.injected] == list(INCIDENT_KINDS)
    ids = {e.event_id for e in evs}
    for inj in sim.injected:
        assert set(inj.event_ids) <= ids
        assert inj.end_ms < START + 120_000
    leak = sim.injected[0]
    assert 0 < len(leak.event_ids) < 400          # the campaign was cut at the end of the run
    assert max(e.sent_at_ms for e in evs) < START + 120_000
