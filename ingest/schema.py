"""Versioned, idempotent ClickHouse migrations; one schema, modern features switched on by version.

Table design follows how the data is queried: events are read by service and time range (dashboard,
detector rebuilds), so ``ORDER BY (service, sent_at, event_id)`` and a daily partition; redelivered
events (after a consumer crash) collapse on ``event_id`` in a ReplacingMergeTree, and readers either
use ``FINAL`` or count ``uniqExact(event_id)``. The partition key is computed from the payload (event
time), never from the time of ingest, so a redelivered copy lands in the same partition as the
original and the merge can collapse it.

On 18.16 there is no DateTime64, CODEC, TTL or LowCardinality type: time is stored as ``DateTime``
plus an epoch-millisecond column ``sent_ms`` (present on every server, so queries needing
milliseconds are the same everywhere), and retention is done by ``mailaudit retention run``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Callable

from mailaudit.config import RetentionConfig
from mailaudit.ingest.clickhouse import Capabilities, Database


@dataclass(frozen=True)
class Dialect:
    """Type and clause spellings for one server generation."""

    caps: Capabilities
    retention: RetentionConfig

    def lc(self, inner: str = "String") -> str:
        return f"LowCardinality({inner})" if self.caps.low_cardinality else inner

    @property
    def time(self) -> str:
        return "DateTime64(3, 'UTC')" if self.caps.datetime64 else "DateTime('UTC')"

    def codec(self, spec: str) -> str:
        return f" CODEC({spec})" if self.caps.codecs else ""

    def ttl(self, column: str, days: int) -> str:
        if not self.caps.ttl or days <= 0:
            return ""
        return f"\nTTL toDateTime({column}) + INTERVAL {int(days)} DAY"


def _events(d: Dialect) -> str:
    arr = "Array(String)"
    return f"""
CREATE TABLE IF NOT EXISTS {{db}}.events (
    event_id UUID,
    sent_at {d.time}{d.codec('Delta, ZSTD(1)')},
    sent_ms Int64{d.codec('Delta, ZSTD(1)')},
    ingested_at DateTime('UTC'){d.codec('Delta, ZSTD(1)')},
    service {d.lc()},
    campaign {d.lc()},
    template {d.lc()},
    message_id String{d.codec('ZSTD(3)')},
    key_id {d.lc()},
    from_hash String{d.codec('ZSTD(3)')},
    from_domain {d.lc()},
    from_masked String{d.codec('ZSTD(3)')},
    to_hashes {arr}{d.codec('ZSTD(3)')},
    to_domains {arr}{d.codec('ZSTD(3)')},
    to_masked {arr}{d.codec('ZSTD(3)')},
    cc_hashes {arr}{d.codec('ZSTD(3)')},
    cc_domains {arr}{d.codec('ZSTD(3)')},
    cc_masked {arr}{d.codec('ZSTD(3)')},
    bcc_hashes {arr}{d.codec('ZSTD(3)')},
    bcc_masked {arr}{d.codec('ZSTD(3)')},
    env_hashes {arr}{d.codec('ZSTD(3)')},
    env_domains {arr}{d.codec('ZSTD(3)')},
    env_masked {arr}{d.codec('ZSTD(3)')},
    to_count UInt32,
    cc_count UInt32,
    bcc_count UInt32,
    env_count UInt32,
    visible_count UInt32,
    visible_domains UInt32,
    strangers UInt32,
    run_together UInt8,
    has_bcc UInt8,
    is_group UInt8,
    semicolon UInt8,
    unparseable UInt16,
    subject_hash String{d.codec('ZSTD(3)')},
    subject String{d.codec('ZSTD(3)')},
    size_bytes UInt32,
    extra String{d.codec('ZSTD(3)')},
    kafka_partition UInt16,
    kafka_offset UInt64
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(sent_at)
ORDER BY (service, sent_at, event_id){d.ttl('sent_at', d.retention.events_days)}
"""


def _errors(d: Dialect) -> str:
    # Keyed by the Kafka coordinates: a redelivered malformed message replaces its own row.
    return f"""
CREATE TABLE IF NOT EXISTS {{db}}.errors (
    kafka_ts DateTime('UTC'),
    received_at DateTime('UTC'),
    topic {d.lc()},
    partition UInt16,
    offset UInt64,
    reason {d.lc()},
    detail String,
    size UInt32,
    excerpt String,
    service {d.lc()}
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(kafka_ts)
ORDER BY (topic, partition, offset){d.ttl('kafka_ts', d.retention.errors_days)}
"""


def _alerts(d: Dialect) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {{db}}.alerts (
    alert_id UUID,
    incident_id UUID,
    status {d.lc()},
    kind {d.lc()},
    severity {d.lc()},
    service {d.lc()},
    campaign String,
    template String,
    trigger_event_id UUID,
    first_seen {d.time},
    last_seen {d.time},
    copies UInt32,
    exposed UInt32,
    detected_at {d.time},
    summary String,
    evidence String,
    body String
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(last_seen)
ORDER BY (service, alert_id){d.ttl('last_seen', d.retention.alerts_days)}
"""


def _incidents(d: Dialect) -> str:
    # Latest state per incident wins (version = the alert's event time, then wall clock).
    return f"""
CREATE TABLE IF NOT EXISTS {{db}}.incidents (
    incident_id UUID,
    category {d.lc()},
    kind {d.lc()},
    severity {d.lc()},
    status {d.lc()},
    service {d.lc()},
    campaign String,
    template String,
    first_seen {d.time},
    last_seen {d.time},
    copies UInt32,
    exposed UInt32,
    summary String,
    last_alert_id UUID,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(first_seen)
ORDER BY incident_id{d.ttl('first_seen', d.retention.incidents_days)}
"""


def _exposures(d: Dialect) -> str:
    # One row per leaking copy: which addresses it exposed and to whom. The exposure report is a
    # single arrayJoin over this table; it never needs raw addresses.
    arr = "Array(String)"
    return f"""
CREATE TABLE IF NOT EXISTS {{db}}.exposures (
    incident_id UUID,
    event_id UUID,
    sent_at {d.time},
    sent_ms Int64,
    service {d.lc()},
    campaign String,
    key_id {d.lc()},
    exposed_hashes {arr}{d.codec('ZSTD(3)')},
    exposed_masked {arr}{d.codec('ZSTD(3)')},
    exposed_domains {arr}{d.codec('ZSTD(3)')},
    recipient_hashes {arr}{d.codec('ZSTD(3)')},
    recipient_count UInt32
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(sent_at)
ORDER BY (incident_id, event_id){d.ttl('sent_at', d.retention.incidents_days)}
"""


def _actions(d: Dialect) -> str:
    # Operator actions (acknowledge, hold, release) and data-protection actions (forget, rotate):
    # append-only, never holds an address.
    return f"""
CREATE TABLE IF NOT EXISTS {{db}}.audit_log (
    at DateTime('UTC'),
    actor String,
    action {d.lc()},
    target String,
    detail String
) ENGINE = MergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (action, at)
"""


def _migrations_table(d: Dialect) -> str:
    return """
CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
    version UInt32,
    name String,
    applied_at DateTime('UTC')
) ENGINE = ReplacingMergeTree
ORDER BY version
"""



# -- migration 3: per-minute traffic aggregate (dashboard baselines) ------------------------------
# A SummingMergeTree fed by a materialized view: one row per (service, minute, recipients bucket),
# counts only (no address, no hash). Measured need: the Services page scanned a week of `events` in
# 1.7-3.9 s at 10M events; from this table it reads in milliseconds (bench/dashboard.py). It counts
# rows as inserted, so an event redelivered after a consumer crash counts twice here (a handful in
# millions, below a baseline's noise); exact counts are read from `events`. The backfill copies what
# was ingested before the view existed, once (rows marked backfill = 1), so every statement is
# idempotent.

EVENTS_MINUTELY_TABLE = "events_minutely"
EVENTS_MINUTELY_VIEW = "events_minutely_mv"

# Recipients per message, exact up to 20, then rounded down to 10s, 100s, 1000s: the distribution
# keeps its shape and a campaign of 12,345-recipient copies does not make one row per value.
_MINUTELY_BUCKET = ("multiIf(env_count <= 20, env_count, env_count <= 100, intDiv(env_count, 10) * 10, "
           "env_count <= 1000, intDiv(env_count, 100) * 100, intDiv(env_count, 1000) * 1000)")

_MINUTELY_SELECT = f"""
SELECT service, toStartOfMinute(sent_at) AS minute, toUInt32({_MINUTELY_BUCKET}) AS rcpt_bucket, {{backfill}} AS backfill,
       count() AS messages, sum(env_count) AS recipients, sum(strangers > 0) AS leaking
FROM {{db}}.events
"""


def _minutely_table(d: Dialect) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {{db}}.{EVENTS_MINUTELY_TABLE} (
    service {d.lc()},
    minute DateTime('UTC'),
    rcpt_bucket UInt32,
    backfill UInt8,
    messages UInt64,
    recipients UInt64,
    leaking UInt64
) ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (service, minute, rcpt_bucket, backfill){d.ttl('minute', d.retention.events_days)}
"""


def _minutely_view(d: Dialect) -> str:
    return (f"CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.{EVENTS_MINUTELY_VIEW} TO {{db}}.{EVENTS_MINUTELY_TABLE} AS "
            f"{_MINUTELY_SELECT.replace('{backfill}', '0')}GROUP BY service, minute, rcpt_bucket, backfill")


def _minutely_backfill(d: Dialect) -> str:
    return f"""
INSERT INTO {{db}}.{EVENTS_MINUTELY_TABLE} (service, minute, rcpt_bucket, backfill, messages, recipients, leaking)
{_MINUTELY_SELECT.replace('{backfill}', '1')}
WHERE ingested_at < (SELECT max(metadata_modification_time) FROM system.tables
                     WHERE database = '{{db}}' AND name = '{EVENTS_MINUTELY_VIEW}')
  AND (SELECT count() FROM {{db}}.{EVENTS_MINUTELY_TABLE} WHERE backfill = 1) = 0
GROUP BY service, minute, rcpt_bucket, backfill
"""


def events_minutely_statements(d: Dialect) -> list[str]:
    """Migration 3, in order: table, view, backfill of what was there before the view."""
    return [_minutely_table(d), _minutely_view(d), _minutely_backfill(d)]



# -- migration 4: detector checkpoints (scale-out, issue 17) ----------------------------------------
# One row per (consumer group, topic, partition) and checkpoint: the partition's detection state in
# the versioned non-pickle form of detect/state.py, the read position it matches, and the records
# not yet delivered by every sink (handed to whichever replica takes the partition over). Latest
# version (= read position) wins; readers use FINAL.

def _detect_checkpoints(d: Dialect) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {{db}}.detect_checkpoints (
    group_id String,
    topic String,
    partition UInt32,
    version UInt64,
    position Int64,
    written_at DateTime('UTC'),
    writer String,
    state String,
    outbox String
) ENGINE = ReplacingMergeTree(version)
ORDER BY (group_id, topic, partition)
"""


# -- migration 5: reverse index address -> events (dashboard address search) -----------------------
# Address search must find an address wherever it appears (From, To, Cc, Bcc, envelope), so on
# `events` it reads every hash array of the time range: 2.2 s median over 7 days at 10M events on
# 18.16. `events_by_address` holds one row per (distinct address hash, event), ordered by hash then
# time: a search reads a few granules per day partition instead (bench/dashboard.py). It stores only
# what `events` already holds (keyed hashes, time, service, event id), follows its retention (day
# partitions, `mailaudit retention run`, TTL where the server has it) and its erasure
# (ingest/erasure.py). Redelivered events collapse on the sort key. One design for every server
# generation keeps one query (a modern server could use bloom-filter skip indexes on the arrays).
#
# The consumer writes it next to `events` (``ingest.writer.insert_events``), not a materialized view:
# 18.16 replicates every column of a view's input block for each element an array join produces, so
# a view would copy a 20,000-address To list 20,000 times (gigabytes for one mass-disclosure copy: an
# insert that fails forever), and 18.16 neither cascades views nor accepts a subquery in one. The
# backfill (a plain SELECT, which reads only the hash columns) indexes what is already stored; it is
# idempotent (repeats collapse), so ``backfill_address_index`` may be run again, e.g. after a rolling
# upgrade during which consumers of the previous version still wrote events without the index.

EVENTS_BY_ADDRESS_TABLE = "events_by_address"


def _by_address_table(d: Dialect) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {{db}}.{EVENTS_BY_ADDRESS_TABLE} (
    address_hash String{d.codec('ZSTD(1)')},
    sent_at {d.time}{d.codec('ZSTD(1)')},
    sent_ms Int64{d.codec('ZSTD(1)')},
    service {d.lc()},
    event_id UUID
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(sent_at)
ORDER BY (address_hash, sent_at, event_id){d.ttl('sent_at', d.retention.events_days)}
"""


BY_ADDRESS_BACKFILL = f"""
INSERT INTO {{db}}.{EVENTS_BY_ADDRESS_TABLE} (address_hash, sent_at, sent_ms, service, event_id)
SELECT arrayJoin(arrayDistinct(arrayFilter(h -> h != '', arrayConcat([from_hash], to_hashes, cc_hashes, bcc_hashes,
                                                                      env_hashes)))) AS address_hash,
       sent_at, sent_ms, service, event_id
FROM {{db}}.events
"""


def backfill_address_index(db: Database) -> None:
    """Index every stored event in ``events_by_address`` (idempotent: repeated rows collapse)."""
    db.execute(BY_ADDRESS_BACKFILL)


def events_by_address_statements(d: Dialect) -> list[str]:
    """Migration 5, in order: the index table, the backfill of what is stored."""
    return [_by_address_table(d), BY_ADDRESS_BACKFILL]


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: Callable[[Dialect], list[str]]


MIGRATIONS: list[Migration] = [
    Migration(1, "events and errors", lambda d: [_events(d), _errors(d)]),
    Migration(2, "alerts, incidents, exposures, audit log", lambda d: [_alerts(d), _incidents(d), _exposures(d), _actions(d)]),
    Migration(3, "events per minute (dashboard baselines)", events_minutely_statements),
    Migration(4, "detector checkpoints per partition (replicas)", lambda d: [_detect_checkpoints(d)]),
    Migration(5, "address -> events reverse index (address search)", events_by_address_statements),
]

TABLES = ("events", "errors", "alerts", "incidents", "exposures", "audit_log", "events_minutely", "detect_checkpoints",
          "events_by_address")


def ddl(caps: Capabilities, retention: RetentionConfig | None = None) -> list[str]:
    """Every statement of the current schema for a server with these capabilities (for review and tests)."""
    d = Dialect(caps, retention or RetentionConfig())
    out = [_migrations_table(d)]
    for m in MIGRATIONS:
        out.extend(m.statements(d))
    return out


def applied_versions(db: Database) -> set[int]:
    return {r[0] for r in db.execute("SELECT version FROM {db}.schema_migrations")}


def migrate(db: Database, retention: RetentionConfig | None = None) -> list[int]:
    """Apply what is missing, in order; safe to run any number of times, from several processes."""
    db.client.execute(f"CREATE DATABASE IF NOT EXISTS {db.name}")
    d = Dialect(db.capabilities, retention or RetentionConfig())
    db.execute(_migrations_table(d))
    done = applied_versions(db)
    applied = []
    for m in MIGRATIONS:
        if m.version in done:
            continue
        for stmt in m.statements(d):
            db.execute(stmt)
        db.insert(
            "schema_migrations",
            {"version": [m.version], "name": [m.name],
             "applied_at": [dt.datetime.now(dt.timezone.utc).replace(microsecond=0)]},
        )
        applied.append(m.version)
    return applied
