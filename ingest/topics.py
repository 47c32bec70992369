"""The Kafka topics mailaudit uses, with their settings (design.md §4)."""

from __future__ import annotations

from mailaudit.config import KafkaConfig
from mailaudit.ingest.kafka_io import ensure_topics
from mailaudit.ingest.publisher import MAX_REQUEST_BYTES


ALERTS_RETENTION_MS = 30 * 24 * 3600 * 1000


def topic_specs(k: KafkaConfig) -> tuple[dict[str, int], dict[str, dict[str, str]]]:
    partitions = {k.topic_events: k.partitions, k.topic_dlq: 1, k.topic_alerts: 1, k.topic_control: 1}
    # Events up to the publisher's limit (a To list of ~100k addresses): the topic must take what the
    # producer sends (issue 14, finding 9); the broker's message.max.bytes must be at least this too.
    big = {"max.message.bytes": str(MAX_REQUEST_BYTES)}
    configs = {
        k.topic_events: dict(big),
        # Raw bytes of malformed events may hold personal data: keep them briefly (documented).
        k.topic_dlq: {"retention.ms": str(k.dlq_retention_ms), **big},
        # Latest hold/release per key (the JSON array [service, campaign]) is the state; older ones can go.
        k.topic_control: {"cleanup.policy": "compact"},
        # Alerts carry masks and hashes; ClickHouse keeps the record (retention.alerts_days), the topic
        # only feeds subscribers: a month, not the broker's default of forever-ish (issue 14).
        k.topic_alerts: {"retention.ms": str(ALERTS_RETENTION_MS)},
    }
    return partitions, configs


def create_topics(k: KafkaConfig, timeout_ms: int = 10000) -> list[str]:
    partitions, configs = topic_specs(k)
    return ensure_topics(k, partitions, configs, timeout_ms=timeout_ms)
