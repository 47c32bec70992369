"""Dead-letter policy: a malformed message is never dropped silently and never stops the consumer.

Two records per malformed message, written before its offset is committed:
- the raw bytes, unchanged, on the DLQ topic (short retention; headers carry the reason and the
  original coordinates), so an operator can fix and replay them;
- a row in the ``errors`` table with the reason, coordinates, size and a *redacted* excerpt
  (the record's structure only: keys, types, numbers, masked addresses; no subject, display name or
  local part, see ``redact_structure``): the searchable record, which never holds the raw bytes.
  Redaction runs *before* the excerpt is cut, so a cut never leaves half an address unmasked.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from mailaudit.ingest.privacy import redact_detail, redact_structure

EXCERPT_CHARS = 300
# How much of a record is redacted for the excerpt: the structure of its start is what an operator needs,
# and redaction is linear, so a bounded window keeps a 1 MB poison record cheap.
EXCERPT_WINDOW = 16 * 1024
ERROR_COLUMNS = ("kafka_ts", "received_at", "topic", "partition", "offset", "reason", "detail", "size",
                 "excerpt", "service")


@dataclass(slots=True)
class Rejected:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    reason: str
    detail: str


def dlq_headers(r: Rejected, max_bytes: int) -> list[tuple[str, bytes]]:
    h = [
        ("mailaudit.reason", r.reason.encode()),
        ("mailaudit.detail", r.detail.encode("utf-8", "replace")[:1000]),
        ("mailaudit.source", f"{r.topic}/{r.partition}/{r.offset}".encode()),
    ]
    if len(r.value) > max_bytes:
        h.append(("mailaudit.truncated", str(len(r.value)).encode()))
    return h


def dlq_value(r: Rejected, max_bytes: int) -> bytes:
    """The raw bytes, unchanged, unless larger than the DLQ takes: then the first ``max_bytes``."""
    return r.value if len(r.value) <= max_bytes else r.value[:max_bytes]


def excerpt(value: bytes) -> str:
    text = value[:EXCERPT_WINDOW].decode("utf-8", "replace")
    return redact_structure(text)[:EXCERPT_CHARS]


def service_label(key: bytes | None) -> str:
    """The Kafka key is the producer's word for the service; a malformed record's key can be anything
    (an address), so it is kept only when it looks like a service name, otherwise as a keyed-hash-free
    marker with its length."""
    text = (key or b"").decode("utf-8", "replace")
    if len(text) <= 100 and all(c.isalnum() or c in "-_.:/" for c in text):
        return text
    return f"[unreadable key, {len(key or b'')} bytes]"


def error_columns(rejected: list[Rejected]) -> dict[str, list]:
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    cols: dict[str, list] = {c: [] for c in ERROR_COLUMNS}
    for r in rejected:
        cols["kafka_ts"].append(dt.datetime.fromtimestamp(max(r.timestamp_ms, 0) // 1000, dt.timezone.utc))
        cols["received_at"].append(now)
        cols["topic"].append(r.topic)
        cols["partition"].append(r.partition)
        cols["offset"].append(r.offset)
        cols["reason"].append(r.reason)
        cols["detail"].append(redact_detail(r.detail)[:500])
        cols["size"].append(len(r.value))
        cols["excerpt"].append(excerpt(r.value))
        cols["service"].append(service_label(r.key))
    return cols
