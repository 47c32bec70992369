"""The ingest lag gauge reads the high watermark of the latest fetch: no broker round trip on the
poll loop (it cost 50-400 ms there), and still the true distance to the end of each partition."""

from __future__ import annotations

import pytest
from kafka import TopicPartition

from helpers import make_event, wait_until
from mailaudit.ingest.kafka_io import make_consumer
from mailaudit.ingest.metrics import IngestMetrics, update_lag
from test_ingest_e2e import _publish, _setup

pytestmark = pytest.mark.servers


def _lag(metrics: IngestMetrics, tp: TopicPartition) -> float:
    return metrics.lag.labels(tp.topic, str(tp.partition))._value.get()


def _no_request(*a, **kw):
    raise AssertionError("update_lag asked the broker")


def test_lag_gauge_is_highwater_minus_position_without_a_request(make_cfg):
    cfg = make_cfg()
    cfg.kafka.partitions = 1
    _setup(cfg)
    _publish(cfg, [make_event(i) for i in range(100)])
    c = make_consumer(cfg.kafka, None)
    tp = TopicPartition(cfg.kafka.topic_events, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    c.end_offsets = c.beginning_offsets = _no_request
    metrics = IngestMetrics()
    try:
        wait_until(lambda: sum(len(v) for v in c.poll(timeout_ms=500, max_records=10).values()) > 0, 30,
                   what="first records")
        pos = c.position(tp)
        assert 0 < pos < 100
        update_lag(metrics.lag, c)
        assert _lag(metrics, tp) == 100 - pos
        wait_until(lambda: c.poll(timeout_ms=200, max_records=1000) is not None and c.position(tp) == 100, 30,
                   what="the rest read")
        update_lag(metrics.lag, c)
        assert _lag(metrics, tp) == 0
    finally:
        c.close()
