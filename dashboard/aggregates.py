"""Per-minute traffic aggregate for the Services page: schema migration 3 (proposed for ingest/schema.py).

Why it exists (measured, bench/dashboard.py, 10M events over 7 days, ClickHouse 18.16, 2 cores): the
Services page's baselines scan a week of ``events`` — per-minute counts, the recipients-per-message
distribution and the hour-of-day profile took 3.9 s as four scans and 1.7 s as one combined scan,
before any rendering; a 30-day window or the 180-day retention would be far worse. A
SummingMergeTree fed by a materialized view keeps one row per (service, minute, recipients bucket),
about 15,000 rows a day for ten services, and the page reads it in milliseconds at any event count.

It holds counts only (no address, no hash), so ``forget`` never has to touch it. It counts rows as
they are inserted: an event redelivered after a consumer crash is counted twice here (the
``events`` table collapses it on merge). That is a handful of rows in millions, far below the noise
of a baseline; pages that show exact counts (Live, Incidents, Search) read ``events`` instead.

The DDL is written against ``ingest.schema.Dialect`` so it can move into ``MIGRATIONS`` verbatim::

    Migration(3, "events per minute (dashboard baselines)", aggregates.statements)

The backfill copies the events ingested before the view existed (``ingested_at`` earlier than the
view's creation time): at most about a second of traffic around the migration can be counted twice
or missed, which a baseline tolerates. Backfilled rows carry ``backfill = 1`` and the backfill runs
only while there are none, so every statement is idempotent: ``ensure(db)`` (used until the
migration is in ``ingest/schema.py``) and a later Migration 3 can both run on one database.
"""

from __future__ import annotations

from mailaudit.config import RetentionConfig
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.schema import Dialect

# The DDL is schema migration 3 (ingest/schema.py); the dashboard only checks it is there.
from mailaudit.ingest.schema import (  # noqa: E402
    EVENTS_MINUTELY_TABLE as TABLE, EVENTS_MINUTELY_VIEW as VIEW, events_minutely_statements as statements,
)


def exists(db: Database) -> bool:
    rows = db.execute("SELECT count() FROM system.tables WHERE database = %(d)s AND name = %(t)s",
                      {"d": db.name, "t": VIEW})
    return bool(rows and rows[0][0])


def ensure(db: Database, retention: RetentionConfig | None = None) -> bool:
    """Apply migration 3 if the view is missing; True when it was applied now."""
    if exists(db):
        return False
    for stmt in statements(Dialect(db.capabilities, retention or RetentionConfig())):
        db.execute(stmt)
    return True
