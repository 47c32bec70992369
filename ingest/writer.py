"""Write a batch where it belongs: event rows to ClickHouse, rejects to the DLQ topic + errors table.

Every step is idempotent under redelivery (events collapse on ``event_id``, error rows on their Kafka
coordinates), so the consumer can simply retry the whole write until it succeeds and commit after.
"""

from __future__ import annotations

import logging

from mailaudit.config import Config
from mailaudit.ingest.batch import Batch
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.dlq import dlq_headers, dlq_value, error_columns
from mailaudit.ingest.rows import EventRows
from mailaudit.ingest.schema import EVENTS_BY_ADDRESS_TABLE

log = logging.getLogger("mailaudit.ingest")


def has_address_index(db: Database) -> bool:
    """Whether the database has the address search index (schema migration 5). Cached on ``db`` once
    it exists; until then asked on each call, so a consumer started before ``migrate`` picks it up."""
    if getattr(db, "_has_address_index", None):
        return True
    found = bool(db.execute("SELECT count() FROM system.tables WHERE database = %(d)s AND name = %(t)s",
                            {"d": db.name, "t": EVENTS_BY_ADDRESS_TABLE})[0][0])
    if found:
        db._has_address_index = True
    return found


def insert_events(db: Database, rows: EventRows) -> int:
    """Event rows, then their address-index rows (when the index exists); returns the event count.
    Both collapse on repeat, so a retry after a failure between the two is safe; search finds an
    event once both are in. Everything that writes events should come through here."""
    n = db.insert("events", rows.columns())
    if n and has_address_index(db):
        db.insert(EVENTS_BY_ADDRESS_TABLE, rows.index_columns())
    return n


class BatchWriter:
    """``pool``: with ingest workers (``ingest.pool``), a batch's raw records are decoded and inserted
    by a worker process; its rejects still go to the DLQ and the errors table from here."""

    def __init__(self, cfg: Config, db: Database, producer, pool=None):
        self.cfg = cfg
        self.db = db
        self.producer = producer
        self.pool = pool
        self._dlq_done: set[tuple[str, int, int]] = set()  # survive a retry of a half-written batch

    def write(self, batch) -> None:
        """Raises on any failure; safe to call again with the same batch."""
        if self.pool is not None:
            batch.n_rows, batch.rejected = self.pool.run(batch.segments)
        else:
            insert_events(self.db, batch.rows)
        if batch.rejected:
            self._send_dlq(batch)
            self.db.insert("errors", error_columns(batch.rejected))
        self._dlq_done.clear()

    def _send_dlq(self, batch: Batch) -> None:
        futures = []
        for r in batch.rejected:
            coord = (r.topic, r.partition, r.offset)
            if coord in self._dlq_done:
                continue
            limit = self.cfg.ingest.dlq_max_bytes
            fut = self.producer.send(self.cfg.kafka.topic_dlq, key=r.key, value=dlq_value(r, limit),
                                     headers=dlq_headers(r, limit))
            futures.append((coord, fut))
        self.producer.flush(timeout=30)
        for coord, fut in futures:
            fut.get(timeout=30)          # raises if the broker did not take it
            self._dlq_done.add(coord)
