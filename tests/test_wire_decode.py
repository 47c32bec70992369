"""The compiled decode (msgspec) and the reference decode (json + validate_event) agree on every input:
the same Event for a well-formed one, the same reason code and message for a malformed one."""

from __future__ import annotations

import json

import pytest

from mailaudit.ingest.simulator import Simulator
from mailaudit.ingest.wire import MalformedEvent, _decode_fast, decode_event, decode_event_reference

BASE = {"v": 1, "event_id": "6F1C2A1E-0000-4000-8000-000000000001", "sent_at": "2026-11-02T07:30:00.250+01:00",
        "service": "billing", "campaign": "c", "template": None, "message_id": "<m@x>", "from": "A <a@b.example>",
        "to": "x@y.example, z@y.example", "envelope_to": ["x@y.example"]}


def _j(**over) -> bytes:
    d = {**BASE, **over}
    return json.dumps({k: v for k, v in d.items() if v is not _DROP}).encode()


_DROP = object()

MALFORMED = [
    b"", b"{", b"[1, 2]", b'"text"', b"null", b"\xff\xfe{}", "{\"v\": 1}".encode("utf-16"),
    b'\xef\xbb\xbf' + _j(), _j() + b" trailing", _j().replace(b'"v": 1', b'"v": 1e0'),
    _j(v=2), _j(v=True), _j(v="1"), _j(v=None), _j(v=_DROP), _j(event_id="not-a-uuid"), _j(event_id=5),
    _j(sent_at="2026-11-02T07:30:00"), _j(sent_at="2026-02-30T07:30:00Z"), _j(sent_at="2026-11-02T07:30:00+24:00"),
    _j(service=""), _j(service="   "), _j(service=None), _j(message_id=[]), _j(to=_DROP), _j(to=None),
    _j(envelope_to="x@y.example"), _j(envelope_to=[1]), _j(envelope_to=_DROP), _j(size_bytes=-1),
    _j(size_bytes=2**32), _j(size_bytes=1.5), _j(size_bytes=True), _j(size_bytes=10**30), _j(cc=3), _j(bcc=False),
    _j(subject={"a": 1}), _j(campaign=1), _j(template=[]),
    _j().replace(b'"to"', b'"to": "\\ud800", "x"'), _j().replace(b'"message_id": "<m@x>"', b'"message_id": "\\udc00"'),
    _j()[:-1] + b', "v": 2}', b'{"v": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
]

WELL_FORMED = [
    _j(), _j(template=_DROP, campaign=_DROP), _j(cc="c@d.example", bcc="", subject="Hi \u00e9"), _j(size_bytes=0),
    _j(size_bytes=2**32 - 1), _j(extra_field={"nested": [1, 2]}), _j(subject="\ud83d\ude00".encode("utf-16", "surrogatepass").decode("utf-16")),
    _j().replace(b'"subject"', b'"s"')[:-1] + b', "subject": "\\ud83d\\ude00"}', _j(x=float("nan")),
    _j(x=10**40), _j(campaign=""), _j(sent_at="2026-11-02t07:30:00.123456789z"),
]


def _outcome(fn, raw, extra=()):
    try:
        return fn(raw, extra)
    except MalformedEvent as e:
        return (e.reason, e.detail)


@pytest.mark.parametrize("raw", MALFORMED + WELL_FORMED, ids=[f"case{i}" for i in range(len(MALFORMED + WELL_FORMED))])
def test_both_paths_agree(raw):
    assert _outcome(decode_event, raw) == _outcome(decode_event_reference, raw)


def test_malformed_are_malformed_and_fast_path_never_judges_them():
    for raw in MALFORMED:
        assert isinstance(_outcome(decode_event_reference, raw), tuple), raw[:60]
        assert _decode_fast(raw) is None


def test_simulator_traffic_takes_the_fast_path_with_identical_events():
    events = list(Simulator(seed=3, rate=50.0).events(60, incident=["concatenated_to", "bcc_left", "cc_leak"],
                                                      incident_at_s=20))
    raws = [e.encode() for e in events]
    fast = [_decode_fast(r) for r in raws]
    assert all(f is not None for f in fast)
    assert fast == [decode_event_reference(r) for r in raws]


def test_extra_fields_go_through_the_reference_path():
    raw = _j(tenant="t1", size_bytes=5)
    assert decode_event(raw, ("tenant",)).extra == {"tenant": "t1"}
    assert decode_event(raw).extra == {}
