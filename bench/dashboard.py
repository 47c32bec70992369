"""Dashboard page timings with ten million events in ClickHouse.

The load is generated on the server (``INSERT ... SELECT FROM numbers()``), a million rows per
statement, so ten million events take about a minute instead of the hours a Kafka replay would:
what is measured here is the read side. The rows have the shape real ones have (service mix of the
simulator, one to six recipients, hashed and masked address arrays, campaigns and templates), spread
evenly over ``days`` ending now, so the Live page's last hour holds ``n / days / 24`` events.

On top come 300 incidents (three still open), their alerts, a disclosure incident whose exposure
table holds ``exposure_copies`` x ``exposure_width`` (copy, exposed address) pairs, and 10,000
malformed-input errors.

Each page is timed the way it renders: the same ``queries`` calls, in the same order, with the
page's default inputs (``page_loads``); and, with ``apptest=True``, the whole Streamlit script in
``AppTest`` (queries + pandas + Altair + element tree). Every figure is the median and the minimum
of ``runs`` (the minimum estimates the uncontended cost on a shared machine; the load average
before and after is reported with them), with the app's query cache out of the way (queries are
called directly; each AppTest run is a fresh session with ``st.cache_data`` cleared).
"""

from __future__ import annotations

import json
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Callable

from mailaudit.bench.workdir import work_dir
from mailaudit.config import Config
from mailaudit.dashboard import aggregates
from mailaudit.dashboard import queries as q
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.schema import backfill_address_index, migrate
from mailaudit.ingest.simulator import SERVICES
from mailaudit.stack import LocalStack

DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "icloud.com", "gmx.de", "web.de",
           "orange.fr", "proton.me", "example.org"]
USERS = 2_000_000

_EVENT_COLUMNS = (
    "event_id, sent_at, sent_ms, ingested_at, service, campaign, template, message_id, key_id, from_hash, "
    "from_domain, from_masked, to_hashes, to_domains, to_masked, cc_hashes, cc_domains, cc_masked, bcc_hashes, "
    "bcc_masked, env_hashes, env_domains, env_masked, to_count, cc_count, bcc_count, env_count, visible_count, "
    "visible_domains, strangers, run_together, has_bcc, is_group, semicolon, unparseable, subject_hash, subject, "
    "size_bytes, extra, kafka_partition, kafka_offset")


def _service_pick() -> tuple[str, dict]:
    """multiIf over a hash percentile: the simulator's service mix, values as parameters."""
    parts, params, acc = [], {}, 0.0
    items = list(SERVICES.items())
    for i, (name, share) in enumerate(items[:-1]):
        acc += share
        parts.append(f"r < %(c{i})s, %(s{i})s")
        params[f"c{i}"] = int(round(acc * 10_000))
        params[f"s{i}"] = name
    params["s_last"] = items[-1][0]
    return "multiIf(" + ", ".join(parts) + ", %(s_last)s)", params


def load_events(db: Database, n: int, days: float = 7.0, end_ms: int | None = None,
                chunk: int = 1_000_000, log: Callable[[str], None] = lambda s: None) -> int:
    """Insert ``n`` synthetic events spread over ``days`` ending at ``end_ms`` (default now)."""
    end_ms = end_ms or int(time.time() * 1000)
    span_ms = int(days * 86_400_000)
    start_ms = end_ms - span_ms
    pick, params = _service_pick()
    sql = f"""
    INSERT INTO {{db}}.events ({_EVENT_COLUMNS})
    SELECT generateUUIDv4(), toDateTime(intDiv(ms, 1000)), ms, toDateTime(intDiv(ms, 1000)), svc,
           if(svc IN ('newsletter', 'promotions'), concat(svc, '-', toString(intDiv(ms, 86400000))), ''),
           concat(svc, '-', toString(modulo(cityHash64(n, 4), 5))),
           concat('<', toString(n), '.', toString(cityHash64(n, 6)), '@mailer.shop.example>'),
           'k1', lower(hex(MD5(concat(svc, '@shop.example')))), 'shop.example',
           concat(substring(svc, 1, 1), '***@shop.example'),
           hashes, domains, masked, [], [], [], [], [], hashes, domains, masked,
           k, 0, 0, k, k, length(arrayDistinct(domains)), 0, 0, 0, 0, 0, 0,
           lower(hex(MD5(toString(modulo(cityHash64(n, 7), 1000))))), '',
           toUInt32(2000 + modulo(cityHash64(n, 5), 50000)), '',
           toUInt16(modulo(cityHash64(svc), 4)), n
    FROM (
        SELECT number AS n,
               %(start_ms)s + intDiv(n * %(span_ms)s, %(total)s) AS ms,
               modulo(cityHash64(n, 1), 10000) AS r,
               {pick} AS svc,
               modulo(cityHash64(n, 2), %(users)s) AS u,
               toUInt32(multiIf(svc IN ('support', 'internal'), 2 + modulo(cityHash64(n, 3), 3),
                                svc = 'monitoring', 3 + modulo(cityHash64(n, 3), 4), 1)) AS k,
               arrayMap(i -> concat('u', toString(modulo((u + i * 7919), %(users)s)), '@',
                                    %(domains)s[1 + modulo((u + i), %(ndomains)s)]), range(k)) AS addrs,
               arrayMap(a -> lower(hex(MD5(a))), addrs) AS hashes,
               arrayMap(a -> splitByChar('@', a)[2], addrs) AS domains,
               arrayMap(a -> concat(substring(a, 1, 1), '***@', splitByChar('@', a)[2]), addrs) AS masked
        FROM numbers(%(offset)s, %(count)s)
    )
    """
    done = 0
    while done < n:
        count = min(chunk, n - done)
        db.execute(sql, {**params, "start_ms": start_ms, "span_ms": span_ms, "total": n, "users": USERS,
                         "domains": DOMAINS, "ndomains": len(DOMAINS), "offset": done, "count": count})
        done += count
        log(f"events: {done:,}/{n:,}")
    return done


def load_incidents(db: Database, end_ms: int | None = None, n_incidents: int = 300, exposure_copies: int = 1000,
                   exposure_width: int = 1000, errors: int = 10_000) -> str:
    """Incidents, alerts, one big exposure and errors; returns the big incident's id."""
    end_ms = end_ms or int(time.time() * 1000)
    end_s = end_ms // 1000
    kinds = ["concatenated_to", "visible_disclosure", "run_together", "bcc_header", "volume_spike", "recipient_spike"]
    services = list(SERVICES)
    big = uuid.uuid4()
    cols: dict[str, list] = {c: [] for c in (
        "incident_id", "category", "kind", "severity", "status", "service", "campaign", "template", "first_seen",
        "last_seen", "copies", "exposed", "summary", "last_alert_id", "version")}
    alerts: dict[str, list] = {c: [] for c in (
        "alert_id", "incident_id", "status", "kind", "severity", "service", "campaign", "template",
        "trigger_event_id", "first_seen", "last_seen", "copies", "exposed", "detected_at", "summary", "evidence",
        "body")}
    import datetime as dt

    def ts(s: int) -> dt.datetime:
        return dt.datetime.fromtimestamp(s, dt.timezone.utc)

    for i in range(n_incidents):
        iid = big if i == 0 else uuid.uuid4()
        kind = kinds[i % len(kinds)]
        cat = "spike" if kind.endswith("spike") else "disclosure"
        sev = "critical" if cat == "disclosure" and i % 2 == 0 else "warning"
        svc = services[i % len(services)]
        first = end_s - 600 - i * 2000
        last = first + 300
        status = "open" if i < 3 else "resolved"
        copies = exposure_copies if i == 0 else 5 + i % 40
        exposed = exposure_width if i == 0 else (0 if cat == "spike" else 10 + i % 90)
        camp = f"{svc}-{first // 86400}" if svc in ("newsletter", "promotions") else ""
        for version, st in enumerate(["open", "update"] + ([] if status == "open" else ["resolved"]), start=1):
            aid = uuid.uuid4()
            cols["incident_id"].append(iid); cols["category"].append(cat); cols["kind"].append(kind)
            cols["severity"].append(sev); cols["status"].append(st); cols["service"].append(svc)
            cols["campaign"].append(camp); cols["template"].append(f"{svc}-1"); cols["first_seen"].append(ts(first))
            cols["last_seen"].append(ts(last)); cols["copies"].append(copies); cols["exposed"].append(exposed)
            cols["summary"].append(f"{kind.replace('_', ' ')} in {svc}: {copies} copies, {exposed} addresses exposed")
            cols["last_alert_id"].append(aid); cols["version"].append(version)
            evidence = {"copies": copies, "exposed": exposed, "threshold": 10,
                        "sample": [f"u***@{d}" for d in DOMAINS[:5]]}
            for name, v in (("alert_id", aid), ("incident_id", iid), ("status", st), ("kind", kind),
                            ("severity", sev), ("service", svc), ("campaign", camp), ("template", f"{svc}-1"),
                            ("trigger_event_id", uuid.uuid4()), ("first_seen", ts(first)), ("last_seen", ts(last)),
                            ("copies", copies), ("exposed", exposed), ("detected_at", ts(last)),
                            ("summary", cols["summary"][-1]), ("evidence", json.dumps(evidence)), ("body", "")):
                alerts[name].append(v)
    db.insert("incidents", cols)
    db.insert("alerts", alerts)
    # The big incident: copies each showing `exposure_width` addresses in To, one recipient each.
    db.execute(
        """
        INSERT INTO {db}.exposures (incident_id, event_id, sent_at, sent_ms, service, campaign, key_id,
                                    exposed_hashes, exposed_masked, exposed_domains, recipient_hashes, recipient_count)
        SELECT %(iid)s, generateUUIDv4(), toDateTime(intDiv(ms, 1000)), ms, %(service)s, '', 'k1',
               arrayMap(a -> lower(hex(MD5(a))), addrs), arrayMap(a -> concat(substring(a, 1, 1), '***@',
               splitByChar('@', a)[2]), addrs), arrayMap(a -> splitByChar('@', a)[2], addrs),
               [lower(hex(MD5(concat('r', toString(number), '@gmail.com'))))], 1
        FROM (SELECT number, %(first_ms)s + number * 300 AS ms,
                     arrayMap(i -> concat('x', toString(modulo((number * 7 + i), %(pool)s)), '@',
                                          %(domains)s[1 + modulo(i, 10)]), range(%(width)s)) AS addrs
              FROM numbers(%(copies)s))
        """,
        {"iid": big, "service": services[0], "first_ms": (end_s - 600) * 1000, "pool": exposure_width * 2,
         "domains": DOMAINS, "width": exposure_width, "copies": exposure_copies},
    )
    db.execute(
        """
        INSERT INTO {db}.errors (kafka_ts, received_at, topic, partition, offset, reason, detail, size, excerpt, service)
        SELECT toDateTime(%(end)s - number * 60), toDateTime(%(end)s - number * 60), 'mail.headers',
               toUInt16(modulo(number, 4)), number,
               ['bad_json', 'missing_field', 'bad_time', 'wrong_type'][1 + modulo(number, 4)],
               'synthetic', 512, '{"v":1,"to":"u***@gmail.com"}', ''
        FROM numbers(%(n)s)
        """,
        {"end": end_s, "n": errors},
    )
    return str(big)


# --- what each page runs, with its default inputs -------------------------------------------------------

def page_loads(db: Database, cfg: Config, incident_id: str, address_hash: str, now_s: int) -> dict[str, Callable]:
    """The queries each page runs, in order, with the page's default inputs (see dashboard/views/)."""
    from mailaudit.dashboard import stats

    def live(span: int, bucket: int):
        def run():
            traffic = q.traffic(db, now_s - span, now_s + 60, bucket)
            stats.traffic_totals(traffic)
            open_inc = q.open_incidents(db)
            q.acknowledged(db, open_inc["incident_id"])
            q.exposure_counts(db, open_inc["incident_id"])
            q.errors_summary(db, now_s - 86400)
        return run

    def incidents_list():
        q.known_services(db, now_s - 30 * 86400)
        df = q.incidents(db, since_s=now_s - 30 * 86400)
        q.acknowledged(db, df["incident_id"])
        q.exposure_counts(db, df["incident_id"])

    def incident_page():
        inc = q.incident(db, incident_id)
        first = int(inc["first_seen"].timestamp())
        last = int(inc["last_seen"].timestamp())
        scope = inc["campaign"] or inc["template"] or None
        q.acknowledged(db, [incident_id])
        q.exposure_summary(db, incident_id)
        q.actions(db, [incident_id, q.hold_target(inc["service"], scope)])
        q.exposure_table(db, incident_id)
        q.scope_traffic(db, inc["service"], inc["campaign"] or None, first - 1800, last + 1800, 60)
        q.incident_headers(db, incident_id, inc["service"], first - 60, last + 60)
        q.incident_alerts(db, incident_id, inc["service"])

    def search(f: q.SearchFilters):
        def run():
            q.known_services(db, 0)
            ids = q.search_ids(db, f)
            q.search_rows(db, ids.iloc[:50], f.address_hashes)
        return run

    def services_page():
        aggregates.exists(db)
        until = (now_s // 60 + 1) * 60
        since = until - 7 * 86400
        minutes = q.service_minutes(db, since, until)
        dist = q.recipients_distribution(db, since, until)
        q.hour_profile(db, since, until)
        stats.service_baselines(minutes, dist, now_s)

    day, week, ever, end = now_s - 86400, now_s - 7 * 86400, 0, now_s + 60
    campaign = f"newsletter-{(now_s - 3 * 86400) // 86400}"
    return {
        "live, last hour": live(3600, 60),
        "live, last 24 h": live(86400, 900),
        "incidents list": incidents_list,
        "incident page (1M exposure pairs)": incident_page,
        "search address, 7 days (default)": search(q.SearchFilters(week, end, address_hashes=(address_hash,))),
        "search address, all time": search(q.SearchFilters(ever, end, address_hashes=(address_hash,))),
        "search domain, 24 h": search(q.SearchFilters(day, end, domain="proton.me")),
        "search service+campaign, 7 days": search(q.SearchFilters(week, end, service="newsletter", campaign=campaign)),
        "search message-id, all time": search(q.SearchFilters(ever, end, message_id="<12345.x@y>")),
        "services, 7 days": services_page,
    }


def _times(fn: Callable, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _summary(times: list[float]) -> dict[str, float]:
    """Median and minimum: on a shared machine the minimum is the closest to the uncontended cost."""
    return {"median": round(statistics.median(times), 3), "min": round(min(times), 3)}


def apptest_timings(cfg: Config, incident_id: str, runs: int) -> dict[str, float]:
    """Whole-page render times in Streamlit's AppTest: script, queries, pandas, Altair specs, element
    tree; a fresh session and an empty query cache per run. Search is timed from the click on
    "Search" (the address is hashed with the bench's key: the bench rows carry unkeyed digests, so
    it matches nothing, but the scan over every hash array is the same work)."""
    import dataclasses
    import os

    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from mailaudit import tomlw

    app = str(Path(__file__).resolve().parent.parent / "dashboard" / "app.py")
    cfg_dir, discard_cfg = work_dir(None, "mailaudit-bench-cfg-")
    path = cfg_dir / "config.toml"
    path.write_text(tomlw.dumps(dataclasses.asdict(cfg)))
    path.chmod(0o600)
    old = os.environ.get("MAILAUDIT_CONFIG")
    os.environ["MAILAUDIT_CONFIG"] = str(path)
    # The app trusts an anonymous session only on a loopback bind (Streamlit's server.address).
    from streamlit import config as st_config

    st_config.set_option("server.address", "127.0.0.1")

    def search(**fields):
        def act(at):
            for key, value in fields.items():
                (at.selectbox if key == "q_service" else at.text_input)(key=key).set_value(value)
            next(b for b in at.button if b.label == "Search").click()
        return act

    pages = (
        ("Live", "views/live.py", {}, None),
        ("Incidents", "views/incidents.py", {}, None),
        ("Incident (1M exposure pairs)", "views/incidents.py", {"incident": incident_id}, None),
        ("Search address, 7 days", "views/search.py", {}, search(q_address="someone@gmail.com")),
        ("Search service, 7 days", "views/search.py", {}, search(q_service="newsletter")),
        ("Services, 7 days", "views/services.py", {}, None),
    )
    out = {}
    try:
        for name, page, qp, action in pages:
            times = []
            for _ in range(runs):
                st.cache_data.clear()          # the app's 30 s query cache would hide the queries
                at = AppTest.from_file(app, default_timeout=120)
                at.run()
                at.switch_page(page)
                at.query_params.update(qp)
                if action:
                    at.run()
                    action(at)
                t0 = time.perf_counter()
                at.run()
                times.append(time.perf_counter() - t0)
                if at.exception:
                    raise RuntimeError(f"{name}: {at.exception[0].message}")
            out[name] = _summary(times)
    finally:
        st_config.set_option("server.address", None)
        if old is None:
            os.environ.pop("MAILAUDIT_CONFIG", None)
        else:
            os.environ["MAILAUDIT_CONFIG"] = old
        discard_cfg()
    return out


def search_timings(db: Database, address: str, now_s: int, runs: int) -> dict[str, dict[str, float]]:
    """Address search (both phases, as the page runs them) through the reverse index (schema migration
    5) and, on the same data, through the hash arrays as before it (the index switched off)."""
    week, end = now_s - 7 * 86400, now_s + 60
    out = {}
    for label, index in (("index", True), ("array scan", False)):
        for span, since in (("7 days", week), ("all time", 0)):
            f = q.SearchFilters(since, end, address_hashes=(address,))

            def run(f=f):
                ids = q.search_ids(db, f)
                q.search_rows(db, ids.iloc[:50], f.address_hashes)

            db._has_address_index = index
            try:
                run()                                     # warm the mark cache, as a running dashboard has it
                out[f"search address, {span}, {label}"] = _summary(_times(run, runs))
            finally:
                db._has_address_index = None
    return out


def modern_search(n: int, days: float, runs: int, log: Callable[[str], None]) -> dict:
    """The same load and address searches on chdb (ClickHouse 26.x, the modern DDL)."""
    from mailaudit.bench.chdb_client import chdb_database

    db = chdb_database(f"dashbench_{uuid.uuid4().hex[:8]}")
    migrate(db)
    end_ms = int(time.time() * 1000)
    t0 = time.perf_counter()
    load_events(db, n, days=days, end_ms=end_ms, log=log)
    backfill_address_index(db)
    load_s = time.perf_counter() - t0
    address = db.execute("SELECT env_hashes[1] FROM {db}.events WHERE sent_at >= toDateTime(%(t)s) LIMIT 1",
                         {"t": end_ms // 1000 - 3600})[0][0]
    version = db.execute("SELECT version()")[0][0]
    return {"server": f"chdb {version}", "events": int(db.execute("SELECT count() FROM {db}.events")[0][0]),
            "load_s": round(load_s, 1), "query_s": search_timings(db, address, end_ms // 1000, runs)}


def bench_dashboard(n: int = 10_000_000, runs: int = 5, days: float = 7.0, state_dir: str | None = None,
                    apptest: bool = True, exposure_copies: int = 1000, exposure_width: int = 1000,
                    log: Callable[[str], None] | None = None, info=None, modern: bool = True) -> dict:
    """``info``: run on these servers (a ``StackInfo``) instead of a local stack; ``modern``: also the
    address searches on chdb with the modern DDL."""
    import sys

    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    state, discard = work_dir(state_dir, "mailaudit-bench-")
    stack = None
    if info is None:
        stack = LocalStack(state / "stack", tied=True)
        info = stack.up()
    try:
        cfg = Config()
        cfg.kafka.bootstrap = info.kafka_bootstrap
        cfg.clickhouse.url = f"clickhouse://default:@127.0.0.1:{info.clickhouse_port}/dashbench_{uuid.uuid4().hex[:8]}"
        cfg.privacy.hash_key = uuid.uuid4().hex
        db = Database(cfg.clickhouse)
        migrate(db)
        aggregates.ensure(db)
        end_ms = int(time.time() * 1000)
        t0 = time.perf_counter()
        load_events(db, n, days=days, end_ms=end_ms, log=log)
        t_index = time.perf_counter()
        backfill_address_index(db)      # what the consumer writes next to each batch (schema migration 5)
        index_s = time.perf_counter() - t_index
        big = load_incidents(db, end_ms, exposure_copies=exposure_copies, exposure_width=exposure_width)
        load_s = time.perf_counter() - t0
        log(f"loaded in {load_s:.0f}s; waiting for background merges to settle")
        _settle(db)
        stored = int(db.execute("SELECT count() FROM {db}.events")[0][0])
        pairs = int(db.execute("SELECT sum(length(exposed_hashes)) FROM {db}.exposures")[0][0])
        address = db.execute("SELECT env_hashes[1] FROM {db}.events WHERE sent_at >= toDateTime(%(t)s) LIMIT 1",
                             {"t": end_ms // 1000 - 3600})[0][0]
        now_s = end_ms // 1000
        timings = {}
        load_before = os.getloadavg()[0]
        for name, fn in page_loads(db, cfg, big, address, now_s).items():
            fn()  # warm the server's mark cache once, as a running dashboard has it
            timings[name] = _summary(_times(fn, runs))
            log(f"{name}: {timings[name]}")
        search = search_timings(db, address, now_s, runs)
        log(f"address search, index vs array scan: {search}")
        result = {
            "events": stored, "days": days, "exposure_pairs": pairs, "runs": runs, "load_s": round(load_s, 1),
            "index_backfill_s": round(index_s, 1),
            "clickhouse": ".".join(map(str, db.capabilities.version)), "cpus": os.cpu_count(),
            "query_s": timings, "max_query_median_s": max(t["median"] for t in timings.values()),
        }
        if apptest:
            result["render_s"] = apptest_timings(cfg, big, runs)
            log(f"render: {result['render_s']}")
            result["max_render_median_s"] = max(t["median"] for t in result["render_s"].values())
        result["address_search_s"] = search
        result["index_rows"] = int(db.execute("SELECT count() FROM {db}.events_by_address")[0][0])
        result["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        if modern:
            db.disconnect()
            load = os.getloadavg()[0]
            result["modern_chdb"] = modern_search(n, days, runs, log)
            result["modern_chdb"]["load_average"] = [round(load, 2), round(os.getloadavg()[0], 2)]
            log(f"modern (chdb): {result['modern_chdb']}")
        return result
    finally:
        if stack is not None:
            stack.down()
        discard()


def _settle(db: Database, timeout_s: float = 120.0) -> None:
    """Wait until background merges of the fresh load are done, so timings are of a steady table."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        busy = db.execute("SELECT count() FROM system.merges WHERE database = %(d)s", {"d": db.name})[0][0]
        if not busy:
            return
        time.sleep(1)


if __name__ == "__main__":
    print(json.dumps(bench_dashboard(), indent=2))
