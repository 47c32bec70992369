"""`mailaudit migrate`: create the Kafka topics and apply the ClickHouse schema (idempotent, versioned)."""

from __future__ import annotations

from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.schema import MIGRATIONS, migrate
from mailaudit.ingest.topics import create_topics

HELP = "create the Kafka topics and the ClickHouse schema (idempotent, versioned)"


def configure(p):
    p.add_argument("--skip-kafka", action="store_true", help="only the ClickHouse schema")
    p.add_argument("--skip-clickhouse", action="store_true", help="only the Kafka topics")
    p.add_argument("--cluster", metavar="NAME", default=None,
                   help="create the schema on the ClickHouse cluster NAME (remote_servers): Replicated local "
                        "tables + Distributed tables, ON CLUSTER (default: clickhouse.cluster; see docs/operations.md)")
    p.add_argument("--print-grants", action="store_true",
                   help="print the ClickHouse users/grants and Kafka ACLs per role (changes nothing)")


def run(args, cfg) -> int:
    if args.print_grants:
        from mailaudit.ingest.grants import print_grants

        print(print_grants(cfg, cfg.clickhouse.parts()["database"]), end="")
        return 0
    if not args.skip_kafka:
        created = create_topics(cfg.kafka)
        print(f"kafka: {len(created)} topic(s) created" + (f": {', '.join(created)}" if created else " (all present)"))
    if not args.skip_clickhouse:
        db = Database(cfg.clickhouse)
        cluster = args.cluster or cfg.clickhouse.cluster
        if cluster:
            from mailaudit.ingest.cluster import migrate_cluster

            applied = migrate_cluster(db, cluster, cfg.retention)
        else:
            applied = migrate(db, cfg.retention)
        caps = db.capabilities
        print(f"clickhouse {'.'.join(map(str, caps.version))} database {db.name}: "
              f"{'applied ' + ', '.join(map(str, applied)) if applied else 'up to date'} "
              f"(schema v{MIGRATIONS[-1].version}; modern features {'on' if caps.modern else 'off'})")
    return 0
