"""The schema on a ClickHouse cluster: derived from ``ingest.schema``, never written twice.

Every table ``T`` of ``ingest/schema.py`` becomes two: ``T_local``, a ``Replicated*MergeTree`` on every
node (one ZooKeeper path per shard, one replica name per node, from the ``{shard}``/``{replica}``
macros), and ``T`` itself, a ``Distributed`` table over ``T_local`` on every node. The application keeps
using the plain names, so consumers write through Distributed and the dashboard and CLI read through
it, with no code change. Every statement is ``ON CLUSTER``, so ``mailaudit migrate --cluster NAME`` run
on one node creates the schema on all of them.

Sharding keys put every row that a ReplacingMergeTree must collapse on one shard: events by a hash of
``event_id`` (a redelivered event lands where its first copy is and deduplicates there), alerts by
``alert_id``, incidents by ``incident_id`` (all versions of an incident), checkpoints by their key.
Materialized views run on each node from ``events_local`` into the local target table, so the
aggregates (``events_minutely``) are per shard and readers sum over shards (as they already do).

Works on 18.16 (ZooKeeper-backed replication, distributed DDL queue) and modern servers; the modern
spellings (TTL, CODEC, LowCardinality) come from the same ``Dialect``.
"""

from __future__ import annotations

import datetime as dt
import re

from mailaudit.config import RetentionConfig
from mailaudit.ingest.clickhouse import Database, ident
from mailaudit.ingest.schema import MIGRATIONS, Dialect, _migrations_table

LOCAL = "_local"

# Sharding key per table (anything not listed: rand()).
SHARDING = {
    "events": "cityHash64(toString(event_id))",
    "errors": "cityHash64(topic, partition, offset)",
    "alerts": "cityHash64(toString(alert_id))",
    "incidents": "cityHash64(toString(incident_id))",
    "exposures": "cityHash64(toString(incident_id), toString(event_id))",
    "detect_checkpoints": "cityHash64(group_id, topic, partition)",
    "events_minutely": "cityHash64(service, minute)",
    "events_by_address": "cityHash64(address_hash)",
    "schema_migrations": "version",
}

_CREATE_TABLE = re.compile(r"^\s*CREATE TABLE IF NOT EXISTS \{db\}\.(\w+)\s*\((.*)\)\s*ENGINE\s*=\s*(\w*MergeTree)"
                           r"(?:\(([^)]*)\))?(.*)$", re.S)
_CREATE_MV = re.compile(r"^\s*CREATE MATERIALIZED VIEW IF NOT EXISTS \{db\}\.(\w+) TO \{db\}\.(\w+) AS(.*)$", re.S)
_ALTER = re.compile(r"^\s*ALTER TABLE \{db\}\.(\w+)(.*)$", re.S)
_INSERT = re.compile(r"^\s*INSERT INTO ", re.S)


class ClusterSchemaError(ValueError):
    pass


def zk_path(table: str) -> str:
    return f"/clickhouse/tables/{{shard}}/{{db}}/{table}"


def cluster_statements(stmt: str, cluster: str, tables: set[str]) -> list[str]:
    """One single-node statement of ``ingest.schema`` as its cluster statements."""
    on = f"ON CLUSTER {ident(cluster)}"
    m = _CREATE_TABLE.match(stmt)
    if m:
        name, cols, engine, args, rest = m.groups()
        local = name + LOCAL
        params = [f"'{zk_path(local)}'", "'{replica}'"] + ([args.strip()] if args and args.strip() else [])
        return [
            f"CREATE TABLE IF NOT EXISTS {{db}}.{local} {on} ({cols}) ENGINE = Replicated{engine}({', '.join(params)})"
            f"{rest}",
            f"CREATE TABLE IF NOT EXISTS {{db}}.{name} {on} AS {{db}}.{local} "
            f"ENGINE = Distributed({ident(cluster)}, {{db}}, {local}, {SHARDING.get(name, 'rand()')})",
        ]
    m = _CREATE_MV.match(stmt)
    if m:
        view, target, select = m.groups()
        return [f"CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.{view} {on} TO {{db}}.{target}{LOCAL} AS"
                f"{_to_local(select, tables)}"]
    m = _ALTER.match(stmt)
    if m:
        name, rest = m.groups()
        return [f"ALTER TABLE {{db}}.{name}{LOCAL} {on}{rest}", f"ALTER TABLE {{db}}.{name} {on}{rest}"]
    if _INSERT.match(stmt):
        return [stmt]                      # backfills: once, through the Distributed tables
    raise ClusterSchemaError(f"no cluster form for statement: {stmt.strip()[:80]}")


def _to_local(select: str, tables: set[str]) -> str:
    return re.sub(r"\{db\}\.(\w+)\b", lambda m: "{db}." + m.group(1) + (LOCAL if m.group(1) in tables else ""), select)


def _tables(d: Dialect) -> set[str]:
    out = {"schema_migrations"}
    for m in MIGRATIONS:
        for s in m.statements(d):
            t = _CREATE_TABLE.match(s)
            if t:
                out.add(t.group(1))
    return out


def cluster_ddl(caps, cluster: str, retention: RetentionConfig | None = None) -> list[str]:
    """Every cluster statement of the current schema (review, tests)."""
    d = Dialect(caps, retention or RetentionConfig())
    tables = _tables(d)
    out = cluster_statements(_migrations_table(d), cluster, tables)
    for m in MIGRATIONS:
        for s in m.statements(d):
            out.extend(cluster_statements(s, cluster, tables))
    return out


def migrate_cluster(db: Database, cluster: str, retention: RetentionConfig | None = None) -> list[int]:
    """``ingest.schema.migrate`` for a cluster: run on any one node; idempotent and versioned."""
    on = f"ON CLUSTER {ident(cluster)}"
    db.client.execute(f"CREATE DATABASE IF NOT EXISTS {db.name} {on}")
    d = Dialect(db.capabilities, retention or RetentionConfig())
    tables = _tables(d)
    for s in cluster_statements(_migrations_table(d), cluster, tables):
        db.execute(s)
    done = {r[0] for r in db.execute("SELECT version FROM {db}.schema_migrations")}
    applied = []
    for m in MIGRATIONS:
        if m.version in done:
            continue
        for stmt in m.statements(d):
            for s in cluster_statements(stmt, cluster, tables):
                db.execute(s)
        db.insert("schema_migrations", {"version": [m.version], "name": [m.name],
                                        "applied_at": [dt.datetime.now(dt.timezone.utc).replace(microsecond=0)]})
        applied.append(m.version)
    return applied
