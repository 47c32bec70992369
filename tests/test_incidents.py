"""Incident grouping, rate-limited updates, resolution; alert ids and the alert v1 encoding."""

from __future__ import annotations

import hashlib
import json
import uuid

from mailaudit.detect.alerts import NAMESPACE, Alert, alert_id, incident_id
from mailaudit.detect.incidents import DistinctCounter, IncidentTracker
from mailaudit.ingest.wire import format_time

T0 = 1_790_000_000_000


def _h(i: int) -> int:
    return int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "big")


def trigger(tr, t, *, kind="concatenated_to", eid=None, scope="c1", category="disclosure", severity="critical",
            exposed=()):
    inc, new = tr.open_or_get("svc", scope, category, t, kind, severity)
    for x in exposed:
        inc.exposed.add(_h(x))
    return tr.record(inc, new, kind=kind, severity=severity, event_id=eid or str(uuid.uuid4()),
                     sent_at_ms=t, campaign=scope, template=None, copies=1, summary="s", evidence={"n": 1})


def test_namespace_is_fixed_and_ids_are_uuid5_of_the_documented_names():
    assert NAMESPACE.bytes == b"mailaudit-alerts"
    eid = "0b9e3c34-3f7c-4a44-9d1e-1d7d4c1a2b3c"
    assert alert_id(eid, "bcc_header") == str(uuid.uuid5(NAMESPACE, f"{eid}:bcc_header"))
    assert alert_id(eid, "bcc_header") != alert_id(eid, "bcc_header", resolved=True)
    assert incident_id("billing", "camp", "disclosure", 123) == str(uuid.uuid5(NAMESPACE, "billing:camp:disclosure:123"))
    assert incident_id("billing", None, "spike", 5) == str(uuid.uuid5(NAMESPACE, "billing::spike:5"))


def test_one_cause_is_one_incident_with_rate_limited_updates_and_running_counts():
    tr = IncidentTracker(update_interval_s=60, resolve_after_s=900)
    alerts = []
    # 5,000 leaking copies over 250 s of event time, two kinds interleaved.
    for i in range(5000):
        kind = "concatenated_to" if i % 2 == 0 else "visible_disclosure"
        a = trigger(tr, T0 + i * 50, kind=kind, exposed=[i, i + 1])
        if a:
            alerts.append(a)
    assert [a.status for a in alerts] == ["open"] + ["update"] * (len(alerts) - 1)
    assert len({a.incident_id for a in alerts}) == 1
    # open at 0 s, then at most one per 60 s of event time over 250 s: 60, 120, 180, 240
    assert len(alerts) == 5
    times = [a.last_seen_ms for a in alerts]
    assert all(b - a >= 60_000 for a, b in zip(times, times[1:]))
    assert [a.copies for a in alerts] == sorted(a.copies for a in alerts)
    resolved = tr.expire("svc", T0 + 4999 * 50 + 900_001)
    assert len(resolved) == 1
    r = resolved[0]
    assert r.status == "resolved" and r.incident_id == alerts[0].incident_id
    assert r.copies == 5000 and r.exposed == 5001
    assert r.kind == "concatenated_to"
    assert r.evidence["kinds"] == {"concatenated_to": 2500, "visible_disclosure": 2500}
    assert r.first_seen_ms == T0 and r.last_seen_ms == T0 + 4999 * 50
    assert tr.open == {"svc": {}}


def test_no_resolution_before_the_quiet_period_and_a_new_trigger_after_it_opens_a_new_incident():
    tr = IncidentTracker(update_interval_s=60, resolve_after_s=900)
    first = trigger(tr, T0)
    assert tr.expire("svc", T0 + 900_000) == []
    assert trigger(tr, T0 + 10_000) is None             # within the interval: no page
    resolved = tr.expire("svc", T0 + 910_001)
    assert [a.status for a in resolved] == ["resolved"]
    again = trigger(tr, T0 + 2_000_000)
    assert again.status == "open" and again.incident_id != first.incident_id
    assert again.incident_id == incident_id("svc", "c1", "disclosure", T0 + 2_000_000)


def test_categories_and_scopes_are_separate_incidents():
    tr = IncidentTracker()
    a = trigger(tr, T0, kind="concatenated_to")
    b = trigger(tr, T0, kind="volume_spike", category="spike", severity="warning")
    c = trigger(tr, T0, kind="concatenated_to", scope="other")
    assert {a.status, b.status, c.status} == {"open"}
    assert len({a.incident_id, b.incident_id, c.incident_id}) == 3


def test_severity_escalates_within_an_incident():
    tr = IncidentTracker(update_interval_s=60)
    a = trigger(tr, T0, kind="visible_disclosure", severity="warning")
    b = trigger(tr, T0 + 61_000, kind="concatenated_to", severity="critical")
    assert a.severity == "warning" and b.severity == "critical" and b.status == "update"


def test_redelivered_trigger_is_not_counted_twice():
    tr = IncidentTracker()
    inc, new = tr.open_or_get("svc", "c1", "disclosure", T0, "bcc_header", "warning")
    assert tr.seen_trigger(inc, "e1") is False
    assert tr.seen_trigger(inc, "e1") is True


def test_distinct_counter_exact_then_sketch_within_two_percent():
    c = DistinctCounter(exact_max=1000)
    for i in range(800):
        c.add(_h(i))
        c.add(_h(i))
    assert len(c) == 800 and not c.approximate
    for i in range(200_000):
        c.add(_h(i))
    assert c.approximate
    assert abs(len(c) - 200_000) / 200_000 < 0.02
    assert len(c.registers) == 1 << 14          # bounded: 16 KiB whatever the leak size


def test_alert_json_is_format_v1_and_round_trips():
    a = Alert(
        alert_id=alert_id("e", "bcc_header"), incident_id=incident_id("s", None, "disclosure", 1), status="open",
        kind="bcc_header", severity="warning", service="s", campaign=None, template="t", trigger_event_id="e",
        first_seen_ms=T0, last_seen_ms=T0 + 5, copies=1, exposed=2, detected_at_ms=T0 + 5,
        summary="Bcc left in", evidence={"sample": ["j***@gmail.com"], "bcc_exposed": 2},
    )
    d = json.loads(a.to_json())
    assert set(d) == {"v", "alert_id", "incident_id", "status", "kind", "severity", "service", "campaign",
                      "template", "trigger_event_id", "first_seen", "last_seen", "copies", "exposed",
                      "detected_at", "summary", "evidence"}
    assert d["v"] == 1 and d["first_seen"] == format_time(T0) and d["first_seen"].endswith("Z")
    assert list(d) == sorted(d)                  # canonical: sorted keys
    assert Alert.from_json(a.to_json()) == a
    assert a.category == "disclosure"
