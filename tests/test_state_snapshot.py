"""A checkpoint snapshot taken now and encoded later is the state as of now (issue 16).

The detector's poll loop takes ``DetectionEngine.snapshot()`` between two events and goes on processing;
its checkpoint thread calls ``materialize()`` later. What it encodes must be what ``state_dict()`` gave at
the snapshot, whatever the loop changed in between: a large group's sibling set grown in place, a
waiting copy's deadline extended in place, entries expired from the index and its queue. Pure engine.
"""

from __future__ import annotations

import json

from mailaudit.config import DetectConfig, DisclosureRules, SpikeRules
from mailaudit.detect import state as st
from mailaudit.detect.engine import _SIB_SET_FROM, DetectionEngine
from mailaudit.ingest.simulator import Simulator
from mailaudit.ingest.wire import Event

T0 = 1_790_000_040_000
_n = [0]


def _ev(to, env, t, mid, service="svc"):
    _n[0] += 1
    return Event(event_id=f"snap-{_n[0]}", sent_at_ms=T0 + t, service=service, message_id=mid,
                 from_="Acme <noreply@acme.example>", to=", ".join(to), envelope_to=list(env))


def _users(n, offset=0, dom="d"):
    return [f"user{i}@{dom}{i % 41}.example" for i in range(offset, offset + n)]


def _dump(doc) -> str:
    return json.dumps(doc, sort_keys=False)


def test_a_snapshot_materialized_after_more_events_is_the_state_at_the_snapshot():
    eng = DetectionEngine(DetectConfig(spikes=SpikeRules(enabled=False)))
    big = _users(_SIB_SET_FROM + 20)
    # A large group's submissions: one envelope of many, so its index entries hold a set of ids ...
    eng.process(_ev(big, big[:_SIB_SET_FROM + 5], 0, "<big@acme.example>"))
    # ... and small threads sent one copy per recipient, each copy waiting for its siblings.
    for k in range(30):
        g = _users(4, 1000 + 4 * k)
        eng.process(_ev(g, [g[0]], 10 + k, f"<t{k}@acme.example>"))
    svc = eng.services["svc"]
    sets = [k for k, v in svc.siblings.items() if type(v[0]) is set]
    assert sets and svc.pending and svc.sibling_q

    before = _dump(eng.state_dict())
    snap = eng.snapshot()
    assert isinstance(snap, st.Snapshot)
    set_ids = {k: len(svc.siblings[k][0]) for k in sets}

    # The loop goes on: the large group's next submission grows its set in place, the waiting copies'
    # deadlines move, and later traffic expires and adds entries.
    eng.process(_ev(big, big[_SIB_SET_FROM + 5:], 20, "<big@acme.example>"))
    assert any(len(svc.siblings[k][0]) > set_ids[k] for k in sets if k in svc.siblings)
    for k in range(30, 60):
        g = _users(4, 1000 + 4 * k)
        eng.process(_ev(g, [g[0]], 600_000 + k, f"<t{k}@acme.example>"))
    assert _dump(eng.state_dict()) != before

    assert _dump(snap.materialize()) == before
    assert _dump(snap.materialize()) == before          # materializing again gives the same document


def test_a_wait_extended_after_the_snapshot_is_not_in_it():
    """A copy showing only the service's own addresses waits, then is given the longer wait for role
    learning: a new entry in the heap, so a snapshot taken before holds the wait as it was."""
    eng = DetectionEngine(DetectConfig(spikes=SpikeRules(enabled=False)))
    first = _ev(["jane.doe@acme.example"], ["c0@customer.example"], 0, "<n0@acme.example>")
    first.cc, first.campaign = "bob.smith@acme.example", "notice"
    eng.process(first)
    svc = eng.services["svc"]
    assert len(svc.pending) == 1 and not svc.pending[0].extended
    before = _dump(eng.state_dict())
    snap = eng.snapshot()
    nxt = _ev(["x@else.example"], ["x@else.example"], 9_000, "<n1@acme.example>")
    eng.process(nxt)                                   # the clock passes the first copy's deadline
    assert len(svc.pending) == 1 and svc.pending[0].extended
    assert _dump(eng.state_dict()) != before
    assert _dump(snap.materialize()) == before


def test_a_snapshot_loads_like_a_state_dict_on_simulated_traffic():
    cfg = DetectConfig(disclosure=DisclosureRules())
    eng = DetectionEngine(cfg)
    events = list(Simulator(seed=3, rate=40.0).events(240, incident=["concatenated_to"], incident_at_s=200))
    for e in events[: len(events) // 2]:
        eng.process(e)
    want = _dump(eng.state_dict())
    snap = eng.snapshot()
    rest = events[len(events) // 2:]
    for e in rest:
        eng.process(e)
    doc = snap.materialize()
    assert _dump(doc) == want
    # Through the wire form and back into an engine, the snapshot restores the state at its point:
    # replaying the second half from it gives what the uninterrupted engine gave.
    again = DetectionEngine(cfg)
    again.load_state(st.loads(st.dumps(doc)))
    fresh = DetectionEngine(cfg)
    fresh.load_state(json.loads(want))
    a = [x.alert_id for e in rest for x in again.process(e)] + [x.alert_id for x in again.flush()]
    b = [x.alert_id for e in rest for x in fresh.process(e)] + [x.alert_id for x in fresh.flush()]
    assert a and a == b
    assert _dump(again.state_dict()) == _dump(fresh.state_dict())


def test_a_snapshot_that_cannot_be_encoded_is_logged_and_not_stored(caplog):
    """Encoding now runs on the checkpoint thread: a state it cannot encode is reported there and that
    partition left out of the checkpoint (its previous one stays valid), as on the loop before."""
    from mailaudit.detect.checkpoints import Checkpoint
    from mailaudit.detect.consumer import _materialized

    doc = {"format": 1, "services": {"svc": {"$c": "engine._Service", "a": {"pending": None}}}}
    bad = st.Snapshot(doc, [(doc["services"]["svc"]["a"], "pending", st.encode, [object()])])
    cp = Checkpoint("mail.events", 3, 10, bad)
    assert _materialized(cp) is False
    assert "partition mail.events/3: state not checkpointed" in caplog.text
    good = DetectionEngine(DetectConfig(spikes=SpikeRules(enabled=False)))
    cp = Checkpoint("mail.events", 4, 10, good.snapshot())
    assert _materialized(cp) is True and cp.state == good.state_dict()
