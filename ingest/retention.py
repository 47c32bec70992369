"""Retention without TTL: drop what policy says is expired, and nothing else.

Modern servers expire rows by the tables' ``TTL`` clauses (``ingest/schema.py`` writes them from
``RetentionConfig``). ClickHouse 18.16 has no TTL, so ``mailaudit retention run`` (daily, from cron or
a Kubernetes CronJob) does it by hand:

1. Partitions whose whole time range is older than the cut-off are dropped (``DROP PARTITION``:
   instant, no rewrite). ``events`` is partitioned by day, the other tables by month, and the
   partition id is the date itself (``20260921`` / ``202609``), read from ``system.parts``.
2. Rows older than the cut-off in the one partition that straddles it are removed with
   ``ALTER TABLE ... DELETE`` (a mutation). This is skipped for ``events``: rewriting a day of the
   largest table every day to remove at most 24 hours of rows is not worth it, so events are kept
   until the end of their UTC day (documented: "events_days, rounded up to the whole day").

A row expires when ``time < now - days`` (the same rule as ``TTL time + INTERVAL days DAY``). A
table whose ``days`` is 0 is kept forever. Tables are named here, not discovered, so a new table
gets a retention rule by a deliberate edit; ``audit_log`` is kept forever on purpose (it is the
record of who erased and who acknowledged what, and holds no address).

On a cluster (``cluster``: ``clickhouse.cluster``) the partitions are read from every shard's
``T_local`` (``cluster(NAME, system, parts)``), dropped and trimmed with ``ALTER TABLE T_local ON
CLUSTER`` (``ingest/mutations.py``), and rows are counted through the Distributed ``T``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Callable

from mailaudit.config import RetentionConfig
from mailaudit.ingest.clickhouse import Database, ident
from mailaudit.ingest.mutations import mutation_target, storage_table
from mailaudit.ingest.mutations import wait_mutations as _wait_mutations

_UTC = dt.timezone.utc


@dataclass(frozen=True)
class TableRule:
    table: str
    column: str            # the partition key's time column
    granularity: str       # "day" (toYYYYMMDD) or "month" (toYYYYMM)
    days_field: str        # RetentionConfig field
    partial_delete: bool   # remove expired rows of the straddling partition with ALTER DELETE


RULES: tuple[TableRule, ...] = (
    TableRule("events", "sent_at", "day", "events_days", False),
    TableRule("events_by_address", "sent_at", "day", "events_days", False),   # search index of events
    TableRule("errors", "kafka_ts", "month", "errors_days", True),
    TableRule("alerts", "last_seen", "month", "alerts_days", True),
    TableRule("incidents", "first_seen", "month", "incidents_days", True),
    TableRule("exposures", "sent_at", "month", "incidents_days", True),
    # The dashboard's per-minute counts (no personal data) follow the events they count.
    TableRule("events_minutely", "minute", "month", "events_days", True),
)


@dataclass
class TableResult:
    table: str
    cutoff: dt.datetime | None
    dropped: list[str] = field(default_factory=list)      # partition ids
    dropped_rows: int = 0
    deleted_rows: int = 0                                 # by ALTER DELETE in the straddling partition
    skipped: str = ""                                     # why nothing was done, if so

    def as_dict(self) -> dict:
        return {"table": self.table, "cutoff": self.cutoff.isoformat() if self.cutoff else None,
                "dropped_partitions": self.dropped, "dropped_rows": self.dropped_rows,
                "deleted_rows": self.deleted_rows, "skipped": self.skipped}


def partition_end(partition_id: str, granularity: str) -> dt.datetime | None:
    """The first instant after a partition's range; None for an id that is not a date."""
    try:
        if granularity == "day" and len(partition_id) == 8:
            d = dt.datetime.strptime(partition_id, "%Y%m%d").replace(tzinfo=_UTC)
            return d + dt.timedelta(days=1)
        if granularity == "month" and len(partition_id) == 6:
            y, m = int(partition_id[:4]), int(partition_id[4:])
            return dt.datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=_UTC)
    except ValueError:
        return None
    return None


def cutoff_for(days: int, now: dt.datetime) -> dt.datetime:
    return (now - dt.timedelta(days=int(days))).astimezone(_UTC).replace(microsecond=0)


def _tables(db: Database) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM system.tables WHERE database = %(d)s", {"d": db.name})}


def _partitions(db: Database, table: str, cluster: str | None = None) -> dict[str, int]:
    """partition id -> rows; on a cluster over every shard (one replica each)."""
    source = "cluster(%(c)s, system, parts)" if cluster else "system.parts"
    rows = db.execute(
        f"SELECT partition_id, sum(rows) FROM {source} WHERE database = %(d)s AND table = %(t)s AND active "
        "GROUP BY partition_id",
        {"d": db.name, "t": storage_table(table, cluster), "c": cluster})
    return {r[0]: int(r[1]) for r in rows}


def has_ttl(db: Database, table: str) -> bool:
    sql = db.execute(f"SHOW CREATE TABLE {{db}}.{ident(table)}")[0][0]
    return "TTL " in sql or "\nTTL" in sql


def wait_mutations(db: Database, table: str, timeout_s: float = 300.0, cluster: str | None = None) -> None:
    """Block until the table's mutations are done (18.16 has no ``mutations_sync``)."""
    _wait_mutations(db, table, cluster, timeout_s)


def _naive(value: dt.datetime) -> dt.datetime:
    """UTC wall time without tzinfo: the driver then sends it as is, and the UTC columns compare right."""
    return value.astimezone(_UTC).replace(tzinfo=None) if value.tzinfo else value


def run_retention(db: Database, retention: RetentionConfig, now: dt.datetime | None = None,
                  dry_run: bool = False, force: bool = False, tables: tuple[str, ...] | None = None,
                  progress: Callable[[str], None] | None = None, cluster: str | None = None) -> list[TableResult]:
    """Apply retention to every known table present; ``force`` also acts on tables that have a TTL.
    ``progress(table)`` is called as each table is started (the CLI's progress bar). ``cluster``: the
    ClickHouse cluster whose ``T_local`` tables hold the partitions (None: a single node)."""
    now = now or dt.datetime.now(_UTC)
    present = _tables(db)
    results = []
    for rule in RULES:
        if tables and rule.table not in tables:
            continue
        if rule.table not in present:
            continue
        if progress is not None:
            progress(rule.table)
        days = int(getattr(retention, rule.days_field))
        if days <= 0:
            results.append(TableResult(rule.table, None, skipped=f"{rule.days_field} = 0: kept forever"))
            continue
        cutoff = cutoff_for(days, now)
        res = TableResult(rule.table, cutoff)
        if db.capabilities.ttl and not force and has_ttl(db, storage_table(rule.table, cluster)):
            res.skipped = "TTL on the table does it (use --force to act anyway)"
            results.append(res)
            continue
        parts = _partitions(db, rule.table, cluster)
        straddling = []
        for pid, rows in sorted(parts.items()):
            end = partition_end(pid, rule.granularity)
            if end is None:
                continue
            if end <= cutoff:
                res.dropped.append(pid)
                res.dropped_rows += rows
                if not dry_run:
                    # The id is a date read back from system.parts and checked by partition_end;
                    # still, it goes through parameter substitution like every value.
                    db.execute(f"ALTER TABLE {mutation_target(rule.table, cluster)} DROP PARTITION ID %(p)s",
                               {"p": pid})
            elif end - _span(rule.granularity, pid) < cutoff:
                straddling.append(pid)
        if rule.partial_delete and straddling:
            col = ident(rule.column)
            start = min(partition_end(p, rule.granularity) - _span(rule.granularity, p) for p in straddling)
            where = f"toDateTime({col}) >= %(start)s AND toDateTime({col}) < %(cutoff)s"
            params = {"start": _naive(start), "cutoff": _naive(cutoff)}
            n = db.execute(f"SELECT count() FROM {{db}}.{ident(rule.table)} WHERE {where}", params)[0][0]
            res.deleted_rows = int(n)
            if n and not dry_run:
                db.execute(f"ALTER TABLE {mutation_target(rule.table, cluster)} DELETE WHERE {where}", params)
                wait_mutations(db, rule.table, cluster=cluster)
        results.append(res)
    return results


def _span(granularity: str, pid: str) -> dt.timedelta:
    """Length of the partition (start = end - span)."""
    if granularity == "day":
        return dt.timedelta(days=1)
    end = partition_end(pid, "month")
    start = dt.datetime(int(pid[:4]), int(pid[4:]), 1, tzinfo=_UTC)
    return end - start
