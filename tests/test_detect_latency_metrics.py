"""The detector's split of alert latency (issue 16): publish → read, read → alert queued, raised →
delivered, as Prometheus histograms an operator can alert on and `bench latency` reports."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from helpers import make_event, wait_until
from mailaudit.bench.latency import histogram_quantiles
from mailaudit.detect.consumer import DetectConsumer
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.kafka_io import make_producer
from mailaudit.ingest.schema import migrate
from mailaudit.ingest.topics import create_topics
from mailaudit.ingest.wire import Event

BACKDATE_S = 3.0


def _leak(now_ms: int) -> Event:
    victims = [f"reader{j}@example.org" for j in range(25)]
    return make_event(service="newsletter", to=", ".join(victims), envelope=[victims[0]],
                      event_id=str(uuid.uuid4()), sent_at_ms=now_ms,
                      message_id=f"<{uuid.uuid4().hex}@mailer.example.com>", from_="News <news@shop.example>",
                      campaign=f"c-{uuid.uuid4().hex[:6]}")


def _sample(reg, name, **labels):
    return reg.get_sample_value(name, labels) or 0.0


@pytest.mark.servers
def test_detector_reports_read_raise_and_delivery_delays(make_cfg):
    cfg = make_cfg()
    create_topics(cfg.kafka)
    migrate(Database(cfg.clickhouse))
    d = DetectConsumer(cfg)
    reg = d.metrics.registry
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    try:
        p = make_producer(cfg.kafka)
        # Every record's Kafka timestamp lies BACKDATE_S in the past: as if the broker had held it that
        # long, so each fetched batch's read delay is at least that.
        for _ in range(3):
            now = int(time.time() * 1000)
            p.send(cfg.kafka.topic_events, key=b"newsletter", value=_leak(now).encode(),
                   timestamp_ms=now - int(BACKDATE_S * 1000))
        p.flush(30)
        p.close()
        wait_until(lambda: _sample(reg, "mailaudit_detect_delivery_seconds_count", sink="kafka") >= 3
                   and _sample(reg, "mailaudit_detect_delivery_seconds_count", sink="clickhouse") >= 3,
                   90, what="three alerts delivered by both sinks")
    finally:
        d.stop_event.set()
        t.join(30)
    assert not t.is_alive()
    reads = _sample(reg, "mailaudit_detect_read_delay_seconds_count")
    assert reads >= 1
    # every batch held a backdated record first: none read sooner than the backdating
    assert _sample(reg, "mailaudit_detect_read_delay_seconds_bucket", le="2.5") == 0
    assert _sample(reg, "mailaudit_detect_read_delay_seconds_sum") >= BACKDATE_S * reads
    # one raise observation per alert, and the detector's own share is not the backdating
    raised = _sample(reg, "mailaudit_detect_raise_seconds_count")
    assert raised >= 3
    assert _sample(reg, "mailaudit_detect_raise_seconds_bucket", le="2.5") == raised
    for sink in ("kafka", "clickhouse"):
        n = _sample(reg, "mailaudit_detect_delivery_seconds_count", sink=sink)
        assert _sample(reg, "mailaudit_detect_delivery_seconds_bucket", sink=sink, le="30.0") == n


def test_histogram_quantiles_reads_the_bucket_that_holds_each_quantile():
    reg = CollectorRegistry()
    h = Histogram("x_seconds", "test", ["sink"], buckets=(0.01, 0.1, 1, 10), registry=reg)
    for v in [0.005] * 90 + [0.5] * 9 + [5.0]:
        h.labels("kafka").observe(v)
    h.labels("other").observe(100.0)
    text = generate_latest(reg).decode()
    q = histogram_quantiles(text, "x_seconds", {"sink": "kafka"})
    assert q["count"] == 100 and q["p50_le_ms"] == 10.0 and q["p99_le_ms"] == 1000.0
    assert q["mean_ms"] == pytest.approx(1000 * (90 * 0.005 + 9 * 0.5 + 5.0) / 100, abs=0.1)
    # past the last finite bound: no bound to give
    assert histogram_quantiles(text, "x_seconds", {"sink": "other"})["p99_le_ms"] is None
    assert histogram_quantiles(text, "y_seconds") is None
