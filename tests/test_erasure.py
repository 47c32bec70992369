"""`forget` on both server generations: 18.16 (ALTER UPDATE/DELETE mutations) and modern (chdb 26.x,
lightweight DELETE). The proof of "no trace" is a scan of every string column of every table
(read from system.columns) for the person's hashes under every key, raw address and masked form."""

from __future__ import annotations

import json
import secrets
import time
import uuid

import pytest

from chdb_support import chdb_database
from helpers import BASE_MS, make_event
from mailaudit.config import PrivacyConfig
from mailaudit.detect.sinks import alert_columns, exposure_columns, incident_columns
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.dlq import Rejected, error_columns
from mailaudit.ingest.erasure import ERASED, TOMBSTONE_PREFIX, find_traces, forget, text_pattern
from mailaudit.ingest.keys import KeyRing
from mailaudit.ingest.parsed import parse_event
from mailaudit.ingest.privacy import AddressHasher, mask_address
from mailaudit.ingest.rows import EventRows
from mailaudit.ingest.schema import migrate
from mailaudit.ingest.wire import format_time

TARGET = "Zed.Target@Victim-Domain.test"           # mixed case on purpose: stored lower-cased
TARGET_N = TARGET.lower()
NEIGHBOUR = "zara@victim-domain.test"               # same mask as TARGET: must survive
OTHERS = ["olga@example.com", "omar@example.org", "otto@example.net"]
LONGER = "zed.target@victim-domain.test.evil"       # TARGET is a prefix of it: must survive


def _ring(old: bool = True) -> tuple[KeyRing, PrivacyConfig]:
    p = PrivacyConfig(hash_key=secrets.token_hex(16), hash_key_id="k2",
                      old_hash_keys=f"k1:{secrets.token_hex(16)}" if old else None,
                      store_subject=True, extra_fields=["customer"])
    return KeyRing.from_config(p), p


def _insert_events(db: Database, privacy: PrivacyConfig, hasher: AddressHasher, events) -> None:
    rows = EventRows(privacy, hasher)
    for e in events:
        rows.add(parse_event(e))
    db.insert("events", rows.columns())


def populate(db: Database, ring: KeyRing, privacy: PrivacyConfig, neighbour: bool = False) -> dict:
    """Every place the person can be: sender, To, Cc, Bcc header, envelope, subject, extra field,
    under the current and an old key; exposures; alert evidence; an incident; a DLQ error row."""
    cur, old = ring.hashers[0], ring.hashers[1]
    o1, o2, o3 = OTHERS
    nb = NEIGHBOUR if neighbour else "nina@example.com"
    events_now = [
        make_event(1, to=f"Zed <{TARGET}>, Olga <{o1}>, {nb}", envelope=[TARGET, o1, nb]),
        make_event(2, to=o2, cc=f"{TARGET}", envelope=[o2], subject=f"Invoice for {TARGET} (copy)",
                   extra={"customer": TARGET}),
        make_event(3, to=o3, envelope=[o3], subject=f"Re: {LONGER}"),
        make_event(4, from_=f"Zed Target <{TARGET}>", to=o1, envelope=[o1]),
        make_event(5, to=o2, bcc=f"{TARGET}, {o3}", envelope=[o2, TARGET, o3]),
    ]
    _insert_events(db, privacy, cur, events_now)
    old_privacy = PrivacyConfig(hash_key="unused", hash_key_id="k1", store_subject=True, extra_fields=["customer"])
    _insert_events(db, old_privacy, old, [make_event(6, to=f"{TARGET}, {o2}", envelope=[TARGET, o2],
                                                     sent_at_ms=BASE_MS - 86_400_000)])
    incident = str(uuid.uuid4())
    sample = [mask_address(TARGET), mask_address(o1), mask_address(nb)]
    alert = {"v": 1, "alert_id": str(uuid.uuid4()), "incident_id": incident, "status": "open",
             "kind": "visible_disclosure", "severity": "critical", "service": "billing", "campaign": None,
             "template": None, "trigger_event_id": str(uuid.UUID(int=(0xABCDEF << 96) + 1)),
             "first_seen": format_time(BASE_MS), "last_seen": format_time(BASE_MS + 10),
             "copies": 1, "exposed": 3, "detected_at": format_time(BASE_MS + 20),
             "summary": "billing: a copy shows 2 addresses to recipients who are not on it.",
             "evidence": {"strangers": 2, "sample": sample}}
    db.insert("alerts", alert_columns([alert]))
    db.insert("incidents", incident_columns([alert]))
    db.insert("exposures", exposure_columns([{
        "incident_id": incident, "event_id": alert["trigger_event_id"], "sent_ms": BASE_MS, "service": "billing",
        "campaign": "", "key_id": "k2",
        "exposed_hashes": [cur.hash(TARGET), cur.hash(o1), cur.hash(nb)],
        "exposed_masked": sample,
        "exposed_domains": ["victim-domain.test", "example.com", nb.rpartition("@")[2]],
        "recipient_hashes": [cur.hash(o2), cur.hash(TARGET)]}]))
    # A recent Kafka timestamp: on modern servers the errors table's 30-day TTL would drop an old one.
    db.insert("errors", error_columns([Rejected("mail.headers", 0, 7, int(time.time() * 1000), b"billing",
                                                f'{{"to": "{TARGET}", "oops'.encode(), "invalid_json",
                                                f"bad JSON near {TARGET}")]))
    return {"alert": alert}


def traces(db, ring: KeyRing) -> dict[str, int]:
    """Every column of every table: the person's hashes (all keys), address and masked form."""
    return find_traces(db, ring.all_hashes(TARGET), [TARGET])


def needles(ring: KeyRing) -> list[str]:
    return ring.all_hashes(TARGET) + [TARGET_N, mask_address(TARGET)]


_OPEN: list[Database] = []


def _db_18(make_cfg) -> Database:
    db = Database(make_cfg().clickhouse)
    migrate(db)
    _OPEN.append(db)
    return db


@pytest.fixture(autouse=True)
def _disconnect():
    """An idle connection left open makes the server's shutdown at the end of the session wait."""
    yield
    while _OPEN:
        _OPEN.pop().disconnect()


@pytest.fixture(params=["18.16", "modern"])
def any_db(request):
    if request.param == "18.16":
        db = _db_18(request.getfixturevalue("make_cfg"))
        assert db.capabilities.version[:2] == (18, 16)
    else:
        db = chdb_database(f"f_{uuid.uuid4().hex[:8]}")
        db.client.execute(f"CREATE DATABASE IF NOT EXISTS {db.name}")
        migrate(db)
        assert db.capabilities.lightweight_delete
    yield db
    db.disconnect()


def _count(db, sql, params=None):
    return db.execute(sql, params)[0][0]


def test_forget_leaves_no_trace_in_any_column_of_any_table(any_db):
    db = any_db
    ring, privacy = _ring()
    populate(db, ring, privacy)
    before = traces(db, ring)
    # The scan itself finds the person everywhere they were put (so an empty result later means something).
    for where in ("events.from_hash", "events.to_hashes", "events.cc_hashes", "events.bcc_hashes",
                  "events.env_hashes", "events.to_masked", "events.subject", "events.extra",
                  "exposures.exposed_hashes", "exposures.recipient_hashes", "exposures.exposed_masked",
                  "alerts.evidence", "alerts.body", "errors.excerpt", "errors.detail"):
        assert where in before, where
    events_before = _count(db, "SELECT count() FROM {db}.events")
    o1 = ring.current.hash(OTHERS[0])
    o1_before = _count(db, "SELECT count() FROM {db}.events WHERE has(to_hashes, %(h)s) OR has(env_hashes, %(h)s)",
                       {"h": o1})

    res = forget(db, ring, [TARGET], actor="test:dpo", reason="DSR-42")

    assert res.verified and res.traces == {}
    assert traces(db, ring) == {}
    assert res.rows["events"] == 5 and res.rows["exposures"] == 1 and res.rows["alerts"] == 1
    # Anonymised, not deleted: counts and other people intact.
    assert _count(db, "SELECT count() FROM {db}.events") == events_before
    assert _count(db, "SELECT count() FROM {db}.events WHERE has(to_hashes, %(h)s) OR has(env_hashes, %(h)s)",
                  {"h": o1}) == o1_before
    row = db.execute("SELECT to_hashes, to_masked, to_domains, to_count FROM {db}.events WHERE sent_ms = %(ms)s",
                     {"ms": BASE_MS + 10})[0]
    assert row[0][0].startswith(TOMBSTONE_PREFIX) and row[0][1] == o1
    assert row[1] == [ERASED, mask_address(OTHERS[0]), "n***@example.com"]
    assert row[2][0] == "victim-domain.test" and row[3] == 3
    # One person -> one tombstone per key: distinct counts stay right.
    tombs = {t for (arr,) in db.execute("SELECT arrayConcat(to_hashes, cc_hashes, bcc_hashes, env_hashes) "
                                        "FROM {db}.events WHERE key_id = 'k2'") for t in arr
             if t.startswith(TOMBSTONE_PREFIX)}
    assert len(tombs) == 1
    # The longer address that merely starts with the target's is someone else: untouched.
    assert _count(db, "SELECT count() FROM {db}.events WHERE position(subject, %(s)s) > 0", {"s": LONGER}) == 1
    subj = db.execute("SELECT subject, extra FROM {db}.events WHERE sent_ms = %(ms)s", {"ms": BASE_MS + 20})[0]
    assert subj[0] == f"Invoice for {ERASED} (copy)" and json.loads(subj[1]) == {"customer": ERASED}
    ev = json.loads(db.execute("SELECT evidence FROM {db}.alerts")[0][0])
    assert ev["sample"][0] == ERASED and ev["sample"][1] == mask_address(OTHERS[0])
    json.loads(db.execute("SELECT body FROM {db}.alerts")[0][0])          # still valid JSON
    # The audit record: who, what, how many; nothing about the person (the trace scan covered it too).
    (actor, action, target, detail), = db.execute("SELECT actor, action, target, detail FROM {db}.audit_log")
    assert (actor, action, target) == ("test:dpo", "forget", "DSR-42")
    d = json.loads(detail)
    assert d["addresses"] == 1 and d["rows"]["events"] == 5 and d["key_ids"] == ["k2", "k1"]
    # The mutation commands the server keeps hold no hash, address, mask or pattern: only the work table.
    cmds = " ".join(r[0] for r in db.execute("SELECT command FROM system.mutations WHERE database = %(d)s",
                                              {"d": db.name}))
    assert "forget_work_" in cmds
    for n in needles(ring):
        assert n.lower() not in cmds.lower()
    assert not [r for r in db.execute("SELECT name FROM system.tables WHERE database = %(d)s", {"d": db.name})
                if r[0].startswith("forget_work_")]


@pytest.mark.servers
def test_someone_sharing_the_mask_keeps_their_array_entries(make_cfg):
    """Positional erasure: the neighbour's identical mask next to the person stays in the arrays;
    in free text (alert samples) a mask cannot be attributed, so every occurrence goes."""
    db = _db_18(make_cfg)
    ring, privacy = _ring()
    populate(db, ring, privacy, neighbour=True)
    res = forget(db, ring, [TARGET])
    assert res.verified
    assert find_traces(db, ring.all_hashes(TARGET), [TARGET], masks=False) == {}
    row = db.execute("SELECT to_hashes, to_masked FROM {db}.events WHERE sent_ms = %(ms)s", {"ms": BASE_MS + 10})[0]
    assert row[0][2] == ring.current.hash(NEIGHBOUR) and row[1] == [ERASED, mask_address(OTHERS[0]), "z***@victim-domain.test"]
    exp = db.execute("SELECT exposed_hashes, exposed_masked FROM {db}.exposures")[0]
    assert exp[0][2] == ring.current.hash(NEIGHBOUR) and exp[1][2] == "z***@victim-domain.test"
    assert json.loads(db.execute("SELECT evidence FROM {db}.alerts")[0][0])["sample"] == [ERASED, "o***@example.com", ERASED]


def test_forget_delete_mode_removes_exactly_the_rows_holding_the_hash(any_db):
    db = any_db
    ring, privacy = _ring()
    populate(db, ring, privacy)
    hs = ring.all_hashes(TARGET)
    holding = _count(db, "SELECT count() FROM {db}.events WHERE has(%(h)s, from_hash) OR hasAny(to_hashes, %(h)s) "
                         "OR hasAny(cc_hashes, %(h)s) OR hasAny(bcc_hashes, %(h)s) OR hasAny(env_hashes, %(h)s)",
                     {"h": hs})
    total = _count(db, "SELECT count() FROM {db}.events")
    assert holding == 5

    res = forget(db, ring, [TARGET], mode="delete")

    assert res.verified, res.traces
    assert _count(db, "SELECT count() FROM {db}.events") == total - holding
    assert traces(db, ring) == {}
    # Exposure rows are about the incident, not the person: anonymised, kept.
    assert _count(db, "SELECT count() FROM {db}.exposures") == 1


@pytest.mark.servers
def test_forget_dry_run_changes_nothing_and_records_nothing(make_cfg):
    db = _db_18(make_cfg)
    ring, privacy = _ring(old=False)
    populate_ring = KeyRing.from_config(PrivacyConfig(hash_key=privacy.hash_key, hash_key_id="k2",
                                                      old_hash_keys=f"k1:{secrets.token_hex(8)}"))
    populate(db, populate_ring, privacy)
    before = traces(db, populate_ring)
    res = forget(db, populate_ring, [TARGET], dry_run=True)
    assert res.rows["events"] == 5 and not res.verified
    assert traces(db, populate_ring) == before
    assert _count(db, "SELECT count() FROM {db}.audit_log") == 0


def test_text_pattern_matches_whole_addresses_only():
    import re

    rx = re.compile(text_pattern(["john@x.com", "j***@x.com"]).replace("(?i)", ""), re.I)
    assert rx.search("to John@X.com,")
    assert rx.search('["j***@x.com"]')
    assert not rx.search("bigjohn@x.com")
    assert not rx.search("john@x.com.au")
    assert not rx.search("john@x.community")


@pytest.mark.servers
def test_forget_cli_reads_a_file_and_never_prints_the_address(make_cfg, tmp_path):
    import subprocess
    import sys

    from helpers import write_config

    cfg = make_cfg()
    cfg.privacy.old_hash_keys = f"k0:{secrets.token_hex(8)}"
    db = Database(cfg.clickhouse)
    migrate(db)
    _OPEN.append(db)
    ring = KeyRing.from_config(cfg.privacy)
    _insert_events(db, cfg.privacy, ring.current, [make_event(1, to=TARGET, envelope=[TARGET])])
    path = write_config(cfg, tmp_path / "c.toml")
    (tmp_path / "who.txt").write_text(f"# request 7\n{TARGET}\n")
    env = {"MAILAUDIT_CONFIG": str(path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "mailaudit", "forget", "--file", str(tmp_path / "who.txt"),
                          "--reason", "req-7"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "events: 1 row(s) changed" in out.stdout and "verified: no trace left" in out.stdout
    assert TARGET_N not in (out.stdout + out.stderr).lower() and "z***" not in out.stdout
    bad = subprocess.run([sys.executable, "-m", "mailaudit", "forget", "not-an-address"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "not-an-address" not in bad.stderr and "do not look like" in bad.stderr
