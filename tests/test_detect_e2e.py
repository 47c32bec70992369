"""Detection through the real broker and ClickHouse: first-copy alert, one incident, hold, exposure."""

from __future__ import annotations

import threading
import uuid

import pytest
from kafka import KafkaConsumer, TopicPartition

from helpers import wait_until
from mailaudit.detect.consumer import DetectConsumer
from mailaudit.detect.report import exposure_report, resolve
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.kafka_io import make_producer
from mailaudit.ingest.keys import KeyRing
from mailaudit.ingest.privacy import AddressHasher
from mailaudit.ingest.publisher import HoldGuard
from mailaudit.ingest.schema import migrate
from mailaudit.ingest.simulator import Simulator
from mailaudit.ingest.topics import create_topics

pytestmark = pytest.mark.servers


def _setup(cfg):
    create_topics(cfg.kafka)
    db = Database(cfg.clickhouse)
    migrate(db)
    return db


def _publish(cfg, events):
    p = make_producer(cfg.kafka)
    for e in events:
        p.send(cfg.kafka.topic_events, key=e.service.encode(), value=e.encode())
    p.flush(60)
    p.close()


class DetectThread:
    def __init__(self, cfg):
        self.d = DetectConsumer(cfg)
        self.t = threading.Thread(target=self.d.run, daemon=True)

    def __enter__(self):
        self.t.start()
        return self.d

    def __exit__(self, *exc):
        self.d.stop_event.set()
        self.t.join(30)
        assert not self.t.is_alive()


def _alerts(db):
    return db.execute(
        "SELECT kind, status, severity, service, campaign, toString(trigger_event_id), toString(incident_id), copies, exposed "
        "FROM {db}.alerts FINAL ORDER BY last_seen, kind")


def test_concatenated_to_alerts_on_first_copy_holds_and_reports_exposure(make_cfg):
    cfg = make_cfg()
    cfg.detect.containment = "hold"
    db = _setup(cfg)
    sim = Simulator(seed=3, rate=40.0)
    events = list(sim.events(180, incident="concatenated_to", incident_at_s=90))
    inj = sim.injected[0]
    assert len(inj.event_ids) >= 20
    _publish(cfg, events)
    with DetectThread(cfg) as d:
        wait_until(lambda: d.stats.events == len(events), 90, what="all events read by the detector")
        wait_until(lambda: any(a[0] == "concatenated_to" for a in _alerts(db)), 30, what="concatenated_to alert")
        d.engine.flush()
        assert d.drain_sinks(30)
    alerts = _alerts(db)
    leak = [a for a in alerts if a[3] == inj.service and a[4] == (inj.campaign or inj.template or "")]
    # Caught on the first leaking copy, critical.
    first = leak[0]
    assert first[0] == "concatenated_to" and first[1] == "open" and first[2] == "critical"
    assert first[5] == inj.event_ids[0]
    # One incident for the whole leak, not one page per copy.
    disclosure = [a for a in leak if a[0] in ("concatenated_to", "visible_disclosure", "run_together", "bcc_header")]
    assert len({a[6] for a in disclosure}) == 1
    assert len(disclosure) < len(inj.event_ids) / 2
    # Benign traffic of every other service stayed silent.
    assert {a[3] for a in alerts if a[0] in ("concatenated_to", "visible_disclosure", "run_together", "bcc_header")} == {inj.service}
    # The hold reached mail.control and the SDK guard honours it.
    guard = HoldGuard(cfg.kafka).start()
    try:
        assert guard.wait_ready(20)
        assert guard.is_held(inj.service, inj.campaign or inj.template)
    finally:
        guard.close()
    # The exposure report lists exactly the exposed addresses.
    hasher = AddressHasher(cfg.require_hash_key(), cfg.privacy.hash_key_id)
    report = exposure_report(db, first[6])
    assert {r["address_hash"] for r in report} == {hasher.hash(a) for a in inj.exposed}
    assert all(r["copies"] >= 1 and r["seen_by"] >= 1 for r in report)
    # --resolve: the operator's own user list, matched by keyed hash, names real addresses.
    users = list(inj.exposed[:5]) + ["nobody@example.net"]
    assert resolve(report, users, KeyRing.from_config(cfg.privacy).hashers) == 5
    assert {r["address"] for r in report if r["address"]} == set(inj.exposed[:5])
    # Alerts also went to mail.alerts, in alert format v1.
    c = KafkaConsumer(**cfg.kafka.client_kwargs(), consumer_timeout_ms=3000, auto_offset_reset="earliest")
    c.assign([TopicPartition(cfg.kafka.topic_alerts, 0)])
    bodies = [r.value for r in c]
    c.close()
    assert len(bodies) >= len(alerts)
    assert any(b'"kind":"concatenated_to"' in b and b'"v":1' in b for b in bodies)


def test_restarted_detector_does_not_reemit_alerts(make_cfg):
    cfg = make_cfg()
    db = _setup(cfg)
    db.execute("SYSTEM STOP MERGES {db}.alerts")     # a re-emitted alert stays a second raw row
    sim = Simulator(seed=5, rate=40.0)
    events = list(sim.events(120, incident="bcc_left", incident_at_s=60))
    _publish(cfg, events[: len(events) // 2])
    with DetectThread(cfg) as d:
        wait_until(lambda: d.stats.events == len(events) // 2, 60, what="first half")
        assert d.drain_sinks(30)
    before = {r[0] for r in db.execute("SELECT toString(alert_id) FROM {db}.alerts")}
    _publish(cfg, events[len(events) // 2:])
    with DetectThread(cfg) as d2:
        # Resumed from the checkpoint: it reads only the second half.
        wait_until(lambda: d2.stats.events == len(events) - len(events) // 2, 60, what="second half only")
        assert d2.drain_sinks(30)
    rows = db.execute("SELECT toString(alert_id) FROM {db}.alerts")
    after = {r[0] for r in rows}
    assert len(rows) == len(after), "an alert was emitted twice"
    # The second run kept the first run's alerts and added the second half's own (the leak is there).
    assert before < after
    new_kinds = {r[0] for r in db.execute("SELECT kind FROM {db}.alerts WHERE toString(alert_id) NOT IN %(b)s",
                                          {"b": tuple(before) or ("",)})}
    assert "bcc_header" in new_kinds
