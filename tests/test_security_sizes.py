"""Issue 14, finding 9: the mass-disclosure case is the large event. The publisher, the topic (set by
`migrate`) and the consumer carry events up to MAX_EVENT_BYTES; a larger one is cut to fit at an
address boundary and flagged, so it is stored and the detector still sees the leak."""

from __future__ import annotations

import json

import pytest

from helpers import make_event
from mailaudit.ingest.publisher import MAX_EVENT_BYTES, TRUNCATED_FIELD, Publisher, fit_event
from mailaudit.ingest.topics import create_topics, topic_specs
from mailaudit.ingest.wire import decode_event


def _leak(i: int, n: int):
    addrs = [f"customer{j:07d}@example{j % 50}.com" for j in range(n)]
    return make_event(i, to=", ".join(addrs), envelope=[addrs[0]], subject="Your statement"), addrs


def test_small_events_are_untouched_and_large_ones_fit_at_address_boundaries():
    small, _ = _leak(1, 10)
    assert fit_event(small) is small
    big, addrs = _leak(2, 200_000)                       # ~7 MB of To:
    assert len(big.encode()) > MAX_EVENT_BYTES
    fitted = fit_event(big)
    assert len(fitted.encode()) <= MAX_EVENT_BYTES
    kept = fitted.to.split(", ")
    assert len(kept) > 130_000 and kept == addrs[:len(kept)]         # whole addresses, in order: cut just enough
    assert fitted.extra[TRUNCATED_FIELD] == {"to": len(big.to)}
    assert big.extra == {} and len(big.to) > len(fitted.to)          # the original is not modified
    decoded = decode_event(fitted.encode())                          # still a valid wire event
    assert decoded.to == fitted.to
    assert decode_event(fitted.encode(), extra_fields=[TRUNCATED_FIELD]).extra[TRUNCATED_FIELD] == {"to": len(big.to)}
    huge_env = make_event(3, to="a@b.example", envelope=[f"r{j}@x.example" for j in range(400_000)])
    f2 = fit_event(huge_env)
    assert len(f2.encode()) <= MAX_EVENT_BYTES and 0 < len(f2.envelope_to) < 400_000
    assert "envelope_to" in f2.extra[TRUNCATED_FIELD]


def test_migrate_sets_max_message_bytes_on_the_event_topics():
    from mailaudit.config import KafkaConfig
    k = KafkaConfig()
    _, configs = topic_specs(k)
    for topic in (k.topic_events, k.topic_dlq):
        assert int(configs[topic]["max.message.bytes"]) > MAX_EVENT_BYTES


@pytest.mark.servers
def test_a_2mb_and_a_7mb_disclosure_are_published_and_read_back_from_the_topic(make_cfg):
    """Through the real broker with the topic `migrate` creates: the 2 MB event whole, the 7 MB one cut
    to fit and flagged (the flag is an extra field: stored when listed in privacy.extra_fields)."""
    from kafka import TopicPartition

    from mailaudit.ingest.kafka_io import make_consumer

    cfg = make_cfg()
    create_topics(cfg.kafka)
    mid, mid_addrs = _leak(10, 60_000)                   # ~2 MB: over kafka-python's 1 MiB default
    big, _ = _leak(11, 200_000)                          # ~7 MB: over every limit -> cut to fit
    assert 1_048_576 < len(mid.encode()) < MAX_EVENT_BYTES < len(big.encode())
    pub = Publisher(cfg.kafka, "billing", max_block_ms=1000)
    try:
        assert pub.publish_event(mid) and pub.publish_event(big)
        assert pub.flush(60) and pub.failed == 0, pub.stats()
    finally:
        pub.close()
    c = make_consumer(cfg.kafka, group_id=None, auto_offset_reset="earliest", consumer_timeout_ms=20000,
                      enable_auto_commit=False)
    try:
        parts = [TopicPartition(cfg.kafka.topic_events, p) for p in c.partitions_for_topic(cfg.kafka.topic_events)]
        c.assign(parts)
        c.seek_to_beginning(*parts)
        got = {}
        for r in c:
            e = decode_event(r.value, extra_fields=[TRUNCATED_FIELD])
            got[e.event_id] = e
            if len(got) == 2:
                break
    finally:
        c.close()
    assert got[mid.event_id].to == mid.to and TRUNCATED_FIELD not in got[mid.event_id].extra
    cut = got[big.event_id]
    assert cut.extra[TRUNCATED_FIELD] == {"to": len(big.to)} and len(cut.to.split(", ")) > 50_000


@pytest.mark.servers
def test_large_disclosures_are_stored_whole_or_cut_never_stalling_ingest(make_cfg):
    """The consumer stores both (a 60,000-address copy and a cut 200,000-address one), and the
    events after them: a large event is never a poison message."""
    from helpers import ConsumerThread, wait_until
    from mailaudit.ingest.clickhouse import Database
    from mailaudit.ingest.schema import migrate

    cfg = make_cfg()
    db = Database(cfg.clickhouse)
    migrate(db)
    create_topics(cfg.kafka)
    mid, mid_addrs = _leak(20, 60_000)
    big, _ = _leak(21, 200_000)
    after = make_event(22)
    pub = Publisher(cfg.kafka, "billing", max_block_ms=1000)
    try:
        for e in (mid, big, after):
            assert pub.publish_event(e)
        assert pub.flush(60) and pub.failed == 0, pub.stats()
    finally:
        pub.close()
    with ConsumerThread(cfg):
        wait_until(lambda: db.execute("SELECT count() FROM {db}.events")[0][0] == 3, 120, what="3 events stored")
    rows = {str(k): n for k, n in db.execute("SELECT event_id, length(to_hashes) FROM {db}.events")}
    assert rows[mid.event_id] == len(mid_addrs) and rows[big.event_id] > 50_000 and rows[after.event_id] == 1
    assert db.execute("SELECT count() FROM {db}.errors") == [(0,)]
