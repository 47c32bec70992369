"""`mailaudit retention run`: delete expired data on servers without TTL (ClickHouse 18.16).

Run it daily (cron, Kubernetes CronJob). On modern servers the tables' TTL does the work and this
command only reports, unless ``--force``. See ingest/retention.py for the rule and docs/security.md
for the defaults.
"""

from __future__ import annotations

from mailaudit.commands import guarded_clickhouse

import json

HELP = "apply the retention policy: drop expired partitions, delete expired rows (servers without TTL)"


def configure(p):
    p.add_argument("action", choices=["run"])
    p.add_argument("--dry-run", action="store_true", help="report what would go; change nothing")
    p.add_argument("--force", action="store_true", help="act even on tables that have a TTL")
    p.add_argument("--table", action="append", default=None, help="only this table (repeatable)")
    p.add_argument("--actor", default=None, help="recorded in the audit log (default cli:$USER)")
    p.add_argument("--json", action="store_true", help="machine-readable result")


def run(args, cfg) -> int:
    return _guarded(_run, args, cfg)


def _run(args, cfg) -> int:
    from mailaudit.ingest.clickhouse import Database
    from mailaudit.ingest.erasure import default_actor, record_audit
    from mailaudit.ingest.retention import run_retention

    from mailaudit.progress import bar

    db = Database(cfg.clickhouse)
    b = bar(None, "retention", unit="table")     # on a terminal only: the tables as they are worked on
    try:
        results = run_retention(db, cfg.retention, dry_run=args.dry_run, force=args.force,
                                tables=tuple(args.table) if args.table else None,
                                progress=lambda t: (b.set_postfix_str(t), b.update(1)),
                                cluster=cfg.clickhouse.cluster)
        b.close()
        changed = [r for r in results if r.dropped or r.deleted_rows]
        if changed and not args.dry_run:
            record_audit(db, args.actor or default_actor(), "retention", "", {
                r.table: {"dropped_partitions": len(r.dropped), "rows": r.dropped_rows + r.deleted_rows}
                for r in changed})
    finally:
        db.disconnect()
    if args.json:
        print(json.dumps([r.as_dict() for r in results], sort_keys=True))
        return 0
    verb = "would drop" if args.dry_run else "dropped"
    for r in results:
        if r.skipped:
            print(f"{r.table}: {r.skipped}")
            continue
        print(f"{r.table}: cut-off {r.cutoff:%Y-%m-%d %H:%M:%S}Z; {verb} {len(r.dropped)} partition(s) "
              f"({r.dropped_rows} rows), {'would delete' if args.dry_run else 'deleted'} {r.deleted_rows} row(s)")
    return 0


_guarded = guarded_clickhouse

