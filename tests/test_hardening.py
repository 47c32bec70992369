"""Hostile input through the real pipeline (Kafka → consumer → ClickHouse 18.16) and the webhook's
integrity guarantees (HMAC-signed bodies, no redirects to other hosts)."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import threading
import time
import urllib.error
import uuid

import pytest

from helpers import ConsumerThread, make_event, wait_until
from mailaudit.config import WebhookConfig
from mailaudit.detect.sinks import WebhookSink, sign
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.kafka_io import make_consumer, make_producer
from mailaudit.ingest.privacy import AddressHasher
from mailaudit.ingest.schema import TABLES, migrate
from mailaudit.ingest.topics import create_topics
from mailaudit.ingest.wire import MalformedEvent, decode_event, format_time

MIB = 1024 * 1024
SQLISH = "'); DROP TABLE events;--"

# name -> event fields. Every string must come back from ClickHouse exactly as sent.
CASES: dict[str, dict] = {
    "sql": dict(service="billing" + SQLISH, campaign="x'; DROP DATABASE default; --",
                template="\\' OR 1=1 -- {db} %(x)s %s", message_id=f"<{SQLISH}@evil.example>",
                subject=f"Robert{SQLISH} {{db}} %(event_id)s \\x00 `rm -rf /`", to=f'"{SQLISH}" <{"o" * 3}@x.com>'),
    "control": dict(to="a\x00b@x.com, \x1b[31mred@x.com\x07, \r\n bcc: injected@x.com",
                    subject="x\x00\x1b[2J\u202e\u2028\r\nBcc: evil@x.com\ty", message_id="<m\r\nBcc: evil@x.com>"),
    "unicode": dict(to="пользователь@пример.рф, ü@bücher.de, \u200b@x.com", subject="💥 \u0301\u202b עברית \ufeff"),
    "big_to": dict(to=", ".join(f"user{i}@example{i % 97}.com" for i in range(40_000))[:MIB]),
    "big_subject": dict(subject="A" * MIB),
    "big_token": dict(to="a" * MIB + "@x.com"),
    "nested_comments": dict(to="(" * 200_000 + "c" + ")" * 200_000 + " a@x.com"),
    "unbalanced_comments": dict(to="(" * 500_000 + " a@x.com"),
    "nested_groups": dict(to="".join(f"g{i}: " for i in range(50_000)) + "a@x.com" + ";" * 50_000),
    "nested_angles": dict(to="<" * 300_000 + "a@x.com" + ">" * 300_000),
}
# Malformed messages: raw bytes -> expected DLQ reason.
RAW = {
    "invalid_utf8": (json.dumps(make_event(900).to_wire()).encode().replace(b"billing", b"bill\xff\xfeing"),
                     "invalid_utf8"),
    "deep_json": (json.dumps(make_event(901).to_wire())[:-1].encode() + b', "x": ' + b"[" * 100_000 + b"]" * 100_000
                  + b"}", "invalid_json"),
    # Just under ingest.dlq_max_bytes (900 000): kept byte for byte. (Exactly the limit would not tell a
    # copy from a cut one; the record over the limit is below, in OVER_DLQ_LIMIT.)
    "binary_under_dlq_limit": (b"\xff" * 899_999, "invalid_utf8"),
}
# Over ingest.dlq_max_bytes: the DLQ copy is its first dlq_max_bytes, header mailaudit.truncated = size.
OVER_DLQ_LIMIT = (b"\xfe" * 900_001, "invalid_utf8")


def _events() -> dict[str, object]:
    out = {}
    for i, (name, fields) in enumerate(CASES.items()):
        fields = dict(fields)
        env = [fields.pop("envelope")] if "envelope" in fields else ["rcpt@example.com"]
        out[name] = make_event(100 + i, envelope=env, **fields)
    return out


@pytest.mark.servers
def test_hostile_headers_are_stored_intact_and_malformed_ones_go_to_the_dlq(make_cfg):
    cfg = make_cfg(privacy__store_subject=True)
    db = Database(cfg.clickhouse)
    migrate(db)
    create_topics(cfg.kafka)
    events = _events()
    sentinel = make_event(999)
    p = make_producer(cfg.kafka, max_request_size=8 * MIB)
    for e in events.values():
        p.send(cfg.kafka.topic_events, key=b"billing", value=e.encode())
    for raw, _ in [*RAW.values(), OVER_DLQ_LIMIT]:
        p.send(cfg.kafka.topic_events, key=b"billing", value=raw)
    p.send(cfg.kafka.topic_events, key=b"billing", value=sentinel.encode())
    p.flush(60)
    p.close()
    t0 = time.monotonic()
    with ConsumerThread(cfg) as consumer:
        wait_until(lambda: db.execute("SELECT count() FROM {db}.events")[0][0] == len(events) + 1
                   and db.execute("SELECT count() FROM {db}.errors")[0][0] == len(RAW) + 1, 60, what="all rows")
        assert consumer.stats.write_failures == 0
    elapsed = time.monotonic() - t0
    consumer.db.disconnect()

    tables = {r[0] for r in db.execute("SELECT name FROM system.tables WHERE database = %(d)s", {"d": db.name})}
    assert set(TABLES) <= tables
    for name, e in events.items():
        (row,) = db.execute("SELECT service, campaign, template, message_id, subject, to_count, has_bcc, bcc_count "
                            "FROM {db}.events WHERE event_id = %(id)s", {"id": uuid.UUID(e.event_id)})
        assert row[:5] == (e.service, e.campaign or "", e.template or "", e.message_id, e.subject or ""), name
        assert row[6] == 0 and row[7] == 0, f"{name}: text in To/Subject must never become a Bcc"
    assert db.execute("SELECT to_count FROM {db}.events WHERE event_id = %(id)s",
                      {"id": uuid.UUID(events["big_to"].event_id)})[0][0] == CASES["big_to"]["to"].count("@")
    # No raw address of the big To list is stored, only masks: the privacy rule holds at size too.
    masked = db.execute("SELECT to_masked FROM {db}.events WHERE event_id = %(id)s",
                        {"id": uuid.UUID(events["big_to"].event_id)})[0][0]
    assert masked[:2] == ["u***@example0.com", "u***@example1.com"] and not any("user" in m for m in masked)
    reasons = sorted(r[0] for r in db.execute("SELECT reason FROM {db}.errors"))
    assert reasons == sorted(reason for _, reason in [*RAW.values(), OVER_DLQ_LIMIT])
    c = make_consumer(cfg.kafka, None)
    from kafka import TopicPartition
    c.assign([TopicPartition(cfg.kafka.topic_dlq, 0)])
    c.seek_to_beginning()
    dlq = []
    deadline = time.monotonic() + 10
    while len(dlq) < len(RAW) + 1 and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=200).values():
            dlq.extend(recs)
    c.close()
    limit = cfg.ingest.dlq_max_bytes
    kept = sorted(r.value for r in dlq if "mailaudit.truncated" not in dict(r.headers))
    assert kept == sorted(raw for raw, _ in RAW.values())                 # raw bytes kept byte for byte
    (cut,) = [r for r in dlq if "mailaudit.truncated" in dict(r.headers)]
    assert cut.value == OVER_DLQ_LIMIT[0][:limit] and len(cut.value) == limit < len(OVER_DLQ_LIMIT[0])
    assert dict(cut.headers)["mailaudit.truncated"] == str(len(OVER_DLQ_LIMIT[0])).encode()
    assert elapsed < 45, f"hostile input slowed ingest down: {elapsed:.1f}s"
    db.disconnect()


def test_a_lone_surrogate_escape_is_rejected_at_decode():
    """A JSON "\\ud800" escape decodes to a string no UTF-8 encoder (the driver's included) accepts: were it
    to reach the insert, the batch would fail on every retry and stall ingest. Decode must refuse it."""
    raw = json.dumps(make_event(1).to_wire())[:-1].encode() + b', "message_id": "<\\ud800@x>"}'
    with pytest.raises(MalformedEvent) as e:
        decode_event(raw)
    assert e.value.reason == "invalid_utf8"
    with pytest.raises(UnicodeEncodeError):            # what the insert would have hit
        "<\ud800@x>".encode("utf-8")


@pytest.mark.servers
def test_a_lone_surrogate_escape_goes_to_the_dlq_and_ingest_carries_on(make_cfg):
    """The same record through the real consumer: DLQ + errors row, and the valid events around it
    (same partition, before and after) are stored: no poison message."""
    cfg = make_cfg()
    db = Database(cfg.clickhouse)
    migrate(db)
    create_topics(cfg.kafka)
    raw = json.dumps(make_event(1).to_wire())[:-1].encode() + b', "message_id": "<\\ud800@x>"}'
    before, after = make_event(2), make_event(3)
    p = make_producer(cfg.kafka)
    for value in (before.encode(), raw, after.encode()):
        p.send(cfg.kafka.topic_events, key=b"billing", value=value)
    p.flush(30)
    p.close()
    with ConsumerThread(cfg) as consumer:
        wait_until(lambda: db.execute("SELECT count() FROM {db}.events")[0][0] == 2
                   and db.execute("SELECT count() FROM {db}.errors")[0][0] == 1, 60, what="2 events + 1 error")
        assert consumer.stats.write_failures == 0
    consumer.db.disconnect()
    ids = {str(r[0]) for r in db.execute("SELECT event_id FROM {db}.events")}
    assert ids == {before.event_id, after.event_id}
    assert db.execute("SELECT reason FROM {db}.errors") == [("invalid_utf8",)]
    db.disconnect()


@pytest.mark.servers
def test_a_malformed_record_over_1_mib_can_be_dead_lettered(make_cfg):
    """Records up to ingest.max_record_bytes (4 MiB) are accepted from the topic; a malformed one over
    kafka-python's default 1 MiB request limit must still reach the DLQ, or its batch is retried forever."""
    from mailaudit.ingest.batch import Batch
    from mailaudit.ingest.consumer import IngestConsumer

    cfg = make_cfg()
    db = Database(cfg.clickhouse)
    migrate(db)
    create_topics(cfg.kafka)
    consumer = IngestConsumer(cfg, db=db)               # its own DLQ producer and writer, as in production
    batch = Batch(cfg, AddressHasher(b"k"))
    batch.submit(cfg.kafka.topic_events, 0, 0, int(time.time() * 1000), b"billing", b"\xff" * (3 * MIB // 2))
    assert [r.reason for r in batch.rejected] == ["invalid_utf8"]
    try:
        consumer.writer.write(batch)                    # must not raise, or this batch is retried forever
    finally:
        consumer.close()
        db.disconnect()


# --- webhook -------------------------------------------------------------------------------------------

class _Recorder(http.server.BaseHTTPRequestHandler):
    """Records requests; answers per path: /redirect-away, /redirect-same, otherwise 200."""

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.seen.append((self.path, dict(self.headers), body))
        target = self.server.routes.get(self.path)
        if target:
            code, location = target
            self.send_response(code)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


@pytest.fixture
def http_servers():
    made = []

    def start(routes=None):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
        srv.seen, srv.routes = [], routes or {}
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        made.append(srv)
        return srv

    yield start
    for s in made:
        s.shutdown()
        s.server_close()


def _alert() -> dict:
    ms = 1_790_000_000_000
    return {"v": 1, "alert_id": str(uuid.uuid4()), "incident_id": str(uuid.uuid4()), "status": "open",
            "kind": "concatenated_to", "severity": "critical", "service": "billing", "campaign": "c1",
            "template": None, "trigger_event_id": str(uuid.uuid4()), "first_seen": format_time(ms),
            "last_seen": format_time(ms), "copies": 1, "exposed": 40, "detected_at": format_time(ms),
            "summary": f"billing: {SQLISH} <script>alert(1)</script>", "evidence": {"sample": ["j***@gmail.com"]}}


def test_webhook_body_is_signed_and_verifiable(http_servers):
    srv = http_servers()
    secret = "whsec-" + uuid.uuid4().hex
    alert = _alert()
    WebhookSink(WebhookConfig(url=f"http://127.0.0.1:{srv.server_port}/hook", secret=secret)).deliver(
        [{"type": "alert", "alert": alert}])
    (path, headers, body), = srv.seen
    ts = headers["X-Mailaudit-Timestamp"]
    assert abs(int(ts) - time.time()) < 60
    # What a receiver does, written independently of the sink's own sign():
    expected = "sha256=" + hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["X-Mailaudit-Signature"], expected)
    assert json.loads(body) == alert
    assert headers["X-Mailaudit-Signature"] != sign(secret, ts, body.replace(b"critical", b"info"))
    assert headers["X-Mailaudit-Signature"] != sign(secret, str(int(ts) + 1), body)        # replayed later
    assert headers["X-Mailaudit-Signature"] != sign("other-secret", ts, body)


def test_webhook_refuses_redirects_to_another_host_or_port(http_servers):
    thief = http_servers()
    for code in (301, 302, 303, 307, 308):
        hook = http_servers({"/hook": (code, f"http://127.0.0.1:{thief.server_port}/steal")})
        sink = WebhookSink(WebhookConfig(url=f"http://127.0.0.1:{hook.server_port}/hook", secret="s", timeout_s=2))
        with pytest.raises(urllib.error.HTTPError, match="refused redirect to another host") as e:
            sink.deliver([{"type": "alert", "alert": _alert()}])
        assert e.value.code == code
        assert [p for p, _, _ in hook.seen] == ["/hook"]
    assert thief.seen == [], "the signed alert body reached another host"


def test_webhook_follows_a_same_host_307_with_body_and_signature(http_servers):
    srv = http_servers()
    srv.routes["/old"] = (307, f"http://127.0.0.1:{srv.server_port}/new")
    alert = _alert()
    WebhookSink(WebhookConfig(url=f"http://127.0.0.1:{srv.server_port}/old", secret="s3")).deliver(
        [{"type": "alert", "alert": alert}])
    assert [p for p, _, _ in srv.seen] == ["/old", "/new"]
    (_, h1, b1), (_, h2, b2) = srv.seen
    assert b1 == b2 and json.loads(b2) == alert
    assert h2["X-Mailaudit-Signature"] == h1["X-Mailaudit-Signature"] == sign("s3", h1["X-Mailaudit-Timestamp"], b1)
