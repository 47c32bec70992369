"""Detection state for replicas: plain JSON, no pickle, allow-listed classes, size limits."""

from __future__ import annotations

import json
import zlib
import base64

import pytest

from mailaudit.config import DetectConfig
from mailaudit.detect import state as st
from mailaudit.detect.engine import DetectionEngine
from mailaudit.ingest.privacy import AddressHasher
from mailaudit.ingest.simulator import Simulator


def _ids(alerts):
    return [a.alert_id for a in alerts]


def test_engine_state_round_trips_through_the_wire_form_mid_stream():
    hasher = AddressHasher("11" * 16, "k1")
    events = list(Simulator(seed=4, rate=15.0).events(900, incident=["concatenated_to", "cc_leak", "bcc_left"],
                                                       incident_at_s=450))
    cfg = DetectConfig()
    whole = DetectionEngine(cfg, clock=None, hasher=hasher)
    expected = [a.to_json() for e in events for a in whole.process(e)] + [a.to_json() for a in whole.flush()]
    got = []
    engine = DetectionEngine(cfg, clock=None, hasher=hasher)
    for i, cut in enumerate(range(0, len(events), len(events) // 5)):
        for e in events[cut: cut + len(events) // 5]:
            got += [a.to_json() for a in engine.process(e)]
        wire = st.dumps(engine.state_dict(), compress=bool(i % 2))
        assert "pickle" not in wire
        engine = DetectionEngine(cfg, clock=None, hasher=hasher)
        engine.load_state(st.loads(wire))
    got += [a.to_json() for a in engine.flush()]
    assert len(expected) >= 4
    assert got == expected


def test_state_never_rebuilds_an_unlisted_class():
    doc = {"format": "mailaudit.detect.engine/2", "services": {},
           "incidents": {"$c": "os.system", "a": {}}, "stats": {}, "seq": 0}
    with pytest.raises(st.StateError, match="unknown class"):
        DetectionEngine(DetectConfig()).load_state(doc)
    with pytest.raises(TypeError, match="not registered"):
        st.encode(object())


def test_old_pickle_checkpoints_are_refused():
    with pytest.raises(st.StateError, match="pickle"):
        DetectionEngine(DetectConfig()).load_state({"format": "mailaudit.detect.engine/1", "state": "gASVAA=="})


def test_size_limit_on_write_and_on_decompression():
    with pytest.raises(st.StateTooLarge):
        st.dumps({"x": "a" * 5000}, max_bytes=1000)
    bomb = "mailaudit-state/1;z;" + base64.b64encode(zlib.compress(json.dumps({"x": "a" * 10_000_000}).encode())).decode()
    assert len(bomb) < 100_000
    with pytest.raises(st.StateTooLarge):
        st.loads(bomb, max_bytes=1_000_000)
    with pytest.raises(st.StateError):
        st.loads("something else")


def test_containers_keep_their_types():
    from collections import OrderedDict, deque
    v = {"t": (1, 2), "s": {3}, "f": frozenset({"a"}), "q": deque([1.5], 4), "b": bytearray(b"\x00\xff"),
         "o": OrderedDict([((1, "x"), [1])]), "d": {5: "five"}, "$k": 1, "inf": float("inf")}
    back = st.decode(json.loads(json.dumps(st.encode(v))))
    assert back == v and type(back["o"]) is OrderedDict and back["q"].maxlen == 4
    assert type(back["b"]) is bytearray and type(back["t"]) is tuple
