"""The pure half of the consumer: records in, a batch of rows + rejects + offsets out.

No Kafka or ClickHouse here, so the decode/parse/hash path can be tested and benchmarked alone.
A batch is ready by size or by age, whichever comes first (latency stays bounded at low traffic,
inserts stay large at high traffic).
"""

from __future__ import annotations

import time
from typing import Iterable

from mailaudit.config import Config
from mailaudit.ingest.dlq import Rejected
from mailaudit.ingest.parsed import parse_event
from mailaudit.ingest.privacy import AddressHasher
from mailaudit.ingest.rows import EventRows
from mailaudit.ingest.wire import MalformedEvent, decode_event


class Batch:
    def __init__(self, cfg: Config, hasher: AddressHasher, clock=time.monotonic, datetime64: bool = False):
        self.cfg = cfg
        self.rows = EventRows(cfg.privacy, hasher, datetime64)
        self.rejected: list[Rejected] = []
        self.offsets: dict[tuple[str, int], int] = {}   # (topic, partition) -> last offset seen
        self.first_offsets: dict[tuple[str, int], int] = {}  # where to seek back if abandoned
        self.count = 0
        self._clock = clock
        self.started = clock()
        self._extra = tuple(cfg.privacy.extra_fields)
        self._max_bytes = cfg.ingest.max_record_bytes

    def submit(self, topic: str, partition: int, offset: int, timestamp_ms: int, key: bytes | None,
               value: bytes | None) -> None:
        self.count += 1
        self.offsets[(topic, partition)] = offset
        self.first_offsets.setdefault((topic, partition), offset)
        self.add_record(topic, partition, offset, timestamp_ms, key, value)

    def add_record(self, topic: str, partition: int, offset: int, timestamp_ms: int, key: bytes | None,
                   value: bytes | None) -> None:
        """A record's row (or its rejection), without the offset bookkeeping: a worker process builds
        rows of records whose offsets the consumer's loop tracks (``ingest.pool``)."""
        if value is None:
            self._reject(topic, partition, offset, timestamp_ms, key, b"", "empty", "message has no value")
            return
        if len(value) > self._max_bytes:
            self._reject(topic, partition, offset, timestamp_ms, key, value, "too_large",
                         f"{len(value)} bytes > max_record_bytes {self._max_bytes}")
            return
        try:
            if not self._extra and self.rows.add_raw(value, partition, offset):
                return
            event = decode_event(value, self._extra)
            parsed = parse_event(event)
            self.rows.add(parsed, partition, offset)
        except MalformedEvent as e:
            self._reject(topic, partition, offset, timestamp_ms, key, value, e.reason, e.detail)
        except Exception as e:  # noqa: BLE001 - a bug on one input must not stop the log
            self._reject(topic, partition, offset, timestamp_ms, key, value, "unprocessable",
                         f"{type(e).__name__}: {e}"[:300])

    def submit_many(self, records: Iterable) -> None:
        for r in records:
            self.submit(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value)

    def _reject(self, topic, partition, offset, ts, key, value, reason, detail) -> None:
        self.rejected.append(Rejected(topic, partition, offset, ts or 0, key, value, reason, detail))

    def ready(self) -> bool:
        if self.count >= self.cfg.ingest.batch_size:
            return True
        return self.count > 0 and self._clock() - self.started >= self.cfg.ingest.batch_time_s

    def __len__(self) -> int:
        return self.count

    def row_count(self) -> int:
        return len(self.rows)

    def commit_offsets(self) -> dict[tuple[str, int], int]:
        """Offsets to commit after the write: the next offset to read per partition."""
        return {tp: off + 1 for tp, off in self.offsets.items()}
