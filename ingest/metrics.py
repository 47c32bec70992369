"""Prometheus metrics for the consumer and the detector (``--metrics-port``).

Each process builds its own registry (no module-level globals), so several consumers in one test
process, or a library user embedding the consumer, never collide. Names follow Prometheus
conventions: ``mailaudit_<what>_total`` counters, ``_seconds`` histograms, gauges for lag/backlog.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


# Seconds: fine below 1 s, where an alerting target sits, coarse above it.
_DELAY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_in = Counter("mailaudit_ingest_events_in_total", "Kafka records read", registry=r)
        self.inserted = Counter("mailaudit_ingest_events_inserted_total", "Event rows written to ClickHouse", registry=r)
        self.dlq = Counter("mailaudit_ingest_dlq_total", "Malformed records sent to the DLQ", ["reason"], registry=r)
        self.write_failures = Counter("mailaudit_ingest_write_failures_total", "Failed batch writes (retried)", registry=r)
        self.batch_seconds = Histogram("mailaudit_ingest_batch_write_seconds", "Batch write + commit time",
                                       buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.batch_size = Histogram("mailaudit_ingest_batch_records", "Records per batch",
                                    buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 50000), registry=r)
        self.lag = Gauge("mailaudit_consumer_lag", "Records behind the end of the partition",
                         ["topic", "partition"], registry=r)


class DetectMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter("mailaudit_detect_events_total", "Events examined by the detector", registry=r)
        self.malformed = Counter("mailaudit_detect_malformed_total", "Malformed records skipped", registry=r)
        self.alerts = Counter("mailaudit_detect_alerts_total", "Alerts raised", ["kind", "severity", "status"], registry=r)
        self.holds = Counter("mailaudit_detect_holds_total", "Hold commands issued by the containment policy", registry=r)
        self.sink_failures = Counter("mailaudit_detect_sink_failures_total", "Failed sink deliveries (retried)",
                                     ["sink"], registry=r)
        self.outbox_backlog = Gauge("mailaudit_detect_outbox_backlog_bytes", "Outbox bytes not yet delivered",
                                    ["sink"], registry=r)
        self.lag = Gauge("mailaudit_consumer_lag", "Records behind the end of the partition",
                         ["topic", "partition"], registry=r)
        self.checkpoint_seconds = Histogram(
            "mailaudit_detect_checkpoint_seconds",
            "A checkpoint's cost: its snapshot on the poll loop plus its thread's CPU (the next one waits "
            "at least 20 times this)", buckets=(0.01, 0.03, 0.1, 0.3, 1, 3, 10), registry=r)
        # An alert's latency in three parts, so an operator (and `bench latency`) can tell whose it is:
        # the transport's (publish -> read), the detector's (read -> alert queued), the sinks'.
        self.read_delay = Histogram(
            "mailaudit_detect_read_delay_seconds",
            "Publish (the Kafka record's timestamp) -> read by the detector: the oldest record of each "
            "fetched partition batch; the mailers' clocks and the broker's share of alert latency",
            buckets=_DELAY_BUCKETS, registry=r)
        self.raise_delay = Histogram(
            "mailaudit_detect_raise_seconds",
            "Read (the poll that returned the trigger record) -> alert queued for the sinks: the "
            "detector's own share of alert latency (event-time waits excluded)",
            buckets=_DELAY_BUCKETS, registry=r)
        self.delivery_delay = Histogram(
            "mailaudit_detect_delivery_seconds",
            "Alert raised (its detected_at) -> delivered by the sink", ["sink"],
            buckets=_DELAY_BUCKETS, registry=r)


def serve(registry: CollectorRegistry, port: int, addr: str = "127.0.0.1"):
    """Expose ``/metrics``; returns the server (``.shutdown()`` to stop). Port 0 picks a free one."""
    server, thread = start_http_server(port, addr=addr, registry=registry)
    return server


def update_lag(gauge: Gauge, consumer) -> None:
    """Lag per assigned partition = the high watermark the latest fetch response carried - our
    position (best effort, never raises). No request to the broker: asking for end offsets is a
    ListOffsets round trip on the poll loop, which cost 50-400 ms here under load (issue 16). A
    partition not fetched yet keeps its last value."""
    try:
        for tp in consumer.assignment():
            hw = consumer.highwater(tp)
            if hw is None:
                continue
            pos = consumer.position(tp, timeout_ms=0)
            if pos is None:
                continue
            gauge.labels(tp.topic, str(tp.partition)).set(max(0, hw - pos))
    except Exception:  # noqa: BLE001 - metrics must never hurt the pipeline
        pass
