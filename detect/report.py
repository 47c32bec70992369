"""The exposure report of one incident, from the ``exposures`` table: what the team needs on day one.

Per exposed address (keyed hash + masked + domain): how many leaking copies showed it, to how many
recipients (deliveries to envelope recipients other than the address itself), first and last time.
Real addresses appear only when the operator supplies a list of them (``--resolve users.csv``) and
the same hash key: each listed address is hashed and matched, nothing is ever un-hashed.
"""

from __future__ import annotations

import csv
import json
import uuid
from pathlib import Path
from typing import Iterable

from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.privacy import AddressHasher
from mailaudit.ingest.wire import format_time

EXPOSURE_SQL = """
SELECT h, any(m) AS masked, any(d) AS domain, count() AS copies, sum(rc - has(rh, h)) AS seen_by,
       min(ms) AS first_ms, max(ms) AS last_ms
FROM (
    SELECT event_id, any(exposed_hashes) AS eh, any(exposed_masked) AS em, any(exposed_domains) AS ed,
           any(recipient_hashes) AS rh, any(recipient_count) AS rc, any(sent_ms) AS ms
    FROM {db}.exposures
    WHERE incident_id = %(incident)s
    GROUP BY event_id
)
ARRAY JOIN eh AS h, em AS m, ed AS d
GROUP BY h
ORDER BY copies DESC, seen_by DESC, masked, h
"""

COLUMNS = ("address_hash", "address_masked", "domain", "copies", "seen_by", "first_seen", "last_seen", "side")

# The sending organisation's own addresses an incident showed (detect/org.py): the engine quotes their
# keyed hashes in the alerts' evidence (`org_hashes`), so the report can say which side each is on.
ORG_HASHES_SQL = "SELECT evidence FROM {db}.alerts WHERE incident_id = %(incident)s"


def exposure_report(db: Database, incident_id: str) -> list[dict]:
    rows = db.execute(EXPOSURE_SQL, {"incident": uuid.UUID(incident_id)})
    org = org_hashes(r[0] for r in db.execute(ORG_HASHES_SQL, {"incident": uuid.UUID(incident_id)}))
    out = [
        {"address_hash": h, "address_masked": m, "domain": d, "copies": int(c), "seen_by": int(s),
         "first_seen": format_time(int(f)), "last_seen": format_time(int(last)),
         "side": "org" if h in org else "external"}
        for h, m, d, c, s, f, last in rows
    ]
    # People first (they are who may need telling), then the organisation's own addresses.
    return sorted(out, key=lambda r: r["side"] == "org")


def org_hashes(evidences: Iterable[str]) -> set[str]:
    """Union of the ``org_hashes`` quoted in an incident's alert evidence (JSON strings)."""
    out: set[str] = set()
    for text in evidences:
        try:
            ev = json.loads(text or "{}")
        except ValueError:
            continue
        hs = ev.get("org_hashes") if isinstance(ev, dict) else None
        if isinstance(hs, list):
            out.update(h for h in hs if isinstance(h, str))
    return out


def read_addresses(path: str | Path) -> Iterable[str]:
    """Addresses from a CSV: the ``email``/``address`` column if there is a header, else column one."""
    with open(path, newline="", encoding="utf-8") as f:
        sample = f.read(4096)
        f.seek(0)
        has_header = "@" not in sample.splitlines()[0] if sample else False
        if has_header:
            reader = csv.DictReader(f)
            col = next((c for c in reader.fieldnames or [] if c.lower() in ("email", "address", "mail")), None)
            if col is None:
                col = (reader.fieldnames or [""])[0]
            for row in reader:
                if row.get(col):
                    yield row[col].strip()
        else:
            for row in csv.reader(f):
                if row and row[0].strip():
                    yield row[0].strip()


def resolve(rows: list[dict], addresses: Iterable[str], hashers: list[AddressHasher]) -> int:
    """Fill ``address`` in rows whose hash matches a supplied address; returns how many matched."""
    wanted = {r["address_hash"] for r in rows}
    found: dict[str, str] = {}
    for a in addresses:
        norm = a.strip().lower()
        for hasher in hashers:
            for h in hasher.hash_versions(norm):      # every address-normalisation version (issue 14)
                if h in wanted:
                    found[h] = norm
    for r in rows:
        r["address"] = found.get(r["address_hash"], "")
    return len(found)
