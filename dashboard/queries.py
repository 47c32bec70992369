"""Every SQL statement of the dashboard, as plain functions of a ``Database``.

Kept apart from Streamlit so that each query runs in the tests against the real 18.16 server and
against chdb (modern ClickHouse), and in ``bench/dashboard.py`` against ten million events, with no
browser involved. Rules that every function here follows:

* values only through ``%(name)s`` parameters; the SQL text varies only by which fixed clauses a
  filter switches on;
* time filters on ``sent_at`` (the sort key, so ClickHouse skips granules and daily partitions) with
  ``toDateTime(<epoch seconds>)``, which compares the same way against ``DateTime`` (18.16) and
  ``DateTime64(3)`` (modern) whatever the server's time zone; bucketing and returned times use
  ``sent_ms`` (epoch milliseconds, on every server), so the Python side sees one shape;
* ``events`` is a ReplacingMergeTree: a redelivered event sits in the table twice until a merge.
  Exact figures read it with ``FINAL`` (measured on 18.16: a day of 1.4M events in 0.3 s, against
  1.3 s for a ``GROUP BY event_id`` subquery); every filter used with ``FINAL`` is on payload
  columns, which all copies of one event share, so filtering before or after the collapse agrees.
  Baselines over days (Services page) read the per-minute aggregate of ``aggregates.py`` instead;
* ``incidents`` holds one row per state change: the latest ``version`` wins (``argMax``), which is
  correct whether or not the parts have been merged.

Times come back as pandas ``datetime64[ns, UTC]`` columns.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import pandas as pd

from mailaudit.ingest.clickhouse import Database

SEVERITY_ORDER = ("critical", "warning", "info")
CATEGORIES = ("disclosure", "spike", "anomaly")
ACTIVE_STATUSES = ("open", "update")

# Full scans (search over a long range) must not hold a server thread forever. log_queries = 0: on
# 18.16 parameters are substituted into the SQL text client-side, so a search's address hashes would
# land in system.query_log, out of `forget`'s reach (issue 14).
_SCAN_SETTINGS = " SETTINGS max_execution_time = 60, log_queries = 0"


def _utc(ms_series: pd.Series) -> pd.Series:
    return pd.to_datetime(ms_series.astype("int64"), unit="ms", utc=True)


def _frame(rows: Sequence[tuple], columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame.from_records(list(rows), columns=list(columns))


def _uuid(value: str | uuid.UUID) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


# --- traffic (Live) ---------------------------------------------------------------------------------

def traffic(db: Database, since_s: int, until_s: int, bucket_s: int) -> pd.DataFrame:
    """Messages, envelope recipients and leaking copies per service per bucket, each event once.

    Columns: time, service, messages, recipients, leaking, last_event, messages_per_s, recipients_per_s.
    """
    rows = db.execute(
        """
        SELECT service, intDiv(sent_ms, %(bucket_ms)s) * %(bucket_ms)s AS t, count() AS messages,
               sum(env_count) AS recipients, sum(strangers > 0) AS leaking, max(sent_ms) AS last_ms
        FROM {db}.events FINAL
        WHERE sent_at >= toDateTime(%(since)s) AND sent_at < toDateTime(%(until)s)
        GROUP BY service, t
        ORDER BY t, service
        """,
        {"since": int(since_s), "until": int(until_s), "bucket_ms": int(bucket_s) * 1000},
    )
    df = _frame(rows, ["service", "t", "messages", "recipients", "leaking", "last_ms"])
    df["time"] = _utc(df["t"])
    df["last_event"] = _utc(df["last_ms"])
    df["messages_per_s"] = df["messages"] / float(bucket_s)
    df["recipients_per_s"] = df["recipients"] / float(bucket_s)
    return df[["time", "service", "messages", "recipients", "leaking", "last_event", "messages_per_s",
               "recipients_per_s"]]


def known_services(db: Database, since_s: int) -> list[str]:
    """Services that sent anything since ``since_s`` or have an incident (filter choices).

    Read from the per-minute aggregate when it exists (thousands of rows instead of a scan of the
    ``service`` column of every event), else from ``events``.
    """
    has_aggregate = db.execute("SELECT count() FROM system.tables WHERE database = %(d)s AND name = 'events_minutely'",
                               {"d": db.name})[0][0]
    source = ("SELECT service FROM {db}.events_minutely WHERE minute >= toDateTime(%(since)s) GROUP BY service"
              if has_aggregate else
              "SELECT service FROM {db}.events WHERE sent_at >= toDateTime(%(since)s) GROUP BY service")
    rows = db.execute(
        f"""
        SELECT service FROM (
            {source}
            UNION ALL
            SELECT service FROM {{db}}.incidents GROUP BY service
        ) GROUP BY service ORDER BY service
        """,
        {"since": int(since_s)},
    )
    return [r[0] for r in rows if r[0]]


def errors_summary(db: Database, since_s: int) -> dict[str, Any]:
    """Malformed input (the DLQ's twin in ClickHouse): total, since ``since_s``, and by reason.

    ``errors`` is keyed by Kafka coordinates, so a redelivered bad message is one error.
    """
    total, recent = db.execute(
        """
        SELECT uniqExact(topic, partition, offset),
               uniqExactIf(topic, partition, offset, received_at >= toDateTime(%(since)s))
        FROM {db}.errors
        """,
        {"since": int(since_s)},
    )[0]
    by_reason = db.execute(
        """
        SELECT reason, uniqExact(topic, partition, offset) AS n, max(received_at) AS last
        FROM {db}.errors WHERE received_at >= toDateTime(%(since)s)
        GROUP BY reason ORDER BY n DESC, reason
        """,
        {"since": int(since_s)},
    )
    return {"total": int(total), "recent": int(recent),
            "by_reason": _frame(by_reason, ["reason", "errors", "last"])}


# --- incidents ----------------------------------------------------------------------------------------

_INCIDENT_COLUMNS = ["incident_id", "category", "kind", "severity", "status", "service", "campaign", "template",
                     "first_s", "last_s", "copies", "exposed", "summary", "version"]

def _latest_incidents(where: str = "") -> str:
    """Latest state of every incident; callers filter on the *latest* values (``cur_*``) only."""
    return f"""
    SELECT incident_id,
           argMax(category, version) AS cur_category, argMax(kind, version) AS cur_kind,
           argMax(severity, version) AS cur_severity, argMax(status, version) AS cur_status,
           any(service) AS cur_service, any(campaign) AS cur_campaign, any(template) AS cur_template,
           min(toUnixTimestamp(first_seen)) AS first_s, max(toUnixTimestamp(last_seen)) AS last_s,
           max(copies) AS cur_copies, max(exposed) AS cur_exposed,
           argMax(summary, version) AS cur_summary, max(version) AS cur_version
    FROM {{db}}.incidents {where}
    GROUP BY incident_id
    """


def _incident_frame(rows) -> pd.DataFrame:
    df = _frame(rows, _INCIDENT_COLUMNS)
    df["incident_id"] = df["incident_id"].astype(str)
    df["first_seen"] = pd.to_datetime(df["first_s"].astype("int64"), unit="s", utc=True)
    df["last_seen"] = pd.to_datetime(df["last_s"].astype("int64"), unit="s", utc=True)
    return df.drop(columns=["first_s", "last_s"])


def incidents(
    db: Database,
    since_s: int | None = None,
    statuses: Iterable[str] = (),
    severities: Iterable[str] = (),
    services: Iterable[str] = (),
    categories: Iterable[str] = (),
    limit: int = 500,
) -> pd.DataFrame:
    """Incidents by their latest state, most severe and most recent first.

    Empty filters mean "any". ``since_s`` keeps incidents whose last event is at or after it.
    """
    where, params = [], {"limit": int(limit)}
    for col, name, values in (("cur_status", "statuses", statuses), ("cur_severity", "severities", severities),
                              ("cur_service", "services", services), ("cur_category", "categories", categories)):
        values = tuple(values)
        if values:
            where.append(f"{col} IN %({name})s")
            params[name] = values
    if since_s is not None:
        where.append("last_s >= %(since)s")
        params["since"] = int(since_s)
    rows = db.execute(
        f"""
        SELECT incident_id, cur_category, cur_kind, cur_severity, cur_status, cur_service, cur_campaign,
               cur_template, first_s, last_s, cur_copies, cur_exposed, cur_summary, cur_version
        FROM ({_latest_incidents()})
        {('WHERE ' + ' AND '.join(where)) if where else ''}
        ORDER BY multiIf(cur_status = 'resolved', 1, 0), multiIf(cur_severity = 'critical', 0,
                 cur_severity = 'warning', 1, 2), last_s DESC, incident_id
        LIMIT %(limit)s
        """,
        params,
    )
    return _incident_frame(rows)


def open_incidents(db: Database, limit: int = 100) -> pd.DataFrame:
    return incidents(db, statuses=ACTIVE_STATUSES, limit=limit)


def incident(db: Database, incident_id: str) -> dict[str, Any] | None:
    rows = db.execute(
        f"""
        SELECT incident_id, cur_category, cur_kind, cur_severity, cur_status, cur_service, cur_campaign,
               cur_template, first_s, last_s, cur_copies, cur_exposed, cur_summary, cur_version
        FROM ({_latest_incidents('WHERE incident_id = %(id)s')})
        """,
        {"id": _uuid(incident_id)},
    )
    if not rows:
        return None
    return _incident_frame(rows).iloc[0].to_dict()


def incident_alerts(db: Database, incident_id: str, service: str) -> pd.DataFrame:
    """The alerts of one incident, newest first, with their evidence decoded.

    Columns: detected_at, status, kind, severity, copies, exposed, summary, evidence (dict), alert_id.
    """
    rows = db.execute(
        """
        SELECT alert_id, any(status), any(kind), any(severity), max(toUnixTimestamp(detected_at)) AS d,
               max(copies), max(exposed), any(summary), any(evidence)
        FROM {db}.alerts
        WHERE service = %(service)s AND incident_id = %(id)s
        GROUP BY alert_id
        ORDER BY d DESC, alert_id
        """,
        {"service": service, "id": _uuid(incident_id)},
    )
    df = _frame(rows, ["alert_id", "status", "kind", "severity", "d", "copies", "exposed", "summary", "evidence"])
    df["alert_id"] = df["alert_id"].astype(str)
    df["detected_at"] = pd.to_datetime(df["d"].astype("int64"), unit="s", utc=True)
    df["evidence"] = [_json_or_text(e) for e in df["evidence"]]
    return df[["detected_at", "status", "kind", "severity", "copies", "exposed", "summary", "evidence", "alert_id"]]


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {"unparsed": text}


def _exposures_by_copy(where: str = "incident_id = %(id)s") -> str:
    # One row per leaking copy (exposures is a ReplacingMergeTree keyed by incident and event).
    return f"""
        SELECT event_id, any(sent_ms) AS ms, any(exposed_hashes) AS eh, any(exposed_masked) AS em,
               any(recipient_hashes) AS rh, any(recipient_count) AS rc
        FROM {{db}}.exposures WHERE {where} GROUP BY event_id
    """


def scope_traffic(db: Database, service: str, campaign: str | None, since_s: int, until_s: int,
                  bucket_s: int) -> pd.DataFrame:
    """All copies of a service (and campaign) around an incident, next to the leaking ones.

    Columns: time, messages, leaking.
    """
    cond = "AND campaign = %(campaign)s" if campaign else ""
    rows = db.execute(
        f"""
        SELECT intDiv(sent_ms, %(bucket_ms)s) * %(bucket_ms)s AS t, count() AS messages,
               sum(strangers > 0 OR run_together > 0 OR has_bcc > 0) AS leaking
        FROM {{db}}.events FINAL
        WHERE service = %(service)s {cond}
          AND sent_at >= toDateTime(%(since)s) AND sent_at < toDateTime(%(until)s)
        GROUP BY t ORDER BY t
        """,
        {"service": service, "campaign": campaign or "", "since": int(since_s), "until": int(until_s),
         "bucket_ms": int(bucket_s) * 1000},
    )
    df = _frame(rows, ["t", "messages", "leaking"])
    df["time"] = _utc(df["t"])
    return df[["time", "messages", "leaking"]]


def incident_headers(db: Database, incident_id: str, service: str, since_s: int, until_s: int,
                     n: int = 5) -> pd.DataFrame:
    """A few leaking copies as stored: masked From/To/Cc/Bcc, counts and flags (never raw addresses).

    Columns: sent_at, message_id, from, to, cc, bcc, to_count, cc_count, recipients, strangers, flags, event_id.
    """
    rows = db.execute(
        """
        SELECT event_id, any(sent_ms) AS ms, any(message_id), any(from_masked), any(to_masked), any(cc_masked),
               any(bcc_masked), any(to_count), any(cc_count), any(env_count), any(strangers), any(run_together),
               any(has_bcc), any(is_group), any(semicolon), any(unparseable)
        FROM {db}.events
        WHERE service = %(service)s
          AND sent_at >= toDateTime(%(since)s) AND sent_at <= toDateTime(%(until)s)
          AND event_id IN (SELECT event_id FROM {db}.exposures WHERE incident_id = %(id)s)
        GROUP BY event_id
        ORDER BY ms, event_id
        LIMIT %(n)s
        """,
        {"id": _uuid(incident_id), "service": service, "since": int(since_s), "until": int(until_s), "n": int(n)},
    )
    out = []
    for (eid, ms, mid, frm, to, cc, bcc, to_n, cc_n, env_n, strangers, rt, hb, grp, semi, unp) in rows:
        flags = [name for name, on in (("run-together", rt), ("Bcc header", hb), ("group", grp),
                                       ("';' separator", semi), (f"{unp} unparseable", unp)) if on]
        out.append({
            "sent_at": pd.Timestamp(int(ms), unit="ms", tz="UTC"), "message_id": mid, "from": frm,
            "to": _shorten(to), "cc": _shorten(cc), "bcc": _shorten(bcc), "to_count": int(to_n),
            "cc_count": int(cc_n), "recipients": int(env_n), "strangers": int(strangers),
            "flags": ", ".join(flags), "event_id": str(eid),
        })
    return pd.DataFrame(out, columns=["sent_at", "message_id", "from", "to", "cc", "bcc", "to_count", "cc_count",
                                      "recipients", "strangers", "flags", "event_id"])


def _shorten(masked: Sequence[str], keep: int = 6) -> str:
    masked = list(masked or ())
    head = ", ".join(masked[:keep])
    return head + (f" … (+{len(masked) - keep})" if len(masked) > keep else "")


def exposure_summary(db: Database, incident_id: str) -> dict[str, int]:
    """Leaking copies and distinct recipients of them. (Distinct exposed addresses are the rows of
    ``exposure_table``; counting them here too would be a second pass over every pair.)"""
    copies, recipients = db.execute(
        """
        SELECT count(), uniqExactArray(rh)
        FROM (SELECT event_id, any(recipient_hashes) AS rh FROM {db}.exposures
              WHERE incident_id = %(id)s GROUP BY event_id)
        """,
        {"id": _uuid(incident_id)},
    )[0]
    return {"copies": int(copies), "recipients": int(recipients)}


def exposure_counts(db: Database, incident_ids: Iterable[str]) -> dict[str, dict[str, int]]:
    """incident id -> {copies, exposed} from the exposures table, for incidents that have rows.

    The incident row's counts are the detector's running figures as of its latest alert (updates are
    rate-limited); the exposures table is the stored truth, so lists show the larger of the two.
    """
    ids = tuple(_uuid(i) for i in incident_ids)
    if not ids:
        return {}
    rows = db.execute(
        """
        SELECT incident_id, uniqExact(event_id), uniqExactArray(exposed_hashes)
        FROM {db}.exposures WHERE incident_id IN %(ids)s
        GROUP BY incident_id
        """,
        {"ids": ids},
    )
    return {str(i): {"copies": int(c), "exposed": int(e)} for i, c, e in rows}


def exposure_table(db: Database, incident_id: str, limit: int | None = None) -> pd.DataFrame:
    """Who was exposed to whom: per exposed address, the copies that showed it, how many distinct
    recipients (other than the address itself) saw it, and when.

    Columns: exposed (masked), domain, copies, seen_by, first_seen, last_seen, address_hash.
    Cost is one pass over the incident's (copy, exposed address) pairs.
    """
    lim = "LIMIT %(limit)s" if limit else ""
    rows = db.execute(
        f"""
        SELECT h, any(m) AS masked, count() AS copies, uniqExactArray(arrayFilter(r -> r != h, rh)) AS seen_by,
               min(ms) AS first_ms, max(ms) AS last_ms
        FROM ({_exposures_by_copy()})
        ARRAY JOIN eh AS h, em AS m
        GROUP BY h
        ORDER BY seen_by DESC, copies DESC, masked, h
        {lim}
        """,
        {"id": _uuid(incident_id), "limit": int(limit or 0)},
    )
    df = _frame(rows, ["address_hash", "exposed", "copies", "seen_by", "first_ms", "last_ms"])
    df["domain"] = df["exposed"].map(lambda m: m.rpartition("@")[2])
    df["first_seen"] = _utc(df["first_ms"])
    df["last_seen"] = _utc(df["last_ms"])
    return df[["exposed", "domain", "copies", "seen_by", "first_seen", "last_seen", "address_hash"]]


EXPOSURE_CSV_COLUMNS = ["address_hash", "address_masked", "domain", "copies", "seen_by", "first_seen", "last_seen"]


def exposure_csv(db: Database, incident_id: str) -> bytes:
    """The full exposure table as CSV, columns named as in ``mailaudit exposure --format csv``."""
    df = exposure_table(db, incident_id).rename(columns={"exposed": "address_masked"})[EXPOSURE_CSV_COLUMNS]
    for col in ("first_seen", "last_seen"):
        df[col] = df[col].dt.strftime("%Y-%m-%dT%H:%M:%S.%f").str[:-3] + "Z"
    return df.to_csv(index=False).encode("utf-8")


# --- audit log (acknowledge, hold, release) -------------------------------------------------------------

def record_action(db: Database, actor: str, action: str, target: str, detail: dict[str, Any] | None = None,
                  at: dt.datetime | None = None) -> None:
    """Append one operator action; the audit log never holds an address."""
    at = (at or dt.datetime.now(dt.timezone.utc)).replace(microsecond=0)
    db.insert("audit_log", {"at": [at], "actor": [actor], "action": [action], "target": [target],
                            "detail": [json.dumps(detail or {}, sort_keys=True, ensure_ascii=False)]})


def actions(db: Database, targets: Iterable[str], actions_: Iterable[str] = ("acknowledge", "hold", "release"),
            limit: int = 200) -> pd.DataFrame:
    """Operator actions on these targets, newest first. Columns: at, actor, action, target, detail."""
    targets = tuple(targets)
    if not targets:
        return pd.DataFrame(columns=["at", "actor", "action", "target", "detail"])
    rows = db.execute(
        """
        SELECT toUnixTimestamp(at) AS t, actor, action, target, detail FROM {db}.audit_log
        WHERE action IN %(actions)s AND target IN %(targets)s
        ORDER BY t DESC, action LIMIT %(limit)s
        """,
        {"actions": tuple(actions_), "targets": targets, "limit": int(limit)},
    )
    df = _frame(rows, ["t", "actor", "action", "target", "detail"])
    df["at"] = pd.to_datetime(df["t"].astype("int64"), unit="s", utc=True)
    df["detail"] = [_json_or_text(d) for d in df["detail"]]
    return df[["at", "actor", "action", "target", "detail"]]


def acknowledged(db: Database, incident_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """incident id -> the latest acknowledgement (at, actor) for those that have one."""
    df = actions(db, [str(i) for i in incident_ids], ("acknowledge",), limit=100_000)
    out: dict[str, dict[str, Any]] = {}
    for r in df.itertuples(index=False):
        out.setdefault(r.target, {"at": r.at, "actor": r.actor})
    return out


def hold_target(service: str, campaign: str | None) -> str:
    """The audit-log target (and control-topic key) of a hold: ``service/campaign`` or ``service/*``."""
    return f"{service}/{campaign or '*'}"


# --- search ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SearchFilters:
    since_s: int
    until_s: int
    address_hashes: tuple[str, ...] = ()   # keyed hashes of one address (current key and any old keys)
    domain: str | None = None
    service: str | None = None
    campaign: str | None = None
    message_id: str | None = None

    def empty(self) -> bool:
        return not (self.address_hashes or self.domain or self.service or self.campaign or self.message_id)


SEARCH_COLUMNS = ["sent_at", "service", "campaign", "template", "message_id", "from", "to", "to_count", "cc_count",
                  "recipients", "strangers", "match", "event_id"]


# An address appears anywhere in a copy: sender, To, Cc, Bcc or envelope.
_ADDRESS_IN_ARRAYS = ("(from_hash IN %(h_tuple)s OR hasAny(env_hashes, %(h_list)s) OR hasAny(to_hashes, %(h_list)s) "
                      "OR hasAny(cc_hashes, %(h_list)s) OR hasAny(bcc_hashes, %(h_list)s))")
# The same set of events from the reverse index (schema migration 5), which holds every distinct hash
# of those five columns per event, sorted by hash: a few granules per day instead of every array.
_INDEX_RANGE = ("address_hash IN %(h_tuple)s AND sent_at >= toDateTime(%(since)s) "
                "AND sent_at < toDateTime(%(until)s)")
_ADDRESS_IN_INDEX = f"event_id IN (SELECT event_id FROM {{db}}.events_by_address WHERE {_INDEX_RANGE})"


def _address_index_ready(db: Database) -> bool:
    """Whether this database has the address reverse index (schema migration 5); asked once per
    ``Database``. Without it (a database not migrated yet) search reads the hash arrays."""
    known = getattr(db, "_has_address_index", None)
    if known is None:
        known = bool(db.execute("SELECT count() FROM system.tables WHERE database = %(d)s AND name = 'events_by_address'",
                                {"d": db.name})[0][0])
        db._has_address_index = known
    return known


def _search_where(f: SearchFilters, use_index: bool = False) -> tuple[str, str, dict[str, Any]]:
    """(PREWHERE, WHERE, params). The most selective filter (address, else Message-ID, else domain)
    goes to PREWHERE, so the other columns are read only for the granules it keeps; left to itself,
    18.16 moves the time range there instead and reads every hash array of the range twice as slowly.
    ``use_index``: the address filter reads the reverse index instead of the hash arrays."""
    where = ["sent_at >= toDateTime(%(since)s)", "sent_at < toDateTime(%(until)s)"]
    params: dict[str, Any] = {"since": int(f.since_s), "until": int(f.until_s)}
    selective: list[str] = []
    if f.service:
        where.append("service = %(service)s")
        params["service"] = f.service
    if f.campaign:
        where.append("campaign = %(campaign)s")
        params["campaign"] = f.campaign
    if f.address_hashes:
        selective.append(_ADDRESS_IN_INDEX if use_index else _ADDRESS_IN_ARRAYS)
    if f.message_id:
        mid = f.message_id.strip()
        bare = mid.strip("<>")
        selective.append("message_id IN %(mids)s")
        params["mids"] = (bare, f"<{bare}>", mid)
    if f.domain:
        selective.append("(from_domain = %(domain)s OR has(env_domains, %(domain)s) OR has(to_domains, %(domain)s) "
                         "OR has(cc_domains, %(domain)s))")
        params["domain"] = f.domain.strip().lower().lstrip("@")
    params["h_tuple"] = tuple(f.address_hashes) or ("",)
    params["h_list"] = list(f.address_hashes) or [""]
    prewhere = selective[0] if selective else ""
    return prewhere, " AND ".join(where + selective[1:]), params


SEARCH_CAP = 10_000


def search_ids(db: Database, f: SearchFilters, cap: int = SEARCH_CAP) -> pd.DataFrame:
    """Phase 1 of a search: the matching events, newest first, at most ``cap`` (+1 to tell "more").

    Reads only the filter columns plus three narrow ones, so an all-time address search is one pass
    over the hash arrays; the page then fetches full rows for the 50 it shows (``search_rows``).
    Columns: event_id, sent_ms, service.
    """
    use_index = bool(f.address_hashes) and _address_index_ready(db)
    if use_index and not (f.campaign or f.message_id or f.domain):
        return _search_ids_from_index(db, f, cap)
    prewhere, where, params = _search_where(f, use_index)
    params["cap"] = int(cap) + 1
    rows = db.execute(
        f"""
        SELECT event_id, sent_ms, service FROM {{db}}.events
        {'PREWHERE ' + prewhere if prewhere else ''}
        WHERE {where}
        ORDER BY sent_ms DESC, event_id
        LIMIT %(cap)s
        {_SCAN_SETTINGS}
        """,
        params,
    )
    df = _frame(rows, ["event_id", "sent_ms", "service"])
    # A redelivered event not merged yet appears twice; it is one event.
    return df.drop_duplicates("event_id").reset_index(drop=True)


def _search_ids_from_index(db: Database, f: SearchFilters, cap: int) -> pd.DataFrame:
    """``search_ids`` for an address (and optionally a service) from the reverse index alone: it holds
    the event id, time and service of every event the address appears in, so ``events`` is not read."""
    params: dict[str, Any] = {"since": int(f.since_s), "until": int(f.until_s), "cap": int(cap) + 1,
                              "h_tuple": tuple(f.address_hashes)}
    service = ""
    if f.service:
        service = " AND service = %(service)s"
        params["service"] = f.service
    rows = db.execute(
        f"""
        SELECT event_id, max(sent_ms) AS ms, any(service) FROM {{db}}.events_by_address
        WHERE {_INDEX_RANGE}{service}
        GROUP BY event_id
        ORDER BY ms DESC, event_id
        LIMIT %(cap)s
        {_SCAN_SETTINGS}
        """,
        params,
    )
    return _frame(rows, ["event_id", "sent_ms", "service"])


def search_rows(db: Database, page: pd.DataFrame, address_hashes: Sequence[str] = ()) -> pd.DataFrame:
    """Phase 2: full rows for one page of ``search_ids`` output, in its order. ``match`` says where
    the searched address appears (recipient, To, Cc, Bcc, From); an address shown in To/Cc without
    being a recipient was disclosed."""
    if page.empty:
        return pd.DataFrame(columns=SEARCH_COLUMNS)
    # One narrow primary-key range per row (service, second of sent_at): the page's rows may lie days
    # apart, and one range spanning them all would read every granule in between.
    params: dict[str, Any] = {"ids": tuple(_uuid(e) for e in page["event_id"]),
                              "h_tuple": tuple(address_hashes) or ("",), "h_list": list(address_hashes) or [""]}
    ranges = []
    for i, (svc, ms) in enumerate(zip(page["service"], page["sent_ms"])):
        ranges.append(f"(service = %(s{i})s AND sent_at >= toDateTime(%(t{i})s) AND sent_at < toDateTime(%(u{i})s))")
        params.update({f"s{i}": svc, f"t{i}": int(ms) // 1000, f"u{i}": int(ms) // 1000 + 1})
    rows = db.execute(
        f"""
        SELECT event_id, sent_ms, service, campaign, template, message_id, from_masked, to_masked, to_count,
               cc_count, env_count, strangers,
               arrayStringConcat(arrayFilter(x -> x != '', [
                   if(hasAny(env_hashes, %(h_list)s), 'recipient', ''), if(hasAny(to_hashes, %(h_list)s), 'To', ''),
                   if(hasAny(cc_hashes, %(h_list)s), 'Cc', ''), if(hasAny(bcc_hashes, %(h_list)s), 'Bcc', ''),
                   if(from_hash IN %(h_tuple)s, 'From', '')]), ', ') AS matched
        FROM {{db}}.events
        WHERE ({' OR '.join(ranges)}) AND event_id IN %(ids)s
        LIMIT 1 BY event_id
        SETTINGS log_queries = 0
        """,
        params,
    )
    by_id = {}
    for (eid, ms, svc, camp, tmpl, mid, frm, to, to_n, cc_n, env_n, strangers, matched) in rows:
        by_id[str(eid)] = {
            "sent_at": pd.Timestamp(int(ms), unit="ms", tz="UTC"), "service": svc, "campaign": camp,
            "template": tmpl, "message_id": mid, "from": frm, "to": _shorten(to, 3), "to_count": int(to_n),
            "cc_count": int(cc_n), "recipients": int(env_n), "strangers": int(strangers), "match": matched,
            "event_id": str(eid)}
    out = [by_id[str(e)] for e in page["event_id"] if str(e) in by_id]
    return pd.DataFrame(out, columns=SEARCH_COLUMNS)


def search_page(db: Database, f: SearchFilters, page: int = 0, page_size: int = 50,
                cap: int = SEARCH_CAP) -> tuple[pd.DataFrame, int, bool]:
    """One page of results, the number of matches (up to ``cap``) and whether there are more."""
    ids = search_ids(db, f, cap)
    more = len(ids) > cap
    ids = ids.iloc[:cap]
    chunk = ids.iloc[page * page_size:(page + 1) * page_size]
    return search_rows(db, chunk, f.address_hashes), len(ids), more


# --- services (baselines, from the per-minute aggregate) -----------------------------------------------------

def service_minutes(db: Database, since_s: int, until_s: int, service: str | None = None) -> pd.DataFrame:
    """Messages, recipients and leaking copies per service per minute with traffic (quiet minutes absent).

    Columns: service, time, messages, recipients, leaking.
    """
    cond = "AND service = %(service)s" if service else ""
    rows = db.execute(
        f"""
        SELECT service, toUnixTimestamp(minute) AS t, sum(messages), sum(recipients), sum(leaking)
        FROM {{db}}.events_minutely
        WHERE minute >= toDateTime(%(since)s) AND minute < toDateTime(%(until)s) {cond}
        GROUP BY service, t ORDER BY service, t
        """,
        {"since": int(since_s), "until": int(until_s), "service": service or ""},
    )
    df = _frame(rows, ["service", "t", "messages", "recipients", "leaking"])
    df["time"] = pd.to_datetime(df["t"].astype("int64"), unit="s", utc=True)
    return df[["service", "time", "messages", "recipients", "leaking"]]


def recipients_distribution(db: Database, since_s: int, until_s: int) -> pd.DataFrame:
    """Messages per recipients-per-message value (exact to 20, then rounded down: see aggregates.py).

    Columns: service, recipients_per_message, messages.
    """
    rows = db.execute(
        """
        SELECT service, rcpt_bucket, sum(messages) FROM {db}.events_minutely
        WHERE minute >= toDateTime(%(since)s) AND minute < toDateTime(%(until)s)
        GROUP BY service, rcpt_bucket ORDER BY service, rcpt_bucket
        """,
        {"since": int(since_s), "until": int(until_s)},
    )
    return _frame(rows, ["service", "recipients_per_message", "messages"])


def hour_profile(db: Database, since_s: int, until_s: int) -> pd.DataFrame:
    """Messages per hour of day (UTC) per service over the window. Columns: service, hour, messages, days."""
    rows = db.execute(
        """
        SELECT service, toHour(minute) AS h, sum(messages), uniqExact(toDate(minute))
        FROM {db}.events_minutely
        WHERE minute >= toDateTime(%(since)s) AND minute < toDateTime(%(until)s)
        GROUP BY service, h ORDER BY service, h
        """,
        {"since": int(since_s), "until": int(until_s)},
    )
    return _frame(rows, ["service", "hour", "messages", "days"])
