"""`mailaudit forget ADDRESS... | --file F`: erase people from the audit log (data-subject requests).

Addresses are read from the command line or a file (one per line, ``-`` for stdin; a file keeps them
out of the shell history and the process list). Nothing identifying the person is printed or logged:
the output is counts per table. See ingest/erasure.py and docs/security.md.
"""

from __future__ import annotations

from mailaudit.commands import guarded_clickhouse

import json
import sys

HELP = "erase addresses from every table (anonymise or delete), with an audit record"


def configure(p):
    p.add_argument("addresses", nargs="*", metavar="ADDRESS")
    p.add_argument("--file", help="file with one address per line ('-' = stdin)")
    p.add_argument("--mode", choices=["anonymise", "delete"], default="anonymise",
                   help="anonymise event rows (default; counts stay true) or delete them")
    p.add_argument("--erase-domains", action="store_true", help="also blank the person's domain next to their hash")
    p.add_argument("--reason", default="", help="request reference recorded in the audit log (e.g. a ticket id)")
    p.add_argument("--actor", default=None, help="who runs it (audit log; default cli:$USER)")
    p.add_argument("--dry-run", action="store_true", help="count the rows that would change; change nothing")
    p.add_argument("--no-verify", action="store_true", help="skip the final scan of every column for traces")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each table's mutation")
    p.add_argument("--json", action="store_true", help="machine-readable result")


def _read(args) -> list[str]:
    from mailaudit.cli import UserError

    addrs = list(args.addresses)
    if args.file:
        try:
            text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
        except OSError as e:
            raise UserError(f"cannot read {args.file}: {e.strerror}") from None
        addrs += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not addrs:
        raise UserError("give at least one ADDRESS or --file")
    return addrs


def run(args, cfg) -> int:
    return _guarded(_run, args, cfg)


def _run(args, cfg) -> int:
    from mailaudit.cli import UserError
    from mailaudit.ingest.clickhouse import Database
    from mailaudit.ingest.erasure import forget, looks_like_address
    from mailaudit.ingest.keys import KeyRing

    addrs = _read(args)
    bad = sum(1 for a in addrs if not looks_like_address(a))
    if bad:
        # Never echo the value: it may be an address with a typo, still personal data.
        raise UserError(f"{bad} of {len(addrs)} input line(s) do not look like an address (local@domain)")
    ring = KeyRing.from_config(cfg.privacy)
    db = Database(cfg.clickhouse)
    from mailaudit.progress import bar

    b = bar(None, "forget", unit="table")        # on a terminal only: the tables as they are worked on
    try:
        res = forget(db, ring, addrs, actor=args.actor, reason=args.reason, mode=args.mode,
                     erase_domains=args.erase_domains, verify=not args.no_verify, dry_run=args.dry_run,
                     timeout_s=args.timeout, progress=lambda t: (b.set_postfix_str(t), b.update(1)),
                     cluster=cfg.clickhouse.cluster)
    except TimeoutError as e:
        raise UserError(str(e)) from None
    finally:
        b.close()
        db.disconnect()
    if args.json:
        print(json.dumps(res.as_dict(), sort_keys=True))
    else:
        verb = "would change" if args.dry_run else ("changed" if args.mode == "anonymise" else "changed/deleted")
        print(f"forget: {res.addresses} address(es), keys {', '.join(res.key_ids)}, mode {res.mode}")
        for table, n in res.rows.items():
            print(f"  {table}: {n} row(s) {verb}")
        if not args.dry_run and not args.no_verify:
            print("  verified: no trace left" if res.verified else
                  f"  TRACES LEFT in {', '.join(f'{k} ({v})' for k, v in res.traces.items())}")
    return 0 if (args.dry_run or args.no_verify or res.verified) else 1


_guarded = guarded_clickhouse

