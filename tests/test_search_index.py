"""Address search through the reverse index (schema migration 5) finds exactly what a scan of the hash
arrays finds, on the 18.16 server and on chdb (modern DDL): every role the address can have, every key
of the ring, redeliveries once, with the other filters; the index is backfilled for rows ingested
before it existed (a 20,000-address copy included), and `forget` leaves no row of it. Events are
written the way the consumer writes them (``insert_events``: events, then index rows)."""

from __future__ import annotations

import time
import uuid

import pytest

from chdb_support import chdb_database
from helpers import make_event
from mailaudit.config import Config
from mailaudit.dashboard import lookup, queries
from mailaudit.ingest import schema
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.erasure import forget
from mailaudit.ingest.keys import KeyRing
from mailaudit.ingest.parsed import parse_event
from mailaudit.ingest.privacy import AddressHasher
from mailaudit.ingest.rows import EventRows
from mailaudit.ingest.wire import Event
from mailaudit.ingest.writer import insert_events

WHO = "Jane.Doe@Example.org"
NOW_MS = int(time.time() * 1000)
DAY = 86_400_000


def _backend(request):
    if request.param == "server":
        cfg = request.getfixturevalue("make_cfg")()
        return cfg, Database(cfg.clickhouse)
    cfg = Config()
    cfg.privacy.hash_key = "chdb-test-key-0123456789abcdefgh"
    return cfg, chdb_database(f"idx_{uuid.uuid4().hex[:8]}")


@pytest.fixture(params=[pytest.param("server", marks=pytest.mark.servers), "chdb"])
def backend(request):
    cfg, db = _backend(request)
    schema.migrate(db)
    yield cfg, db
    db.disconnect()


def _events() -> list[tuple[str, Event]]:
    """(how the address appears, event): once per role, spread over ten days, plus 60 without it."""
    other = [f"user{i}@example.net" for i in range(4)]

    def ev(i, days_ago, **kw):
        base = dict(event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"idx/{i}")), sent_at_ms=NOW_MS - int(days_ago * DAY) - i,
                    service="billing" if i % 2 else "support", message_id=f"<{i}@x>", from_="Shop <shop@shop.example>",
                    to=other[0], envelope_to=[other[0]], campaign="c1" if i % 3 else "c2")
        base.update(kw)
        return Event(**base)

    out = [
        ("From", ev(1, 0.1, from_=f"Jane <{WHO}>")),
        ("recipient, To", ev(2, 1.5, to=WHO, envelope_to=[WHO.lower()])),
        ("To", ev(3, 2.5, to=f"{other[1]}, {WHO}")),
        ("Cc", ev(4, 3.5, cc=f"Jane <{WHO}>")),
        ("recipient, Bcc", ev(5, 4.5, bcc=WHO, envelope_to=[other[0], WHO])),
        ("recipient", ev(6, 5.5, envelope_to=[f"<{WHO}>"])),
        ("recipient, To", ev(7, 9.5, to=WHO, envelope_to=[WHO])),       # outside the 7-day range
    ]
    out += [("", ev(100 + i, i / 10, to=other[i % 4], envelope_to=[other[i % 4]])) for i in range(60)]
    return out


def _insert(db, cfg, events, hash_key=None, key_id=None) -> None:
    if hash_key:
        cfg.privacy.hash_key, cfg.privacy.hash_key_id = hash_key, key_id
    rows = EventRows(cfg.privacy, AddressHasher(cfg.require_hash_key(), cfg.privacy.hash_key_id))
    for _, e in events:
        rows.add(parse_event(e))
    insert_events(db, rows)


def _ids(db, f, index: bool) -> list[str]:
    db._has_address_index = index
    try:
        return [str(x) for x in queries.search_ids(db, f)["event_id"]]
    finally:
        db._has_address_index = None


def test_index_search_equals_array_scan_for_every_role_and_filter(backend):
    cfg, db = backend
    events = _events()
    _insert(db, cfg, events)
    _insert(db, cfg, events[1:3])                               # redelivered, not merged yet
    assert queries._address_index_ready(db)
    hashes = lookup.address_hashes(cfg.privacy, WHO)
    week = (NOW_MS // 1000 - 7 * 86400, NOW_MS // 1000 + 60)
    f = queries.SearchFilters(*week, address_hashes=hashes)
    expected = [e.event_id for how, e in events[:6]]           # newest first, the 10-day-old one outside
    assert _ids(db, f, index=True) == _ids(db, f, index=False) == expected
    page, total, more = queries.search_page(db, f)
    assert (total, more) == (6, False)
    assert list(page["match"]) == [how for how, _ in events[:6]]
    for extra in ({"service": "billing"}, {"campaign": "c1"}, {"domain": "example.net"},
                  {"message_id": "<3@x>"}, {"service": "support", "campaign": "c2"}):
        g = queries.SearchFilters(*week, address_hashes=hashes, **extra)
        got = _ids(db, g, index=True)
        assert got == _ids(db, g, index=False), extra
        assert got and set(got) < set(expected), extra
    ever = queries.SearchFilters(0, NOW_MS // 1000 + 60, address_hashes=hashes)
    assert _ids(db, ever, index=True) == expected + [events[6][1].event_id]
    nobody = queries.SearchFilters(*week, address_hashes=lookup.address_hashes(cfg.privacy, "nobody@example.org"))
    assert _ids(db, nobody, index=True) == []


def test_rows_hashed_under_an_old_key_are_found_during_a_rotation(backend):
    cfg, db = backend
    events = _events()
    old_key = cfg.privacy.hash_key
    _insert(db, cfg, events[:3])                                 # under the old key
    cfg.privacy.old_hash_keys = f"{cfg.privacy.hash_key_id}:{old_key}"
    _insert(db, cfg, events[3:6], hash_key="the-new-key-0123456789abcdefghij", key_id="k2")
    hashes = lookup.address_hashes(cfg.privacy, WHO)
    assert len(hashes) == 2
    f = queries.SearchFilters(NOW_MS // 1000 - 7 * 86400, NOW_MS // 1000 + 60, address_hashes=hashes)
    assert _ids(db, f, index=True) == _ids(db, f, index=False) == [e.event_id for _, e in events[:6]]


@pytest.mark.servers
def test_backfill_indexes_what_was_ingested_before_the_migration(make_cfg, monkeypatch):
    cfg = make_cfg()
    db = Database(cfg.clickhouse)
    monkeypatch.setattr(schema, "MIGRATIONS", [m for m in schema.MIGRATIONS if m.version < 5])
    schema.migrate(db)                                           # a database from before migration 5
    events = _events()
    # and one mass-disclosure copy: 20,000 addresses in To (a materialized view with an array join
    # would need gigabytes on 18.16 for it; the backfill and the consumer's index rows do not)
    crowd = [f"victim{i}@example.com" for i in range(20_000)]
    big = Event(event_id=str(uuid.uuid4()), sent_at_ms=NOW_MS - 3_600_000, service="newsletter", message_id="<big@x>",
                from_="News <news@shop.example>", to=", ".join(crowd + [WHO]), envelope_to=[crowd[0]], campaign="c9")
    _insert(db, cfg, events[:4] + [("To", big)])
    assert not queries._address_index_ready(db)
    assert db.execute("SELECT count() FROM system.tables WHERE database = %(d)s AND name = 'events_by_address'",
                      {"d": db.name})[0][0] == 0
    monkeypatch.undo()
    db._has_address_index = None
    assert schema.migrate(db) == [5]                             # creates the index and backfills it
    _insert(db, cfg, events[4:6])                                # after: through the view
    f = queries.SearchFilters(NOW_MS // 1000 - 7 * 86400, NOW_MS // 1000 + 60,
                              address_hashes=lookup.address_hashes(cfg.privacy, WHO))
    assert queries._address_index_ready(db)
    want = [e.event_id for _, e in events[:6]]
    want.insert(0, big.event_id)                                 # an hour old: the newest
    assert _ids(db, f, index=True) == _ids(db, f, index=False) == want
    crowd_f = queries.SearchFilters(f.since_s, f.until_s, address_hashes=lookup.address_hashes(cfg.privacy, crowd[12345]))
    assert _ids(db, crowd_f, index=True) == [big.event_id]
    n = db.execute("SELECT count() FROM {db}.events_by_address")[0][0]
    assert n > 20_000
    assert schema.migrate(db) == [] and db.execute("SELECT count() FROM {db}.events_by_address")[0][0] == n


@pytest.mark.servers
def test_forget_leaves_no_index_row(make_cfg):
    cfg = make_cfg()
    db = Database(cfg.clickhouse)
    schema.migrate(db)
    events = _events()
    _insert(db, cfg, events)
    hashes = lookup.address_hashes(cfg.privacy, WHO)
    before = db.execute("SELECT count() FROM {db}.events_by_address WHERE address_hash IN %(h)s", {"h": hashes})[0][0]
    assert before == 7
    result = forget(db, KeyRing.from_config(cfg.privacy), [WHO], actor="test")
    assert result.verified, result.traces
    assert db.execute("SELECT count() FROM {db}.events_by_address WHERE address_hash IN %(h)s", {"h": hashes})[0][0] == 0
    f = queries.SearchFilters(0, NOW_MS // 1000 + 60, address_hashes=hashes)
    assert _ids(db, f, index=True) == []
    assert db.execute("SELECT count() FROM {db}.events_by_address")[0][0] > 0      # other people stay indexed


def test_index_rows_are_each_events_distinct_hashes_whatever_the_shape():
    """The row builder takes shortcuts for the common shape (one recipient, the envelope equal to the
    To:); the index must still hold exactly one row per distinct address hash of each event (sender,
    To, Cc, Bcc, envelope), and the envelope's columns must be its own, shortcut or not."""
    cfg = Config()
    cfg.privacy.hash_key = "k" * 32
    hasher = AddressHasher(cfg.require_hash_key())
    shapes = [
        dict(to="a@x.com", envelope=["a@x.com"]),                           # the shortcut
        dict(to="a@x.com", envelope=["A@X.com"]),                           # equal once normalised
        dict(to="me@acme.example", envelope=["me@acme.example"]),           # sender mails itself
        dict(to="a@x.com", envelope=["b@y.org"]),                           # envelope differs (a leak)
        dict(to="a@x.com, b@y.org", envelope=["a@x.com"]),
        dict(to="a@x.com", envelope=["a@x.com"], cc="c@z.net", bcc="d@w.io"),
        dict(to="undisclosed-recipients:;", envelope=["a@x.com", "b@y.org"]),
        dict(to="a@x.com", envelope=[]),
    ]
    rows = EventRows(cfg.privacy, hasher)
    for i, kw in enumerate(shapes):
        rows.add(parse_event(make_event(i, from_="Me <me@acme.example>", **kw)), 0, i)
    cols, ix = rows.columns(), rows.index_columns()
    for i, kw in enumerate(shapes):
        env = [hasher.hash_and_mask(a.lower()) for a in kw["envelope"]]
        assert cols["env_hashes"][i] == [h for h, _ in env]
        assert cols["env_masked"][i] == [m for _, m in env]
        assert cols["env_domains"][i] == [a.lower().rpartition("@")[2] for a in kw["envelope"]]
        env = [h for h, _ in env]
        want = dict.fromkeys([cols["from_hash"][i], *cols["to_hashes"][i], *cols["cc_hashes"][i],
                              *cols["bcc_hashes"][i], *env])
        want.pop("", None)
        got = [h for h, e in zip(ix["address_hash"], ix["event_id"]) if e == cols["event_id"][i]]
        assert got == list(want), kw
    assert len(ix["address_hash"]) == len(ix["sent_at"]) == len(ix["service"]) == len(ix["event_id"])
