"""Retention removes exactly the expired data: whole partitions by DROP, the straddling month by
ALTER DELETE, events by whole UTC days; on 18.16 (the real server) and on modern ClickHouse (chdb)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import uuid

import pytest

from chdb_support import chdb_database
from helpers import make_event, write_config
from mailaudit.config import PrivacyConfig, RetentionConfig
from mailaudit.detect.sinks import alert_columns, exposure_columns, incident_columns
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.dlq import Rejected, error_columns
from mailaudit.ingest.parsed import parse_event
from mailaudit.ingest.privacy import AddressHasher
from mailaudit.ingest.retention import partition_end, run_retention
from mailaudit.ingest.rows import EventRows
from mailaudit.ingest.schema import migrate
from mailaudit.ingest.wire import format_time

UTC = dt.timezone.utc
NOW = dt.datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
POLICY = RetentionConfig(events_days=10, errors_days=30, alerts_days=60, incidents_days=45)


@pytest.fixture
def server_db(make_cfg):
    """(cfg, migrated Database on the 18.16 server); disconnected after the test (an idle connection
    makes the server's shutdown wait)."""
    cfg = make_cfg()
    db = Database(cfg.clickhouse)
    migrate(db)
    yield cfg, db
    db.disconnect()


def _ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


def _times(days_back: int, step_h: int) -> list[dt.datetime]:
    t, out = NOW - dt.timedelta(days=days_back), []
    while t <= NOW:
        out.append(t)
        t += dt.timedelta(hours=step_h)
    return out


def _alert(last: dt.datetime, first: dt.datetime) -> dict:
    return {"v": 1, "alert_id": str(uuid.uuid4()), "incident_id": str(uuid.uuid4()), "status": "open",
            "kind": "volume_spike", "severity": "warning", "service": "billing", "campaign": None, "template": None,
            "trigger_event_id": str(uuid.uuid4()), "first_seen": format_time(_ms(first)),
            "last_seen": format_time(_ms(last)), "copies": 1, "exposed": 0, "detected_at": format_time(_ms(last)),
            "summary": "s", "evidence": {}}


def populate(db: Database) -> dict[str, list[dt.datetime]]:
    """Rows every 7 hours (crossing midnights at varying hours) over 20 days (events) / 100 days."""
    ev_t, long_t = _times(20, 7), _times(100, 7)
    rows = EventRows(PrivacyConfig(hash_key="k"), AddressHasher(b"k"))
    for i, t in enumerate(ev_t):
        rows.add(parse_event(make_event(i, sent_at_ms=_ms(t))))
    db.insert("events", rows.columns())
    db.insert("errors", error_columns([Rejected("mail.headers", 0, i, _ms(t), b"billing", b"{", "invalid_json", "x")
                                       for i, t in enumerate(long_t)]))
    alerts = [_alert(t, t - dt.timedelta(hours=1)) for t in long_t]
    db.insert("alerts", alert_columns(alerts))
    db.insert("incidents", incident_columns(alerts))
    db.insert("exposures", exposure_columns([
        {"incident_id": str(uuid.uuid4()), "event_id": str(uuid.uuid4()), "sent_ms": _ms(t), "service": "billing",
         "campaign": "", "key_id": "k1", "exposed_hashes": ["a"], "exposed_masked": ["a***@x"],
         "exposed_domains": ["x"], "recipient_hashes": ["b"]} for t in long_t]))
    return {"events": ev_t, "long": long_t, "incidents_first": [t - dt.timedelta(hours=1) for t in long_t]}


def expected_after(times: dict) -> dict[str, int]:
    """What policy says must remain, computed independently of the code under test."""
    def kept(ts, days):
        return sum(1 for t in ts if t >= NOW - dt.timedelta(days=days))
    ev_cut = NOW - dt.timedelta(days=POLICY.events_days)
    day_start = ev_cut.replace(hour=0, minute=0, second=0)          # events: whole UTC days
    return {
        "events": sum(1 for t in times["events"] if t >= day_start),
        "errors": kept(times["long"], POLICY.errors_days),
        "alerts": kept(times["long"], POLICY.alerts_days),
        "incidents": kept(times["incidents_first"], POLICY.incidents_days),
        "exposures": kept(times["long"], POLICY.incidents_days),
    }


def _counts(db) -> dict[str, int]:
    return {t: db.execute(f"SELECT count() FROM {{db}}.{t}")[0][0]
            for t in ("events", "errors", "alerts", "incidents", "exposures")}


def _min_times(db) -> dict[str, dt.datetime]:
    q = {"events": "sent_at", "errors": "kafka_ts", "alerts": "last_seen", "incidents": "first_seen",
         "exposures": "sent_at"}
    return {t: db.execute(f"SELECT toDateTime(min({c})) FROM {{db}}.{t}")[0][0] for t, c in q.items()}


def _check(db, times):
    want = expected_after(times)
    total = {"events": len(times["events"]), **{t: len(times["long"]) for t in ("errors", "alerts", "incidents", "exposures")}}
    assert all(want[t] < total[t] for t in want), "the fixture must have something to expire in every table"
    plan = {r.table: r for r in run_retention(db, POLICY, now=NOW, dry_run=True, force=True)}
    assert _counts(db) == total                                        # dry run changes nothing
    res = {r.table: r for r in run_retention(db, POLICY, now=NOW, force=True)}
    assert _counts(db) == want
    for t in want:
        assert res[t].dropped_rows + res[t].deleted_rows == total[t] - want[t]
        assert (plan[t].dropped, plan[t].dropped_rows, plan[t].deleted_rows) == \
               (res[t].dropped, res[t].dropped_rows, res[t].deleted_rows)
    # Nothing older than the cut-off is left, nothing younger went (counts above), and the events
    # table lost whole days only, by dropping partitions (no mutation on the big table).
    mins = _min_times(db)
    for t, days in (("errors", 30), ("alerts", 60), ("incidents", 45), ("exposures", 45)):
        m = mins[t].replace(tzinfo=UTC) if mins[t].tzinfo is None else mins[t]
        assert m >= NOW - dt.timedelta(days=days)
    assert res["events"].deleted_rows == 0 and len(res["events"].dropped) == 10
    parts = {r[0] for r in db.execute("SELECT partition_id FROM system.parts WHERE database = %(d)s AND "
                                      "table = 'events' AND active", {"d": db.name})}
    assert parts.isdisjoint(res["events"].dropped) and "20260605" in parts
    # A second run finds nothing more to do.
    again = run_retention(db, POLICY, now=NOW, force=True)
    assert all(not r.dropped and not r.deleted_rows for r in again)
    assert _counts(db) == want


@pytest.mark.servers
def test_retention_on_18_16_removes_exactly_the_expired_data(server_db):
    _, db = server_db
    assert not db.capabilities.ttl
    _check(db, populate(db))


def test_retention_on_modern_server_same_result_and_defers_to_ttl():
    db = chdb_database(f"r_{uuid.uuid4().hex[:8]}")
    db.client.execute(f"CREATE DATABASE IF NOT EXISTS {db.name}")
    # Long TTLs in the DDL, so the server's own TTL (relative to the real clock) stays out of the way.
    migrate(db, RetentionConfig(events_days=3650, errors_days=3650, alerts_days=3650, incidents_days=3650))
    times = populate(db)
    skipped = run_retention(db, POLICY, now=NOW)
    assert skipped and all("TTL" in r.skipped for r in skipped)
    assert _counts(db)["events"] == len(times["events"])
    _check(db, times)


def test_partition_end():
    assert partition_end("20260605", "day") == dt.datetime(2026, 6, 6, tzinfo=UTC)
    assert partition_end("202612", "month") == dt.datetime(2027, 1, 1, tzinfo=UTC)
    assert partition_end("tuple()", "month") is None and partition_end("2026", "day") is None


@pytest.mark.servers
def test_days_zero_keeps_a_table_forever(server_db):
    _, db = server_db
    times = populate(db)
    res = {r.table: r for r in run_retention(db, RetentionConfig(events_days=0, errors_days=0, alerts_days=0,
                                                                 incidents_days=0), now=NOW)}
    assert all(r.skipped for r in res.values())
    assert _counts(db)["errors"] == len(times["long"])


@pytest.mark.servers
def test_retention_cli_drops_old_data_and_records_it(server_db, tmp_path):
    cfg, db = server_db
    now = dt.datetime.now(UTC)
    rows = EventRows(PrivacyConfig(hash_key="k"), AddressHasher(b"k"))
    for i, t in enumerate((dt.datetime(2020, 1, 1, tzinfo=UTC), now)):
        rows.add(parse_event(make_event(i, sent_at_ms=_ms(t))))
    db.insert("events", rows.columns())
    path = write_config(cfg, tmp_path / "c.toml")
    out = subprocess.run([sys.executable, "-m", "mailaudit", "retention", "run", "--json", "--actor", "cron"],
                         capture_output=True, text=True, env={"MAILAUDIT_CONFIG": str(path), "PATH": "/usr/bin:/bin"},
                         timeout=120)
    assert out.returncode == 0, out.stderr
    res = {r["table"]: r for r in json.loads(out.stdout)}
    assert res["events"]["dropped_partitions"] == ["20200101"] and res["events"]["dropped_rows"] == 1
    assert db.execute("SELECT count() FROM {db}.events")[0][0] == 1
    (actor, action, detail), = db.execute("SELECT actor, action, detail FROM {db}.audit_log")
    assert (actor, action) == ("cron", "retention") and json.loads(detail)["events"]["rows"] == 1
