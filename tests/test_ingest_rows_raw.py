"""Storage's short path (``EventRows.add_raw``: bytes → row, no ``Event``, no ``ParsedEvent``) gives the
very rows and rejections of the long one (``decode_event`` → ``parse_event`` → ``EventRows.add``), on
simulator traffic, the sending-practice catalogue, the address table and the wire edge cases; and the
per-second time cache gives the full parse's instant."""

from __future__ import annotations

import json
import random
import uuid
from datetime import datetime, timedelta, timezone

import corpus
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailaudit.config import Config
from mailaudit.ingest import wire
from mailaudit.ingest.batch import Batch
from mailaudit.ingest.parsed import parse_event
from mailaudit.ingest.privacy import AddressHasher
from mailaudit.ingest.rows import EventRows
from mailaudit.ingest.simulator import INCIDENT_KINDS, Simulator
from mailaudit.ingest.wire import MalformedEvent, decode_event, parse_time
from test_addresses import TABLE
from test_wire_decode import MALFORMED, WELL_FORMED

KEY = b"k" * 32


def _cfg(store_subject: bool = False) -> Config:
    cfg = Config()
    cfg.privacy.hash_key = KEY.decode()
    cfg.privacy.store_subject = store_subject
    return cfg


def _long_way(cfg: Config, values: list[bytes], datetime64: bool):
    """What ``Batch.add_record`` did before the short path: every record decoded into an ``Event``."""
    rows = EventRows(cfg.privacy, AddressHasher(KEY), datetime64)
    rejected = []
    for offset, value in enumerate(values):
        try:
            rows.add(parse_event(decode_event(value)), 3, offset)
        except MalformedEvent as e:
            rejected.append((offset, e.reason, e.detail))
    return rows, rejected


def _short_way(cfg: Config, values: list[bytes], datetime64: bool):
    batch = Batch(cfg, AddressHasher(KEY), datetime64=datetime64)
    for offset, value in enumerate(values):
        batch.submit("t", 3, offset, 0, None, value)
    return batch.rows, [(r.offset, r.reason, r.detail) for r in batch.rejected]


def _assert_same(values: list[bytes], datetime64: bool = True, store_subject: bool = False) -> EventRows:
    cfg = _cfg(store_subject)
    long_rows, long_rejected = _long_way(cfg, values, datetime64)
    short_rows, short_rejected = _short_way(cfg, values, datetime64)
    # ingested_at is the second each batch was started
    long_rows._rows = [r[:3] + (short_rows.now,) + r[4:] for r in long_rows._rows]
    long_rows._cols = None
    assert short_rejected == long_rejected
    assert _ids_as_uuids(short_rows.columns()) == _ids_as_uuids(long_rows.columns())
    assert _ids_as_uuids(short_rows.index_columns()) == _ids_as_uuids(long_rows.index_columns())
    return short_rows


def _ids_as_uuids(cols: dict) -> dict:
    """The driver takes a UUID column's value as a UUID or its text alike; the long path may give text
    (``Event.uid`` is only built for an id not written canonically)."""
    return {**cols, "event_id": [u if isinstance(u, uuid.UUID) else uuid.UUID(u) for u in cols["event_id"]]}


def _taken_short(values: list[bytes]) -> int:
    rows = EventRows(_cfg().privacy, AddressHasher(KEY))
    return sum(rows.add_raw(v) for v in values)


def test_simulator_traffic_with_every_incident():
    events = list(Simulator(seed=11, rate=40.0).events(90, incident=list(INCIDENT_KINDS), incident_at_s=30))
    values = [e.encode() for e in events]
    rows = _assert_same(values)
    _assert_same(values, datetime64=False, store_subject=True)
    assert len(rows) == len(values) and _taken_short(values) == len(values)
    cols = rows.columns()
    assert max(cols["to_count"]) > 50 and any(cols["run_together"]) and any(cols["has_bcc"])


def test_sending_practice_catalogue():
    values = []
    for p in corpus.PATTERNS.values():
        values += [json.dumps(e, ensure_ascii=False).encode() for e in p.generate(scale=0.02).events[:200]]
    rows = _assert_same(values)
    assert len(rows) == len(values)


def _event(**over) -> bytes:
    d = {"v": 1, "event_id": str(uuid.UUID(int=random.getrandbits(128))), "sent_at": "2026-11-02T07:30:00.000Z",
         "service": "s", "message_id": "<m@x>", "from": "S <s@x.example>", "to": "a@b.example",
         "envelope_to": ["a@b.example"], **over}
    return json.dumps(d, ensure_ascii=False).encode()


def test_every_header_form_of_the_address_table_in_every_field():
    values = []
    for value, addresses, _, _ in TABLE:
        env = list(addresses)[:3] or ["x@y.example"]
        values += [_event(to=value, envelope_to=env), _event(cc=value), _event(bcc=value), _event(**{"from": value}),
                   _event(to=value, cc=value, bcc=" ", envelope_to=[f" <{a.upper()}> " for a in env] + [""])]
    _assert_same(values)


def test_wire_edge_cases_take_the_long_path_and_are_rejected_alike():
    values = MALFORMED + WELL_FORMED + [
        _event(event_id="{6f1c2a1e-0000-4000-8000-000000000001}"), _event(event_id="6F1C2A1E000040008000000000000001"),
        _event(event_id="6f1c2a1e0000-4000-8000-000000000001"), _event(sent_at="2026-11-02T07:30:60.000Z"),
        _event(sent_at="2026-11-02T07:30:00.1a3Z"), _event(sent_at="2026-11-02T07:30:00.٣٢١Z"),
        _event(campaign="", template="", subject="", size_bytes=None), _event(bcc="", cc=""),
    ]
    _assert_same(values)
    _assert_same(values, datetime64=False)
    # what the compiled path refuses, the long path decides: none of the malformed takes the short path
    assert _taken_short(MALFORMED) == 0


def test_a_record_the_short_path_refuses_is_not_half_written():
    rows = EventRows(_cfg().privacy, AddressHasher(KEY))
    for value in MALFORMED:
        assert rows.add_raw(value) is False
    assert len(rows) == 0 and rows.index_columns()["address_hash"] == []


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@settings(max_examples=300, deadline=None)
@given(st.integers(-10**12, 10**13), st.sampled_from(["Z", "z", "+00:00", "+05:30", "-11:00"]),
       st.sampled_from([".%03d", "", ".%06d", ".%09d", ".%01d"]), st.sampled_from(["T", "t", " "]))
def test_time_cache_gives_the_full_parse(ms, zone, frac, sep):
    dt = _EPOCH + timedelta(milliseconds=ms)
    text = dt.strftime(f"%Y-%m-%d{sep}%H:%M:%S") + ((frac % (ms % 1000)) if frac else "") + zone
    try:
        expect = wire._parse_time(text)
    except ValueError:
        with pytest.raises(ValueError):
            parse_time(text)
        return
    assert parse_time(text) == expect == parse_time(text)      # a miss, then a hit


def test_time_cache_shares_a_second_between_fractions_and_is_bounded():
    wire._SECONDS.clear()
    base = "2026-11-02T07:30:59"
    assert [parse_time(f"{base}.{f:03d}Z") for f in (500, 0, 999)] == \
        [wire._parse_time(f"{base}.{f:03d}Z") for f in (500, 0, 999)]
    assert list(wire._SECONDS) == [base]
    for s in range(wire._SECONDS_MAX + 5):
        parse_time(f"2026-11-02T07:{s // 60 % 60:02d}:{s % 60:02d}.000Z".replace("07:", f"{s // 3600:02d}:", 1))
    assert len(wire._SECONDS) <= wire._SECONDS_MAX
