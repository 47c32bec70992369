"""Publisher → broker → consumer → ClickHouse on the real servers: exactly the valid events, once."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.request

import pytest
from kafka import KafkaConsumer, TopicPartition

from helpers import ConsumerThread, cli, make_event, wait_until, write_config
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.kafka_io import make_consumer, make_producer
from mailaudit.ingest.metrics import serve
from mailaudit.ingest.privacy import AddressHasher
from mailaudit.ingest.schema import migrate
from mailaudit.ingest.topics import create_topics

pytestmark = pytest.mark.servers

MALFORMED = [
    (b"{not json", "invalid_json"),
    (b"\xff\xfe garbage", "invalid_utf8"),
    (b"[1, 2, 3]", "not_an_object"),
    (json.dumps({"v": 1, "event_id": "00000000-0000-4000-8000-000000000001"}).encode(), "missing_field"),
    (json.dumps({**make_event(900).to_wire(), "envelope_to": "victim@example.org"}).encode(), "wrong_type"),
    (json.dumps({**make_event(901).to_wire(), "sent_at": "2026-11-02T07:30:00"}).encode(), "bad_sent_at"),
    (json.dumps({**make_event(902).to_wire(), "v": 2}).encode(), "unsupported_version"),
    (json.dumps({**make_event(903).to_wire(), "event_id": "not-a-uuid"}).encode(), "bad_event_id"),
]


def _setup(cfg):
    create_topics(cfg.kafka)
    db = Database(cfg.clickhouse)
    migrate(db)
    _stop_merges(db)
    return db


def _stop_merges(db) -> None:
    """Background merges of the ReplacingMergeTree would remove duplicate rows and hide them; with
    merges stopped a duplicate write stays visible as a second raw row. (Works on 18.16 too; a server
    restart turns merges back on, so call it again after one.)"""
    db.execute("SYSTEM STOP MERGES {db}.events")


def _count(db) -> int:
    return db.execute("SELECT count() FROM {db}.events FINAL")[0][0]


def _raw(db) -> tuple[int, int]:
    """(raw rows, distinct event ids), without FINAL: every write the table received."""
    return tuple(db.execute("SELECT count(), uniqExact(event_id) FROM {db}.events")[0])


def _publish(cfg, events, raw=()):
    p = make_producer(cfg.kafka)
    for e in events:
        p.send(cfg.kafka.topic_events, key=e.service.encode(), value=e.encode())
    for value in raw:
        p.send(cfg.kafka.topic_events, key=b"billing", value=value)
    p.flush(30)
    p.close()


def _committed(cfg) -> int:
    """Sum of the ingest group's committed offsets over the topic's partitions."""
    c = make_consumer(cfg.kafka, cfg.kafka.ingest_group)
    try:
        parts = c.partitions_for_topic(cfg.kafka.topic_events) or set()
        return sum(c.committed(TopicPartition(cfg.kafka.topic_events, p)) or 0 for p in parts)
    finally:
        c.close(autocommit=False)


def max_uncommitted(cfg, workers: int) -> int:
    """Records that can be stored but not yet committed when a consumer with ingest workers dies: 3
    batches handed over per worker, each at most twice batch_size (a raw batch polls for a whole batch)."""
    return 3 * workers * 2 * cfg.ingest.batch_size


def _read_topic(cfg, topic, n, timeout_ms=5000):
    c = KafkaConsumer(**cfg.kafka.client_kwargs(), consumer_timeout_ms=timeout_ms, auto_offset_reset="earliest")
    c.assign([TopicPartition(topic, 0)])
    c.seek_to_beginning()
    out = []
    for r in c:
        out.append(r)
        if len(out) >= n:
            break
    c.close()
    return out


def test_valid_events_stored_once_malformed_to_dlq_and_errors(make_cfg):
    cfg = make_cfg()
    db = _setup(cfg)
    events = [make_event(i, service=f"svc{i % 5}") for i in range(300)]
    # A mass-disclosure copy too, to check what is stored of its addresses.
    leak = make_event(5000, to=", ".join(f"victim{j}@gmail.com" for j in range(40)), envelope=["victim0@gmail.com"],
                      subject="Your statement")
    _publish(cfg, events + [leak], [m for m, _ in MALFORMED])
    with ConsumerThread(cfg) as consumer:
        wait_until(lambda: _count(db) == 301, 60, what="301 events in ClickHouse")
        wait_until(lambda: db.execute("SELECT count() FROM {db}.errors FINAL")[0][0] == len(MALFORMED), 30,
                   what="errors rows")
        server = serve(consumer.metrics.registry, 0)
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5).read().decode()
        finally:
            server.shutdown()
    assert _raw(db) == (301, 301), "a valid event was written twice"
    assert "mailaudit_ingest_events_inserted_total 301.0" in text
    assert 'mailaudit_ingest_dlq_total{reason="invalid_json"} 1.0' in text
    ids = {str(r[0]) for r in db.execute("SELECT event_id FROM {db}.events FINAL")}
    assert ids == {e.event_id for e in events + [leak]}
    reasons = sorted(r[0] for r in db.execute("SELECT reason FROM {db}.errors FINAL"))
    assert reasons == sorted(r for _, r in MALFORMED)
    # The errors table never holds raw addresses, only a redacted excerpt.
    excerpts = " ".join(r[0] for r in db.execute("SELECT excerpt FROM {db}.errors"))
    assert "victim@example.org" not in excerpts and "user900@example.com" not in excerpts
    assert "u***@example.com" in excerpts and "v***@ex" in excerpts
    # The DLQ has the raw bytes, unchanged, with the reason in a header.
    dlq = _read_topic(cfg, cfg.kafka.topic_dlq, len(MALFORMED))
    assert sorted(r.value for r in dlq) == sorted(m for m, _ in MALFORMED)
    assert {dict(r.headers)["mailaudit.reason"].decode() for r in dlq} == {r for _, r in MALFORMED}
    # Privacy: the leak's addresses are stored as keyed hashes + masked + domain, never in clear.
    row = db.execute(
        "SELECT to_hashes, to_masked, to_domains, to_count, strangers, subject, subject_hash "
        "FROM {db}.events FINAL WHERE event_id = %(id)s", {"id": leak.event_id})[0]
    hasher = AddressHasher(cfg.require_hash_key(), cfg.privacy.hash_key_id)
    assert row[0][3] == hasher.hash("victim3@gmail.com")
    assert row[1][3] == "v***@gmail.com" and row[2][3] == "gmail.com"
    assert row[3] == 40 and row[4] == 39
    assert row[5] == "" and len(row[6]) == 32
    everything = repr(db.execute("SELECT * FROM {db}.events"))
    assert "victim3@gmail.com" not in everything and "victim3" not in everything


def test_consumer_sigkilled_mid_stream_loses_and_duplicates_nothing(make_cfg, tmp_path):
    cfg = make_cfg()
    cfg.ingest.batch_size = 300
    db = _setup(cfg)
    path = write_config(cfg, tmp_path / "c.toml")
    n = 6000
    events = [make_event(i, service=f"svc{i % 8}") for i in range(n)]
    _publish(cfg, events[:2000])
    # The rest is published while the consumer runs, so the kill lands mid-stream.
    rest = threading.Thread(target=lambda: [(_publish(cfg, events[j:j + 200]), time.sleep(0.05))
                                            for j in range(2000, n, 200)])
    p = cli(["consume"], path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _count(db) > 0, 60, what="first batch")
        rest.start()
        time.sleep(0.5)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    rest.join(60)
    partial = _count(db)
    assert 0 < partial < n, "the kill did not land mid-stream"
    p2 = cli(["consume"], path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _count(db) == n, 90, what=f"{n} events after restart")
    finally:
        p2.send_signal(signal.SIGTERM)
        assert p2.wait(30) == 0
    assert db.execute("SELECT uniqExact(event_id), count() FROM {db}.events FINAL")[0] == (n, n)
    # At-least-once between the kill and the commit: the batch written but not yet committed is read
    # and written again by the restarted consumer: at most one batch of raw duplicates, none after FINAL.
    raw, distinct = _raw(db)
    assert distinct == n
    assert 0 <= raw - n <= cfg.ingest.batch_size, f"{raw - n} raw duplicates, more than one batch"


@pytest.mark.parametrize("workers", [0, 2], ids=["in_process", "workers"])
def test_clickhouse_down_under_the_consumer_loses_nothing(make_cfg, local_stack, workers):
    """In-process and with ingest workers (ingest/pool.py): nothing lost, and nothing committed that
    is not written."""
    cfg = make_cfg(ingest__workers=workers, ingest__batch_size=50) if workers else make_cfg()
    db = _setup(cfg)
    first = [make_event(i) for i in range(100)]
    later = [make_event(i) for i in range(100, 400)]
    with ConsumerThread(cfg) as consumer:
        _publish(cfg, first)
        wait_until(lambda: _count(db) == 100, 60, what="first 100")
        wait_until(lambda: _committed(cfg) == 100, 30, what="first 100 committed")
        local_stack.stop_clickhouse()
        try:
            _publish(cfg, later)
            wait_until(lambda: consumer.stats.write_failures >= 2, 30, what="failed writes while down")
            # Nothing written while ClickHouse is down, so nothing more may be committed.
            assert _committed(cfg) == 100
        finally:
            local_stack.start_clickhouse()
            _stop_merges(db)            # a merge in the moment before this can only remove duplicates
        wait_until(lambda: _count(db) == 400, 90, what="all 400 after restart")
        wait_until(lambda: _committed(cfg) == 400, 30, what="all committed")
    raw, distinct = _raw(db)
    assert distinct == 400 and _count(db) == 400
    # A write cut by the kill may have landed before the consumer saw it fail: one batch at most
    # in-process; with workers, the batches handed over (``max_uncommitted``).
    assert raw - distinct <= (max_uncommitted(cfg, workers) if workers else cfg.ingest.batch_size)


def test_two_consumers_share_partitions_through_the_group(make_cfg):
    cfg = make_cfg()
    db = _setup(cfg)
    events = [make_event(i, service=f"svc{i % 8}") for i in range(2000)]
    with ConsumerThread(cfg) as a, ConsumerThread(cfg) as b:
        _publish(cfg, events)
        wait_until(lambda: _count(db) == 2000, 90, what="2000 events")
        wait_until(lambda: a.consumer.assignment() and b.consumer.assignment(), 30, what="both assigned")
        parts_a = {tp.partition for tp in a.consumer.assignment()}
        parts_b = {tp.partition for tp in b.consumer.assignment()}
    assert parts_a and parts_b and not parts_a & parts_b
    assert _raw(db) == (2000, 2000), "an event was written by both consumers or twice by one"
