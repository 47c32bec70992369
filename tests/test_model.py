"""The anomaly model: same features from storage and from the live parse, reproducible artefacts,
a threshold that keeps benign traffic quiet, and `mailaudit model train` on a real ClickHouse."""

from __future__ import annotations

import dataclasses
import json
import pickle
import uuid

import numpy as np
import pytest

from mailaudit.cli import build_parser
from mailaudit.detect.model import (
    FEATURES, AnomalyModel, anomaly_alert, calibrate, features_from_parsed, sidecar_path, train,
)
from mailaudit.ingest.parsed import parse_event
from mailaudit.ingest.simulator import Simulator
from mailaudit.ingest.wire import Event

T0 = 1_793_604_600_000


def _features(events):
    return np.array([features_from_parsed(parse_event(e)) for e in events])


@pytest.fixture(scope="module")
def support_history():
    """Two hours of the support service (threads of 2-4 people: its counts vary, so the forest splits on them)."""
    return list(Simulator(seed=1, rate=2, services=["support"]).events(7200))


@pytest.fixture(scope="module")
def support_model(support_history):
    return train("support", _features(support_history), random_state=0, n_estimators=100)


def _leak(service="support", n=500, t=T0 + 3_600_000) -> Event:
    """One copy showing 500 people who are not its recipient."""
    to = ", ".join(f"user{i}@example{i % 40}.com" for i in range(n))
    return Event(event_id=str(uuid.uuid4()), sent_at_ms=t, service=service, message_id="<leak@acme.example>",
                 from_="Support <support@acme.example>", to=to, envelope_to=["victim@example.org"],
                 subject="hello", size_bytes=12_000)


def _odd_events(service: str) -> list[Event]:
    """Header shapes the simulator rarely makes: Cc leak, Bcc left in, semicolons, a group, garbage."""
    base = dict(service=service, message_id="<m@acme.example>", from_="a@acme.example", size_bytes=4321)
    mk = lambda i, **kw: Event(event_id=str(uuid.uuid4()), sent_at_ms=T0 + 1000 * i, **{**base, **kw})  # noqa: E731
    return [
        mk(1, to="x@a.com", cc="y@b.com, z@c.com, Y@B.com", envelope_to=["<X@A.com>"]),
        mk(2, to="Undisclosed recipients:;", bcc="p@q.com, r@s.com", envelope_to=["p@q.com", "r@s.com"]),
        mk(3, to="x@a.com; y@b.com;z@c.com", envelope_to=["x@a.com"]),
        mk(4, to="Team: a@t.com, b@t.com;", envelope_to=["a@t.com", "b@t.com"], size_bytes=None),
        mk(5, to="x@a.comy@b.comz@c.com", envelope_to=["x@a.com"]),
        mk(6, to="not an address, <>, x@a.com", envelope_to=["x@a.com"], bcc=""),
    ]


# --- pure ------------------------------------------------------------------------------------------

def test_calibrate_allows_at_most_one_alert_per_n_training_messages():
    scores = np.random.default_rng(0).random(25_000)
    th = calibrate(scores, 10_000)
    assert (scores > th).sum() == 2
    assert (scores > calibrate(scores, 1_000)).sum() == 25
    small = scores[:500]
    assert (small > calibrate(small, 10_000)).sum() == 0 and calibrate(small, 10_000) == small.max()


def test_training_is_deterministic_and_the_artefact_round_trips(support_history, support_model, tmp_path):
    x = _features(support_history)
    again = train("support", x, random_state=0, n_estimators=100)
    assert np.array_equal(again.score_vectors(x), support_model.score_vectors(x))
    assert again.threshold == support_model.threshold

    path, side = support_model.save(tmp_path / "models" / "support.pkl")
    loaded = AnomalyModel.load(path)
    probe = support_history[:40] + [_leak()]
    assert [loaded.score(parse_event(e)) for e in probe] == [support_model.score(parse_event(e)) for e in probe]
    assert loaded.threshold == support_model.threshold and loaded.service == "support"
    meta = json.loads(side.read_text())
    assert side == sidecar_path(path)
    assert meta["features"] == list(FEATURES) and meta["training_size"] == len(x)
    assert meta["threshold"] == support_model.threshold and meta["model"] == "IsolationForest"
    import sklearn
    assert meta["sklearn_version"] == sklearn.__version__ and meta["trained_at"].endswith("Z")


def test_load_refuses_an_artefact_of_another_format(support_model, tmp_path):
    path, _ = support_model.save(tmp_path / "m.pkl")
    payload = pickle.loads(path.read_bytes())
    payload["features"] = payload["features"][:-1]
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(ValueError, match="features"):
        AnomalyModel.load(path)
    payload["format"] = 999
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(ValueError, match="format"):
        AnomalyModel.load(path)


def test_obvious_leak_scores_above_threshold_benign_traffic_mostly_does_not(support_model):
    leak = parse_event(_leak())
    assert support_model.is_anomalous(leak)
    # Caught by the range guard: the forest puts a point beyond the training range in the same leaf as
    # the largest threads it saw, so its score alone stays low (docs/model.md).
    assert {"log_to", "log_visible", "log_strangers"} <= set(support_model.out_of_range(features_from_parsed(leak)))
    other = list(Simulator(seed=7, rate=2, services=["support"]).events(3600))
    x = _features(other)     # scored as one matrix: one-by-one costs milliseconds each (docs/model.md)
    flagged = sum(bool(sc > support_model.threshold or support_model.out_of_range(v))
                  for sc, v in zip(support_model.score_vectors(x), x))
    assert len(other) > 1000 and flagged / len(other) < 0.005


def test_range_guard_sees_what_the_forest_cannot():
    """Billing copies always show one domain: the forest never splits on that, the range guard flags a second."""
    hist = list(Simulator(seed=1, rate=2, services=["billing"]).events(3600))
    model = train("billing", _features(hist), n_estimators=50)
    cc = Event(event_id=str(uuid.uuid4()), sent_at_ms=hist[100].sent_at_ms, service="billing",
               message_id="<n@acme.example>", from_=hist[100].from_, to=hist[100].to,
               envelope_to=hist[100].envelope_to, cc="someone@else.com", size_bytes=hist[100].size_bytes)
    p = parse_event(cc)
    assert "log_visible_domains" in model.out_of_range(features_from_parsed(p))
    assert model.is_anomalous(p)
    model.range_guard = False
    assert not model.is_anomalous(p)


def test_anomaly_alert_shape_and_privacy(support_model):
    ev = _leak()
    a = anomaly_alert(support_model, parse_event(ev), detected_at_ms=T0 + 9_999_999)
    assert a is not None and a.kind == "anomaly" and a.category == "anomaly" and a.status == "open"
    assert a.trigger_event_id == ev.event_id and a.detected_at_ms == T0 + 9_999_999
    assert "log_strangers" in a.evidence["out_of_training_range"] and a.evidence["threshold"] == round(support_model.threshold, 6)
    assert set(a.evidence["features"]) == set(FEATURES)
    assert "@" not in a.to_json()                               # counts and flags only, never an address
    again = anomaly_alert(support_model, parse_event(_leak(t=ev.sent_at_ms + 60_000)))
    assert again.incident_id == a.incident_id and again.alert_id != a.alert_id   # same hour: one incident
    assert anomaly_alert(support_model, parse_event(_leak(service="billing"))) is None
    forest_only = dataclasses.replace(support_model, range_guard=False)
    assert anomaly_alert(forest_only, parse_event(ev)) is None                 # the forest alone misses it
    assert anomaly_alert(forest_only, parse_event(ev), threshold=0.0) is not None


# --- against ClickHouse ----------------------------------------------------------------------------

@pytest.mark.servers
def test_stored_columns_give_the_parsed_features_and_cli_trains_on_them(make_cfg, tmp_path):
    from mailaudit.detect.model_store import history_window, read_features
    from mailaudit.ingest.batch import Batch
    from mailaudit.ingest.clickhouse import Database
    from mailaudit.ingest.privacy import AddressHasher
    from mailaudit.ingest.schema import migrate

    cfg = make_cfg()
    db = Database(cfg.clickhouse)
    migrate(db)
    events = list(Simulator(seed=3, rate=2, services=["support", "internal"]).events(900))
    events += _odd_events("support")
    batch = Batch(cfg, AddressHasher(cfg.require_hash_key(), cfg.privacy.hash_key_id),
                  datetime64=db.capabilities.datetime64)
    for i, e in enumerate(events + events[:5]):                 # five redelivered: FINAL must collapse them
        batch.submit("t", 0, i, 0, None, e.encode())
    assert not batch.rejected
    db.insert("events", batch.rows.columns())

    for service in ("support", "internal"):
        mine = [e for e in events if e.service == service]
        window = history_window(db, service, 1.0)
        assert window[1] == max(e.sent_at_ms for e in mine)
        stored = read_features(db, service, *window)
        parsed = _features(mine)
        assert stored.shape == parsed.shape
        assert sorted(map(tuple, stored)) == sorted(map(tuple, parsed))

    out = tmp_path / "support.pkl"
    args = build_parser().parse_args(["model", "train", "--service", "support", "--days", "1", "--out", str(out)])
    assert args._run(args, cfg) == 0
    meta = json.loads(sidecar_path(out).read_text())
    n_support = sum(1 for e in events if e.service == "support")
    assert meta["service"] == "support" and meta["training_size"] == n_support
    assert AnomalyModel.load(out).is_anomalous(parse_event(_leak()))

    args = build_parser().parse_args(["model", "train", "--service", "internal"])
    assert args._run(args, cfg) == 0
    written = sorted((tmp_path.parent / cfg.state_dir).glob("models/internal-*.pkl"))
    assert len(written) == 1 and sidecar_path(written[0]).exists()

    from mailaudit.cli import UserError
    args = build_parser().parse_args(["model", "train", "--service", "nobody"])
    with pytest.raises(UserError, match="no stored events"):
        args._run(args, cfg)
    db.disconnect()


def test_model_path_may_be_a_directory_newest_artefact_per_service(support_model, tmp_path):
    import os

    from mailaudit.detect.model import load_models

    old = dataclasses.replace(support_model, threshold=0.123)
    p_old, _ = old.save(tmp_path / "support-1.pkl")
    p_new, _ = support_model.save(tmp_path / "support-2.pkl")
    os.utime(p_old, (1_000_000, 1_000_000))
    billing = dataclasses.replace(support_model, service="billing")
    billing.save(tmp_path / "billing-1.pkl")
    models = load_models(tmp_path)
    assert sorted(models) == ["billing", "support"]
    assert models["support"].threshold == support_model.threshold
    assert load_models(p_old)["support"].threshold == 0.123
