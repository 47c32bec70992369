"""SendGrid Event Webhook -> wire v1, and the webhook receiver (shared secret, retries on 503),
end to end into Kafka through ``mailaudit adapt sendgrid --listen``."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from mailaudit.adapters.config import AdaptConfig
from mailaudit.adapters.http_receiver import Receiver
from mailaudit.adapters.sendgrid import convert
from mailaudit.ingest.kafka_io import make_consumer
from mailaudit.ingest.topics import create_topics
from mailaudit.ingest.wire import decode_event
from mailaudit.stack import free_port, port_open

from helpers import wait_until, write_config

SMTP_ID = "<14c5d75ce93.dfd.64b469@ismtpd-555>"


def processed(email: str, i: int, smtp_id: str = SMTP_ID, **extra) -> dict:
    return {"email": email, "timestamp": 1793604600 + i, "smtp-id": smtp_id, "event": "processed",
            "category": ["newsletter", "weekly"], "sg_event_id": f"rbtnWrG1DVDGGGFHFyun0A{i:02d}",
            "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0", **extra}


BATCH = [
    processed("reader1@example.com", 0, campaign="nl-2026-44"),
    processed("reader2@example.org", 1, campaign="nl-2026-44"),
    {"email": "reader1@example.com", "timestamp": 1793604605, "smtp-id": SMTP_ID, "event": "delivered",
     "response": "250 OK", "sg_event_id": "x1", "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001"},
    {"email": "reader3@example.net", "timestamp": 1793604610, "event": "open", "useragent": "Mozilla/5.0",
     "ip": "192.0.2.7", "sg_event_id": "x2", "sg_message_id": "other.filter0002"},
    processed("solo@example.com", 9, smtp_id="<other@ismtpd-1>", marketing_campaign_name="Spring Sale",
              sg_template_name="promo-v2"),
]


def test_processed_events_of_one_message_become_one_event():
    out = convert(BATCH, AdaptConfig())
    first, solo = out.events
    assert first.message_id == SMTP_ID and first.envelope_to == ["reader1@example.com", "reader2@example.org"]
    assert (first.service, first.campaign) == ("newsletter", "nl-2026-44")          # category, custom arg
    assert first.to == "" and first.from_ == "" and first.extra["headers_source"] == "none"
    assert first.to_wire()["sent_at"] == "2026-11-02T07:30:00.000Z"
    assert (solo.campaign, solo.template) == ("Spring Sale", "promo-v2")
    assert out.skipped == {"event_type_delivered": 1, "event_type_open": 1}
    # Deterministic ids: SendGrid retries the same batch; downstream dedups on event_id.
    assert [e.event_id for e in convert(BATCH, AdaptConfig()).events] == [first.event_id, solo.event_id]


def _post(port: int, body: bytes, auth: str | None = None, path: str = "/") -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST",
                                 headers={"Content-Type": "application/json", **({"Authorization": auth} if auth else {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def basic(secret: str) -> str:
    return "Basic " + base64.b64encode(f"sendgrid:{secret}".encode()).decode()


def test_receiver_checks_the_secret_and_asks_for_a_retry_when_it_cannot_queue():
    got, capacity = [], [10]

    def publish(e):
        if len(got) >= capacity[0]:
            return False
        got.append(e)
        return True

    r = Receiver(lambda d: convert(d, AdaptConfig()), publish, secret="s3cr3t")
    port = free_port()
    server = r.serve(f"127.0.0.1:{port}")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        body = json.dumps(BATCH).encode()
        assert _post(port, body)[0] == 401
        assert _post(port, body, basic("wrong"))[0] == 401
        assert _post(port, body, "Bearer s3cr3t")[0] == 200
        status, doc = _post(port, body, basic("s3cr3t"))
        assert status == 200 and doc["accepted"] == 2 and len(got) == 4
        assert _post(port, b"{not json", basic("s3cr3t"))[0] == 400
        capacity[0] = 5                                   # buffer full: SendGrid must retry the batch
        assert _post(port, body, basic("s3cr3t"))[0] == 503
        assert _post(port, body, basic("s3cr3t"), path="/other")[0] == 404
    finally:
        server.shutdown()
        server.server_close()
    assert r.stats["rejected"] == 3 and r.stats["unpublished"] == 1


@pytest.mark.servers
def test_webhook_receiver_publishes_to_kafka(make_cfg, tmp_path):
    cfg = make_cfg()
    create_topics(cfg.kafka)
    path = write_config(cfg, tmp_path / "mailaudit.toml")
    port = free_port()
    env_secret = "hook-secret-123"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILAUDIT_")}
    env.update(MAILAUDIT_ADAPT_SECRET=env_secret, MAILAUDIT_CONFIG=str(path))
    proc = subprocess.Popen([sys.executable, "-m", "mailaudit.cli", "adapt", "sendgrid", "--listen", f"127.0.0.1:{port}"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: port_open(port) or proc.poll() is not None, 30, what="receiver")
        status, doc = _post(port, json.dumps(BATCH).encode(), basic(env_secret))
        assert (status, doc["accepted"]) == (200, 2)
        consumer = make_consumer(cfg.kafka, "t-" + cfg.kafka.topic_events, [cfg.kafka.topic_events])
        seen = []
        try:
            wait_until(lambda: seen.extend(r for rs in consumer.poll(500).values() for r in rs) or len(seen) >= 2,
                       30, what="events in Kafka")
        finally:
            consumer.close()
        events = sorted((decode_event(r.value) for r in seen), key=lambda e: e.sent_at_ms)
        assert [e.envelope_to for e in events] == [["reader1@example.com", "reader2@example.org"], ["solo@example.com"]]
        assert {r.key for r in seen} == {b"newsletter"}
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0]
    assert proc.returncode == 0, out
    assert "'events': 2" in out
