"""`mailaudit detect` as a process (the way it runs in production), in each containment mode:
``notify`` (the default) recommends a hold in the alert and publishes none; ``off`` adds nothing;
SIGTERM stops it cleanly with the alerts delivered."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest
from kafka import KafkaConsumer, TopicPartition

from helpers import cli, wait_until, write_config
from mailaudit.config import Config
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.kafka_io import make_producer
from mailaudit.ingest.schema import migrate
from mailaudit.ingest.simulator import Simulator
from mailaudit.ingest.topics import create_topics

pytestmark = pytest.mark.servers


def _read(cfg, topic: str) -> list[bytes]:
    c = KafkaConsumer(**cfg.kafka.client_kwargs(), auto_offset_reset="earliest", consumer_timeout_ms=2000)
    parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or {0})]
    c.assign(parts)
    c.seek_to_beginning()
    out = [r.value for r in c]
    c.close()
    return out


def test_detect_process_in_notify_and_off_modes(make_cfg, tmp_path):
    assert Config().detect.containment == "notify"
    sim = Simulator(seed=3, rate=40.0)
    events = list(sim.events(120, incident="concatenated_to", incident_at_s=60))
    inj = sim.injected[0]
    runs = {}
    for mode in ("notify", "off"):                       # both processes run side by side
        cfg = make_cfg()
        cfg.detect.containment = mode
        create_topics(cfg.kafka)
        db = Database(cfg.clickhouse)
        migrate(db)
        p = make_producer(cfg.kafka)
        for e in events:
            p.send(cfg.kafka.topic_events, key=e.service.encode(), value=e.encode())
        p.flush(60)
        p.close()
        log = open(tmp_path / f"detect-{mode}.log", "wb")
        proc = cli(["detect"], write_config(cfg, tmp_path / f"{mode}.toml"), stdout=log, stderr=subprocess.STDOUT)
        runs[mode] = (cfg, db, proc, log)
    try:
        for mode, (cfg, db, proc, _) in runs.items():
            wait_until(lambda: db.execute("SELECT count() FROM {db}.alerts WHERE kind = 'concatenated_to'")[0][0] > 0
                       or proc.poll() is not None, 90, what=f"a concatenated_to alert ({mode})")
            assert proc.poll() is None, (tmp_path / f"detect-{mode}.log").read_text()
    finally:
        for _, _, proc, _ in runs.values():
            proc.send_signal(signal.SIGTERM)
        codes = {mode: proc.wait(30) for mode, (_, _, proc, _) in runs.items()}
        for *_, log in runs.values():
            log.close()
    assert codes == {"notify": 0, "off": 0}, codes
    for mode, (cfg, db, _, _) in runs.items():
        text = (tmp_path / f"detect-{mode}.log").read_text()
        assert "Traceback" not in text and "stopped: events=" in text
        alerts = [json.loads(v) for v in _read(cfg, cfg.kafka.topic_alerts)]
        (opened,) = [a for a in alerts if a["kind"] == "concatenated_to" and a["status"] == "open"]
        assert opened["severity"] == "critical" and opened["trigger_event_id"] == inj.event_ids[0]
        # Neither mode publishes a hold: mailers keep sending until an operator acts.
        assert _read(cfg, cfg.kafka.topic_control) == []
        stored = db.execute("SELECT evidence FROM {db}.alerts WHERE toString(alert_id) = %(id)s",
                            {"id": opened["alert_id"]})
        assert stored and json.loads(stored[0][0]) == opened["evidence"]
        if mode == "notify":
            assert opened["evidence"]["containment"] == {"action": "recommend_hold", "service": inj.service,
                                                         "campaign": inj.campaign}
        else:
            assert "containment" not in opened["evidence"]
        db.disconnect()
