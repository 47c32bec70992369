"""The one schema on both server generations: 18.16 (the real server) and modern (chdb 26.x)."""

from __future__ import annotations

import pytest

from chdb_support import chdb_database
from mailaudit.config import RetentionConfig
from mailaudit.ingest.clickhouse import Capabilities, Database
from mailaudit.ingest.schema import MIGRATIONS, TABLES, ddl, migrate


def _create_table_sql(db, table):
    return db.execute(f"SHOW CREATE TABLE {{db}}.{table}")[0][0]


def test_capabilities_follow_the_version():
    old = Capabilities.from_string("18.16.1")
    new = Capabilities.from_string("24.8.4.13")
    assert not (old.ttl or old.codecs or old.datetime64 or old.lightweight_delete)
    assert new.ttl and new.codecs and new.datetime64 and new.low_cardinality and new.lightweight_delete
    assert "TTL" not in "".join(ddl(old)) and "CODEC" not in "".join(ddl(old))
    assert "LowCardinality" not in "".join(ddl(old))


@pytest.mark.servers
def test_migrate_on_the_18_16_server_is_idempotent(make_cfg):
    cfg = make_cfg()
    db = Database(cfg.clickhouse)
    assert db.capabilities.version[:2] == (18, 16)
    assert migrate(db) == [m.version for m in MIGRATIONS]
    assert migrate(db) == []
    tables = {r[0] for r in db.execute("SELECT name FROM system.tables WHERE database = %(d)s", {"d": db.name})}
    assert set(TABLES) <= tables
    events = _create_table_sql(db, "events")
    assert "ReplacingMergeTree" in events and "toYYYYMMDD(sent_at)" in events
    assert "TTL" not in events and "CODEC" not in events


def test_modern_ddl_on_chdb_has_ttl_lowcardinality_codecs():
    db = chdb_database()
    assert db.capabilities.modern
    applied = migrate(db, RetentionConfig(events_days=90))
    assert applied == [m.version for m in MIGRATIONS]
    assert migrate(db) == []
    events = _create_table_sql(db, "events")
    assert "DateTime64(3, \\'UTC\\')" in events or "DateTime64(3, 'UTC')" in events
    assert "LowCardinality(String)" in events
    assert "CODEC(Delta" in events and "ZSTD" in events
    assert "TTL" in events and "toIntervalDay(90)" in events
    for table in TABLES:
        assert db.execute(f"SELECT count() FROM {{db}}.{table}") == [(0,)]
