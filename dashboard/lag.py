"""Consumer lag of the ingest and detect groups, for the Live page: best effort, never slow.

The dashboard reads ClickHouse and must stay useful when Kafka is down or unreachable from where it
runs, so lag is asked for only after a plain TCP connect to a bootstrap server succeeds within the
timeout, the Kafka calls themselves carry the same short timeouts, and any failure yields ``None``
("unknown") instead of an error on the page.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from mailaudit.config import KafkaConfig


@dataclass(frozen=True)
class Lag:
    group: str
    topic: str
    records: int          # end offset minus committed offset, summed over partitions
    partitions: int


def _reachable(bootstrap: str, timeout_s: float) -> bool:
    for server in (s.strip() for s in bootstrap.split(",")):
        if not server:
            continue
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s):
                return True
        except (OSError, ValueError):
            continue
    return False


def consumer_lag(kcfg: KafkaConfig, groups: dict[str, str], timeout_s: float = 1.0) -> list[Lag] | None:
    """``groups`` maps group id -> topic. None when Kafka cannot be asked quickly."""
    if not _reachable(kcfg.bootstrap, timeout_s):
        return None
    from kafka import TopicPartition

    from mailaudit.ingest.kafka_io import make_consumer

    ms = int(timeout_s * 1000)
    clients = []
    try:
        out = []
        for group, topic in groups.items():
            # A consumer carrying the group id but never subscribing: it reads the group's committed
            # offsets (OffsetFetch) without joining the group, so the real members are not disturbed.
            consumer = make_consumer(kcfg, group, request_timeout_ms=max(ms, 1000), bootstrap_timeout_ms=ms)
            clients.append(consumer)
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                continue
            tps = [TopicPartition(topic, p) for p in sorted(parts)]
            ends = consumer.end_offsets(tps)
            lag = 0
            for tp in tps:
                c = consumer.committed(tp, timeout_ms=ms)
                lag += max(0, ends.get(tp, 0) - (c if c is not None and c >= 0 else 0))
            out.append(Lag(group, topic, lag, len(tps)))
        return out
    except Exception:  # noqa: BLE001 - lag is informative; the page must render without it
        return None
    finally:
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass
