"""`mailaudit exposure INCIDENT_ID`: who was exposed to whom, as CSV or JSON."""

from __future__ import annotations

import csv
import json
import sys
import uuid

from mailaudit.cli import UserError

HELP = "exposure report of an incident: each exposed address (hashed + masked), copies, recipients, first/last"


def configure(p):
    p.add_argument("incident_id")
    p.add_argument("--format", choices=["csv", "json"], default="csv")
    p.add_argument("--resolve", metavar="USERS.csv",
                   help="CSV of your users' addresses: matched by keyed hash (same key) to show real addresses")


def run(args, cfg) -> int:
    from mailaudit.detect.report import COLUMNS, exposure_report, read_addresses, resolve
    from mailaudit.ingest.clickhouse import Database
    from mailaudit.ingest.keys import KeyRing

    try:
        uuid.UUID(args.incident_id)
    except ValueError:
        raise UserError(f"not an incident id (a UUID): {args.incident_id!r}") from None
    rows = exposure_report(Database(cfg.clickhouse), args.incident_id)
    columns = list(COLUMNS)
    if args.resolve:
        try:
            # Every key of the ring: during a key rotation, older copies were hashed with the old key.
            matched = resolve(rows, read_addresses(args.resolve), KeyRing.from_config(cfg.privacy).hashers)
        except OSError as e:
            raise UserError(f"cannot read {args.resolve}: {e.strerror}") from None
        columns.insert(0, "address")
        print(f"resolved {matched} of {len(rows)} exposed addresses", file=sys.stderr)
    if args.format == "json":
        print(json.dumps({"incident_id": args.incident_id, "exposed": len(rows), "addresses": rows}, indent=2))
    else:
        w = csv.DictWriter(sys.stdout, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    if not rows:
        print(f"no exposure recorded for incident {args.incident_id}", file=sys.stderr)
    return 0
