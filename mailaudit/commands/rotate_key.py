"""`mailaudit rotate-key new | status | retire KEY_ID`: the address-hashing key rotation procedure.

1. ``new`` generates the next key and writes two secret files (mode 0600): the new key, and the
   old-keys list (the current key plus any older ones still in the ring). It prints which settings to
   point every mailaudit process at; it never prints a secret.
2. Restart the processes with those settings: new rows are hashed with the new key (``key_id``
   column), while ``forget`` and address searches try every key in the ring (``ingest/keys.py``).
3. ``status`` shows the rows per key id and when the old ones expire under the retention policy.
4. ``retire KEY_ID`` removes an old key from the old-keys file, but only once no row hashed with it
   remains (retention has removed them); then restart the processes once more.

Each step that changes the ring is recorded in ``audit_log`` (key ids only).
"""

from __future__ import annotations

from mailaudit.commands import guarded_clickhouse

import datetime as dt
import json
import os
import re
import secrets
from pathlib import Path

HELP = "rotate the address-hashing key: new key, overlap status, retire an old key once no row uses it"

# (table, time column, RetentionConfig field): the tables that store key_id.
KEYED_TABLES = (("events", "sent_at", "events_days"), ("exposures", "sent_at", "incidents_days"))


def configure(p):
    p.add_argument("action", choices=["new", "status", "retire"])
    p.add_argument("key_id", nargs="?", help="retire: the old key id; new: the new key id (default: next)")
    p.add_argument("--dir", default=None, help="where the key files go (default STATE_DIR/keys)")
    p.add_argument("--actor", default=None, help="recorded in the audit log (default cli:$USER)")
    p.add_argument("--json", action="store_true", help="status as JSON")


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    os.replace(tmp, path)


def next_key_id(current: str, taken: list[str]) -> str:
    m = re.fullmatch(r"(.*?)(\d+)", current)
    prefix, n = (m.group(1), int(m.group(2))) if m else (current + "-", 1)
    while True:
        n += 1
        cand = f"{prefix}{n}"
        if cand not in taken:
            return cand


def key_usage(db, retention) -> dict[str, dict]:
    """key id -> {table: {rows, oldest, newest, expires}} from the tables that carry key_id."""
    out: dict[str, dict] = {}
    for table, col, days_field in KEYED_TABLES:
        days = int(getattr(retention, days_field))
        rows = db.execute(f"SELECT key_id, count(), toDateTime(min({col})), toDateTime(max({col})) "
                          f"FROM {{db}}.{table} GROUP BY key_id ORDER BY key_id")
        for key_id, n, oldest, newest in rows:
            newest = newest.replace(tzinfo=dt.timezone.utc) if newest.tzinfo is None else newest
            oldest = oldest.replace(tzinfo=dt.timezone.utc) if oldest.tzinfo is None else oldest
            out.setdefault(key_id, {})[table] = {
                "rows": int(n), "oldest": oldest.isoformat(), "newest": newest.isoformat(),
                "expires": (newest + dt.timedelta(days=days)).isoformat() if days > 0 else None}
    return out


def _audit(cfg, args, action_detail: dict) -> None:
    from mailaudit.ingest.clickhouse import Database
    from mailaudit.ingest.erasure import default_actor, record_audit

    db = Database(cfg.clickhouse)
    try:
        record_audit(db, args.actor or default_actor(), "rotate-key", action_detail.get("key_id", ""), action_detail)
    finally:
        db.disconnect()


def run(args, cfg) -> int:
    return _guarded(_run, args, cfg)


def _run(args, cfg) -> int:
    from mailaudit.cli import UserError
    from mailaudit.config import ConfigError
    from mailaudit.ingest.keys import KeyRing, check_key_id, format_old_keys, parse_old_keys

    ring = KeyRing.from_config(cfg.privacy)
    key_dir = Path(args.dir or Path(cfg.state_dir) / "keys").absolute()
    old = parse_old_keys(cfg.privacy.old_hash_keys)

    if args.action == "new":
        new_id = check_key_id(args.key_id) if args.key_id else next_key_id(ring.current.key_id, ring.ids)
        if new_id in ring.ids:
            raise UserError(f"key id {new_id} is already in the ring ({', '.join(ring.ids)})")
        new_old = [(ring.current.key_id, cfg.privacy.hash_key)] + old
        try:
            old_text = format_old_keys(new_old)
        except ConfigError as e:
            raise UserError(str(e)) from None
        key_file, old_file = key_dir / f"hash_key.{new_id}", key_dir / "old_hash_keys"
        _write_secret(key_file, secrets.token_hex(32))
        _write_secret(old_file, old_text)
        _audit(cfg, args, {"step": "new", "key_id": new_id, "old_key_ids": [k for k, _ in new_old]})
        print(f"new hash key {new_id} written to {key_file} (0600); old keys "
              f"({', '.join(k for k, _ in new_old)}) to {old_file}\n"
              "Next, on every mailaudit process (consume, detect, dashboard, forget, exposure):\n"
              f"  MAILAUDIT_HASH_KEY_FILE={key_file}\n"
              f"  MAILAUDIT_HASH_KEY_ID={new_id}\n"
              f"  MAILAUDIT_OLD_HASH_KEYS_FILE={old_file}\n"
              "  (and unset MAILAUDIT_HASH_KEY / MAILAUDIT_OLD_HASH_KEYS, or the TOML values)\n"
              "then restart them. New rows get key_id " + new_id + "; forget and searches try every key.\n"
              "`mailaudit rotate-key status` shows when the old rows expire; then "
              f"`mailaudit rotate-key retire {ring.current.key_id}`.")
        return 0

    from mailaudit.ingest.clickhouse import Database

    db = Database(cfg.clickhouse)
    try:
        usage = key_usage(db, cfg.retention)
    finally:
        db.disconnect()

    if args.action == "status":
        doc = {"current": ring.current.key_id, "old": ring.old_ids, "rows": usage,
               "unknown": sorted(k for k in usage if k not in ring.ids)}
        if args.json:
            print(json.dumps(doc, sort_keys=True))
            return 0
        print(f"current key: {ring.current.key_id}; old keys in the ring: {', '.join(ring.old_ids) or 'none'}")
        for key_id, tables in sorted(usage.items()):
            note = "" if key_id in ring.ids else "  (NOT IN THE RING: rows no search can match)"
            for table, u in tables.items():
                print(f"  {key_id} {table}: {u['rows']} rows, {u['oldest'][:10]} .. {u['newest'][:10]}, "
                      f"expire by {u['expires'][:10] if u['expires'] else 'never (kept forever)'}{note}")
        return 0

    # retire
    if not args.key_id:
        raise UserError("retire needs the KEY_ID of an old key")
    if args.key_id == ring.current.key_id:
        raise UserError(f"{args.key_id} is the current key; rotate to a new key first")
    if args.key_id not in ring.old_ids:
        raise UserError(f"{args.key_id} is not an old key in the ring ({', '.join(ring.old_ids) or 'none'})")
    left = usage.get(args.key_id, {})
    if left:
        where = "; ".join(f"{t}: {u['rows']} rows, newest {u['newest'][:10]}, expire by "
                          f"{u['expires'][:10] if u['expires'] else 'never'}" for t, u in left.items())
        print(f"not retiring {args.key_id}: rows hashed with it remain ({where}). "
              "Retire it after retention has removed them (mailaudit retention run / TTL).")
        return 1
    old_file = key_dir / "old_hash_keys"
    _write_secret(old_file, format_old_keys([(k, s) for k, s in old if k != args.key_id]))
    _audit(cfg, args, {"step": "retire", "key_id": args.key_id})
    print(f"{args.key_id} retired: no row uses it. {old_file} rewritten without it; point "
          f"MAILAUDIT_OLD_HASH_KEYS_FILE at it and restart the processes, then destroy every copy of the old secret.")
    return 0


_guarded = guarded_clickhouse

