"""The engine's long-lived state in forms the cyclic GC stops scanning (bench/README.md, "Detection
latency", session 5): sibling-index entries are tuples of ints, and checkpoints of any earlier form
load into them."""

from __future__ import annotations

import gc
import json

from mailaudit.config import DetectConfig, SpikeRules
from mailaudit.detect import state as st
from mailaudit.detect.engine import DetectionEngine
from mailaudit.ingest.wire import Event

T0 = 1_790_000_040_000


def _ev(n, to, env, t, mid):
    return Event(event_id=f"gc-{n}", sent_at_ms=T0 + t, service="svc", message_id=mid,
                 from_="Acme <noreply@acme.example>", to=", ".join(to), envelope_to=list(env))


def _users(n, offset=0):
    return [f"user{i}@d{i % 41}.example" for i in range(offset, offset + n)]


def _engine():
    return DetectionEngine(DetectConfig(spikes=SpikeRules(enabled=False)))


def test_sibling_index_entries_drop_out_of_the_collectors_scans():
    eng = _engine()
    g = _users(6)
    for i, a in enumerate(g[:3]):                  # one copy per recipient: each waits for its siblings
        assert eng.process(_ev(i, g, [a], i * 100, "<group@acme.example>")) == []
    svc = eng.services["svc"]
    assert len(svc.siblings) == 2                  # by Message-ID and by visible list
    gc.collect()
    gc.collect()                                   # an outer tuple goes once its inner one has gone
    assert not any(gc.is_tracked(v) for v in svc.siblings.values())
    # ... and they still account for the group: 3 of the 6 never got a copy -> one alert for them
    out = eng.process(_ev(9, ["x@y.example"], ["x@y.example"], 60_000, "<other@acme.example>")) + eng.flush()
    fired = [a for a in out if a.status == "open"]
    assert len(fired) == 1 and fired[0].evidence["strangers_unaccounted"] == 3


def test_a_large_entry_is_added_to_in_place_and_still_accounts_for_later_copies():
    eng = _engine()
    g = _users(6)
    bcc = _users(40, offset=100)                   # a first copy with a large envelope: a set-form entry
    mid = "<big@acme.example>"
    out = eng.process(_ev(0, g, g[:2] + bcc, 0, mid))
    entry = eng.services["svc"].siblings[mid]
    assert type(entry[0]) is set and len(entry[0]) == 42
    out += eng.process(_ev(1, g, [g[2], g[3]], 100, mid))
    out += eng.process(_ev(2, g, [g[4], g[5]], 200, mid))
    assert eng.services["svc"].siblings[mid][0] is entry[0] and len(entry[0]) == 46
    out += eng.process(_ev(9, ["x@y.example"], ["x@y.example"], 60_000, "<other@acme.example>")) + eng.flush()
    assert [a for a in out if a.status == "open"] == []
    assert eng.stats["waits_cleared"] == eng.stats["waits"] > 0


def test_a_checkpoint_with_list_and_set_sibling_entries_still_loads():
    """Checkpoints written before this form hold ``[set, expiry]`` entries, in the column form or (older
    still) the generic one; either must restore into the live form and keep accounting."""
    g = _users(6)
    for old_form in ("columns", "generic"):
        eng = _engine()
        for i, a in enumerate(g[:3]):
            eng.process(_ev(i, g, [a], i * 100, "<group@acme.example>"))
        doc = json.loads(json.dumps(eng.state_dict()))
        attrs = doc["services"]["svc"]["a"]
        live = st.decode(attrs["siblings"])
        as_lists = {k: [set(v[0]), v[1]] for k, v in live.items()}
        attrs["siblings"] = st.encode(as_lists) if old_form == "generic" else st._enc_siblings(as_lists)
        assert ("$sib" in json.dumps(attrs["siblings"])) == (old_form == "columns")
        back = _engine()
        back.load_state(doc)
        entries = back.services["svc"].siblings
        assert all(type(v) is tuple and type(v[0]) is tuple for v in entries.values())
        assert {k: (set(v[0]), v[1]) for k, v in entries.items()} == {k: (v[0], v[1]) for k, v in as_lists.items()}
        out = back.process(_ev(9, ["x@y.example"], ["x@y.example"], 60_000, "<other@acme.example>")) + back.flush()
        fired = [a for a in out if a.status == "open"]
        assert len(fired) == 1 and fired[0].evidence["strangers_unaccounted"] == 3
