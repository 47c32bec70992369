"""Every query of dashboard/queries.py on both server generations, against the exactly known seed.

The same assertions run on the real 18.16 server and on chdb (modern ClickHouse, DateTime64,
LowCardinality, TTL): the SQL is one text for both, so a function that is right on one and wrong on
the other fails here. ``test_every_query_function_is_exercised`` keeps the list honest when a
query is added.
"""

from __future__ import annotations

import inspect
import uuid

import pytest

from chdb_support import chdb_database
from dashboard_seed import LEAK_CAMPAIGN, LEAK_LIST, billing_event, insert_duplicate, seed
from mailaudit.config import Config
from mailaudit.dashboard import aggregates, lookup, queries, stats
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.privacy import mask_address
from mailaudit.ingest.schema import migrate

def call(name, *args, **kwargs):
    """Every query function is called through here by name (see the last test)."""
    return getattr(queries, name)(*args, **kwargs)


@pytest.fixture(params=[pytest.param("server", marks=pytest.mark.servers), "chdb"])
def backend(request):
    if request.param == "server":
        cfg = request.getfixturevalue("make_cfg")()
        db = Database(cfg.clickhouse)
    else:
        cfg = Config()
        cfg.privacy.hash_key = "chdb-test-key-0123456789abcdefgh"
        db = chdb_database(f"dash_{uuid.uuid4().hex[:8]}")
    migrate(db)
    assert aggregates.exists(db)               # schema migration 3
    assert aggregates.ensure(db) is False      # so the dashboard's own check is a no-op
    s = seed(db, cfg)
    yield cfg, db, s
    db.disconnect()


def test_traffic_counts_each_event_once(backend):
    cfg, db, s = backend
    now = s.now_ms // 1000
    insert_duplicate(db, cfg, billing_event(s, 3))          # a redelivery, not merged yet
    df = call("traffic", db, now - 3600, now + 60, 60)
    totals = stats.traffic_totals(df).set_index("service")
    assert totals["messages"].to_dict() == s.messages_last_hour
    assert totals["recipients"].to_dict() == s.recipients_last_hour
    assert totals.loc["newsletter", "leaking"] == 3
    day = stats.traffic_totals(call("traffic", db, now - 86400, now + 60, 900)).set_index("service")
    assert day["messages"].to_dict() == s.messages_last_day
    assert set(df.columns) >= {"time", "service", "messages_per_s", "recipients_per_s"}
    assert str(df["time"].dt.tz) == "UTC"
    # one receipt every 25 s: a minute bucket holds at most 3, and the rate is per second of bucket
    billing = df[df["service"] == "billing"]
    assert billing["messages"].max() == 3
    assert (billing["messages_per_s"] * 60 == billing["messages"]).all()


def test_incident_list_filters_and_latest_state(backend):
    cfg, db, s = backend
    now = s.now_ms // 1000
    df = call("incidents", db)
    assert list(df["incident_id"]) == [s.incident_id, s.resolved_incident_id]  # active and critical first
    first = df.iloc[0]
    assert (first["status"], first["severity"], first["copies"], first["exposed"]) == ("update", "critical", 3, 12)
    assert list(call("open_incidents", db)["incident_id"]) == [s.incident_id]
    assert list(call("incidents", db, statuses=("resolved",))["incident_id"]) == [s.resolved_incident_id]
    assert list(call("incidents", db, services=("receipts",), categories=("spike",))["incident_id"]) == \
        [s.resolved_incident_id]
    assert call("incidents", db, severities=("info",)).empty
    assert list(call("incidents", db, since_s=now - 86400)["incident_id"]) == [s.incident_id]
    inc = call("incident", db, s.incident_id)
    assert inc["service"] == "newsletter" and inc["campaign"] == LEAK_CAMPAIGN and inc["category"] == "disclosure"
    assert call("incident", db, str(uuid.uuid4())) is None
    assert "newsletter" in call("known_services", db, now - 86400)
    assert "receipts" in call("known_services", db, now - 86400)          # from its incident only


def test_incident_detail_queries(backend):
    cfg, db, s = backend
    inc = call("incident", db, s.incident_id)
    alerts = call("incident_alerts", db, s.incident_id, "newsletter")
    assert list(alerts["status"]) == ["update", "open"]
    assert alerts.iloc[0]["evidence"]["strangers"] == 11
    assert call("exposure_summary", db, s.incident_id) == {"copies": 3, "recipients": 3}
    assert call("exposure_counts", db, [s.incident_id, s.resolved_incident_id]) == \
        {s.incident_id: {"copies": 3, "exposed": 12}}
    table = call("exposure_table", db, s.incident_id)
    assert set(table["exposed"]) == s.exposed_masked and len(table) == 12
    assert dict(zip(table["exposed"], table["seen_by"])) == s.seen_by
    assert set(table["copies"]) == {2, 3}           # the three recipients are each shown in the other two copies
    assert list(table["seen_by"]) == sorted(table["seen_by"], reverse=True)
    assert len(call("exposure_table", db, s.incident_id, limit=5)) == 5
    first_s, last_s = int(inc["first_seen"].timestamp()), int(inc["last_seen"].timestamp())
    heads = call("incident_headers", db, s.incident_id, "newsletter", first_s - 60, last_s + 60)
    assert sorted(heads["event_id"]) == sorted(s.leak_event_ids)
    assert set(heads["to_count"]) == {12} and set(heads["strangers"]) == {11} and set(heads["recipients"]) == {1}
    assert mask_address(LEAK_LIST[0]) in heads.iloc[0]["to"] and "(+6)" in heads.iloc[0]["to"]
    for shown in heads.iloc[0]["to"].split(" … ")[0].split(", "):
        assert "***@" in shown and shown not in LEAK_LIST            # masked, never the address
    traffic = call("scope_traffic", db, "newsletter", LEAK_CAMPAIGN, first_s - 1800, last_s + 1800, 60)
    assert traffic["messages"].sum() == 43 and traffic["leaking"].sum() == 3


def test_exposure_csv_matches_the_cli_report(backend):
    """Same rows as ``mailaudit exposure`` (each seeded copy has one recipient, so the CLI's deliveries
    and the dashboard's distinct recipients agree)."""
    import csv
    import io

    from mailaudit.detect.report import exposure_report

    cfg, db, s = backend
    rows = list(csv.DictReader(io.StringIO(call("exposure_csv", db, s.incident_id).decode())))
    assert list(rows[0]) == queries.EXPOSURE_CSV_COLUMNS
    cli = {r["address_hash"]: r for r in exposure_report(db, s.incident_id)}
    assert {r["address_hash"] for r in rows} == set(cli)
    for r in rows:
        c = cli[r["address_hash"]]
        assert (r["address_masked"], r["domain"], int(r["copies"]), int(r["seen_by"]), r["first_seen"],
                r["last_seen"]) == (c["address_masked"], c["domain"], c["copies"], c["seen_by"], c["first_seen"],
                                    c["last_seen"])


def test_audit_log_actions(backend):
    cfg, db, s = backend
    target = call("hold_target", "newsletter", LEAK_CAMPAIGN)
    assert target == "newsletter/spring-sale" and call("hold_target", "billing", None) == "billing/*"
    call("record_action", db, "dashboard:operator", "acknowledge", s.incident_id, {"note": "looking"})
    call("record_action", db, "dashboard:operator", "hold", target, {"reason": "leak"})
    log = call("actions", db, [s.incident_id, target])
    assert sorted(log["action"]) == ["acknowledge", "hold"]
    assert log[log["action"] == "hold"].iloc[0]["detail"] == {"reason": "leak"}
    acks = call("acknowledged", db, [s.incident_id, s.resolved_incident_id])
    assert list(acks) == [s.incident_id] and acks[s.incident_id]["actor"] == "dashboard:operator"
    assert call("actions", db, []).empty


def test_errors_summary(backend):
    cfg, db, s = backend
    e = call("errors_summary", db, s.now_ms // 1000 - 86400)
    assert (e["total"], e["recent"]) == (4, 4)
    assert dict(zip(e["by_reason"]["reason"], e["by_reason"]["errors"])) == \
        {"missing_field": 2, "invalid_json": 1, "wrong_type": 1}
    assert call("errors_summary", db, s.now_ms // 1000 + 60)["recent"] == 0


def test_search_by_address_hash_domain_service_message_id(backend):
    cfg, db, s = backend
    now = s.now_ms // 1000
    week = (now - 7 * 86400, now + 60)
    leaked = queries.SearchFilters(*week, address_hashes=lookup.address_hashes(cfg.privacy, s.leaked_address))
    ids = call("search_ids", db, leaked)
    assert sorted(ids["event_id"].astype(str)) == sorted(s.leak_event_ids)
    rows = call("search_rows", db, ids, leaked.address_hashes)
    assert list(rows["event_id"]) == list(ids["event_id"].astype(str))          # page order kept
    assert set(rows["match"]) == {"To"}                                          # shown, never a recipient
    assert list(rows["sent_at"]) == sorted(rows["sent_at"], reverse=True)
    customer = queries.SearchFilters(*week, address_hashes=lookup.address_hashes(cfg.privacy, "Customer7@Example.com"))
    page, total, more = call("search_page", db, customer)
    assert (total, more) == (1, False) and page.iloc[0]["match"] == "recipient, To"
    assert page.iloc[0]["service"] == "billing"
    page, total, more = call("search_page", db, queries.SearchFilters(*week, domain="GMX.de"))
    assert total == 3                                   # the leaking copies show gmx.de subscribers
    page, total, _ = call("search_page", db, queries.SearchFilters(*week, service="billing"), page=2, page_size=50)
    assert total == 150 and len(page) == 50
    page, total, more = call("search_page", db, queries.SearchFilters(*week, service="billing"), cap=100)
    assert (total, more) == (100, True)
    page, total, _ = call("search_page", db, queries.SearchFilters(*week, campaign=LEAK_CAMPAIGN))
    assert total == 43
    for mid in ("newsletter.101@mailer.shop.example", "<newsletter.101@mailer.shop.example>"):
        page, total, _ = call("search_page", db, queries.SearchFilters(*week, message_id=mid))
        assert total == 1 and page.iloc[0]["event_id"] == s.leak_event_ids[1]
    hour = queries.SearchFilters(now - 3600, now + 60, service="billing")
    assert call("search_page", db, hour)[1] == 120
    assert call("search_rows", db, call("search_ids", db, queries.SearchFilters(*week, domain="nowhere.example"))).empty


def test_service_baselines_from_the_aggregate(backend):
    cfg, db, s = backend
    now = s.now_ms // 1000
    until = (now // 60 + 1) * 60
    minutes = call("service_minutes", db, until - 86400, until)
    by = minutes.groupby("service")["messages"].sum().to_dict()
    assert by == s.messages_last_day
    assert minutes.groupby("service")["recipients"].sum()["support"] == 30
    assert call("service_minutes", db, until - 86400, until, service="support")["messages"].sum() == 10
    dist = call("recipients_distribution", db, until - 86400, until)
    assert dist[dist["service"] == "support"][["recipients_per_message", "messages"]].values.tolist() == [[3, 10]]
    assert dict(dist[dist["service"] == "newsletter"][["recipients_per_message", "messages"]].values.tolist()) \
        == {1: 43}
    prof = call("hour_profile", db, until - 86400, until)
    assert prof.groupby("service")["messages"].sum().to_dict() == s.messages_last_day
    base = stats.service_baselines(minutes, dist, now).set_index("service")
    assert base.loc["support", "rcpt_p50"] == 3 and base.loc["billing", "messages"] == 150
    assert base.loc["newsletter", "leaking"] == 3
    # the aggregate keeps counting new inserts (the view), and its backfill ran exactly once
    insert_duplicate(db, cfg, billing_event(s, 3))
    assert aggregates.ensure(db) is False
    minutes = call("service_minutes", db, until - 86400, until, service="billing")
    assert minutes["messages"].sum() == 151


def test_every_query_function_is_exercised():
    source = open(__file__, encoding="utf-8").read()
    public = {n for n, f in inspect.getmembers(queries, inspect.isfunction)
              if not n.startswith("_") and f.__module__ == queries.__name__}
    missing = {n for n in public if f'call("{n}"' not in source}
    assert not missing, f"query functions without a test on both servers: {sorted(missing)}"


def _drop_aggregate(db):
    db.execute(f"DROP TABLE {{db}}.{aggregates.VIEW}")
    db.execute(f"DROP TABLE {{db}}.{aggregates.TABLE}")


def test_known_services_without_the_aggregate():
    """Before the aggregate exists (an older schema), the filter choices come from ``events``."""
    cfg = Config()
    cfg.privacy.hash_key = "chdb-test-key-0123456789abcdefgh"
    db = chdb_database(f"dash_{uuid.uuid4().hex[:8]}")
    migrate(db)
    _drop_aggregate(db)                        # as on a schema from before migration 3
    s = seed(db, cfg)
    assert not aggregates.exists(db)
    assert call("known_services", db, s.now_ms // 1000 - 86400) == ["billing", "newsletter", "receipts", "support"]
