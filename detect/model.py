"""Model-based anomaly score: one IsolationForest per service over per-message header shape.

Why a model at all: the disclosure rules only know the shapes someone thought of. An IsolationForest
fitted on a service's own history says "this message does not look like what this service sends"
without labels, which is the only kind of training data an operator has. It is *off by default*
(``detect.model_path`` unset): docs/model.md measures it against the rules on the simulator and
explains why.

Pure module: features, fit, score, calibrate, artefact save/load. Reading history from ClickHouse is
``detect.model_store``; the CLI is ``mailaudit model train``.

Features are computed identically from a ``ParsedEvent`` (live detector) and from the stored
columns of the ``events`` table (training), so a model trained on storage scores live events on the
same scale; ``tests/test_model.py`` proves the two paths agree on real stored rows.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mailaudit.detect.alerts import ANOMALY, Alert, alert_id, incident_id
from mailaudit.ingest.parsed import ParsedEvent

ARTEFACT_FORMAT = 1          # bump when the pickled payload or the feature list changes meaning

# Stored columns read to build features (all exist on every server generation, 18.16 included).
COLUMNS = ("to_count", "cc_count", "bcc_count", "env_count", "visible_count", "visible_domains",
           "strangers", "run_together", "has_bcc", "is_group", "semicolon", "unparseable",
           "size_bytes", "sent_ms")

# Counts and size enter as log1p: IsolationForest cuts uniformly between min and max, so on a raw
# scale one 500-recipient outlier in the history would leave every cut between 1 and 3 recipients
# starved. Hour of day is cyclic (23h is next to 0h), hence sin/cos.
FEATURES = ("log_to", "log_cc", "log_bcc", "log_env", "log_visible", "log_visible_domains",
            "log_strangers", "run_together", "has_bcc", "is_group", "semicolon", "log_unparseable",
            "log_size", "hour_sin", "hour_cos")

DEFAULT_ALERTS_PER = 10_000   # calibration: at most one alert per this many benign training messages
_HOUR_MS = 3_600_000
_GUARDED = tuple(range(12))   # FEATURES[:12]: counts and flags; not log_size, hour_sin, hour_cos
_TWO_PI_24 = 2.0 * math.pi / 24.0


def _vector(to: int, cc: int, bcc: int, env: int, visible: int, domains: int, strangers: int,
            run_together: int, has_bcc: int, is_group: int, semicolon: int, unparseable: int,
            size: int, sent_ms: int) -> tuple[float, ...]:
    hour = (sent_ms // _HOUR_MS) % 24
    lg = math.log1p
    return (lg(to), lg(cc), lg(bcc), lg(env), lg(visible), lg(domains), lg(strangers),
            float(run_together), float(has_bcc), float(is_group), float(semicolon), lg(unparseable),
            lg(size), math.sin(hour * _TWO_PI_24), math.cos(hour * _TWO_PI_24))


def features_from_parsed(p: ParsedEvent) -> tuple[float, ...]:
    """The feature vector of a live event; mirrors exactly how ``ingest.rows`` fills the columns."""
    to, cc = p.to.addresses, p.cc.addresses
    visible = p.visible
    env = set(p.envelope)
    return _vector(
        len(to), len(cc), len(p.bcc.addresses), len(p.envelope), len(visible),
        len({a.rpartition("@")[2] for a in visible}), sum(1 for a in visible if a not in env),
        int(p.run_together), int(p.has_bcc), int(bool(p.to.group or p.cc.group)),
        int(bool(p.to.semicolon or p.cc.semicolon)),
        min(65535, len(p.to.unparseable) + len(p.cc.unparseable) + len(p.bcc.unparseable)),
        p.event.size_bytes or 0, p.event.sent_at_ms,
    )


def features_from_row(row: Sequence[Any] | Mapping[str, Any]) -> tuple[float, ...]:
    """The feature vector of a stored row: a mapping by column name, or a sequence in ``COLUMNS`` order."""
    if isinstance(row, Mapping):
        row = [row[c] for c in COLUMNS]
    return _vector(*(int(v) for v in row))


# --- the model ---------------------------------------------------------------------------------

@dataclass
class AnomalyModel:
    """A fitted forest plus what is needed to use it honestly later: threshold, provenance."""

    service: str
    forest: Any
    threshold: float
    meta: dict[str, Any] = field(default_factory=dict)
    features: tuple[str, ...] = FEATURES
    lo: tuple[float, ...] = ()        # per-feature training min / max (the range guard)
    hi: tuple[float, ...] = ()
    range_guard: bool = True

    # scoring ---------------------------------------------------------------------------------
    def score_vectors(self, x: np.ndarray) -> np.ndarray:
        """Higher = more anomalous (sklearn's ``score_samples`` negated; about 0.35-0.8 in practice)."""
        return -self.forest.score_samples(np.asarray(x, dtype=np.float64))

    def score(self, parsed: ParsedEvent) -> float:
        return float(self.score_vectors(np.array([features_from_parsed(parsed)]))[0])

    def out_of_range(self, vec: Sequence[float]) -> list[str]:
        """Guarded features (counts and header flags) outside anything seen in training.

        Why: a tree never splits on a feature that was constant in training, so an IsolationForest
        is blind to, say, the first Cc ever on a service whose history has none — exactly the shape
        of a leak (docs/model.md measures it). Size and hour are not guarded: their tails are normal.
        """
        if not self.range_guard or not self.lo:
            return []
        return [self.features[i] for i in _GUARDED if not (self.lo[i] <= vec[i] <= self.hi[i])]

    def is_anomalous(self, parsed: ParsedEvent, threshold: float | None = None) -> bool:
        vec = features_from_parsed(parsed)
        score = float(self.score_vectors(np.array([vec]))[0])
        return score > (self.threshold if threshold is None else threshold) or bool(self.out_of_range(vec))

    # persistence -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> tuple[Path, Path]:
        """Write the artefact (pickle) and its JSON sidecar (``<path>.json``); returns both paths.

        The sidecar is what an operator (or a reviewer) reads without unpickling anything.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": ARTEFACT_FORMAT, "service": self.service, "features": list(self.features),
                   "threshold": self.threshold, "meta": self.meta, "forest": self.forest,
                   "lo": list(self.lo), "hi": list(self.hi), "range_guard": self.range_guard}
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
        side = sidecar_path(path)
        side.write_text(json.dumps(self.sidecar(), indent=2, sort_keys=True) + "\n")
        return path, side

    def sidecar(self) -> dict[str, Any]:
        return {"format": ARTEFACT_FORMAT, "service": self.service, "features": list(self.features),
                "threshold": self.threshold, "range_guard": self.range_guard,
                "training_min": list(self.lo), "training_max": list(self.hi), **self.meta}

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AnomalyModel":
        """Load an artefact written by ``save``. Only load artefacts you wrote: this unpickles."""
        with open(path, "rb") as f:
            payload = pickle.load(f)  # noqa: S301 - our own artefact from state_dir, never user input
        if not isinstance(payload, dict) or payload.get("format") != ARTEFACT_FORMAT:
            raise ValueError(f"{path}: not a mailaudit model artefact of format {ARTEFACT_FORMAT}")
        if tuple(payload["features"]) != FEATURES:
            raise ValueError(f"{path}: trained on features {payload['features']}, this version computes {list(FEATURES)}")
        return cls(payload["service"], payload["forest"], float(payload["threshold"]),
                   dict(payload.get("meta") or {}), tuple(payload["features"]),
                   tuple(payload["lo"]), tuple(payload["hi"]), bool(payload["range_guard"]))


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(str(path) + ".json")


def calibrate(scores: np.ndarray, alerts_per: int = DEFAULT_ALERTS_PER) -> float:
    """The threshold that flags at most one in ``alerts_per`` training messages (strictly above it).

    With fewer than ``alerts_per`` training messages this is the highest training score: nothing
    seen in training alerts. The training history is assumed benign; an incident inside it is
    learnt as normal, so train on a window the operator knows was clean.
    """
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if s.size == 0:
        raise ValueError("no training scores")
    k = int(math.floor(s.size / alerts_per))      # messages allowed above the threshold
    return float(s[max(0, s.size - 1 - k)])


def train(service: str, x: np.ndarray, *, alerts_per: int = DEFAULT_ALERTS_PER, random_state: int = 0,
          n_estimators: int = 200, max_samples: int = 512, training_from: str | None = None,
          training_to: str | None = None, range_guard: bool = True) -> AnomalyModel:
    """Fit and calibrate one service's model on its feature matrix (rows = messages)."""
    import sklearn
    from sklearn.ensemble import IsolationForest

    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(FEATURES):
        raise ValueError(f"expected an (n, {len(FEATURES)}) feature matrix, got {x.shape}")
    if x.shape[0] < 50:
        raise ValueError(f"only {x.shape[0]} messages of history for {service!r}; need at least 50")
    forest = IsolationForest(n_estimators=n_estimators, max_samples=min(max_samples, x.shape[0]),
                             contamination="auto", random_state=random_state, n_jobs=1)
    forest.fit(x)
    model = AnomalyModel(service, forest, 0.0, lo=tuple(float(v) for v in x.min(axis=0)),
                         hi=tuple(float(v) for v in x.max(axis=0)), range_guard=range_guard)
    model.threshold = calibrate(model.score_vectors(x), alerts_per)
    model.meta = {
        "model": "IsolationForest", "sklearn_version": sklearn.__version__,
        "training_size": int(x.shape[0]), "alerts_per": int(alerts_per), "random_state": random_state,
        "n_estimators": n_estimators, "max_samples": int(min(max_samples, x.shape[0])),
        "trained_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "training_from": training_from, "training_to": training_to,
    }
    return model


def load_models(path: str | os.PathLike) -> dict[str, AnomalyModel]:
    """``detect.model_path`` as a file (one service's artefact) or a directory (the newest per service)."""
    p = Path(path)
    if p.is_file():
        m = AnomalyModel.load(p)
        return {m.service: m}
    newest: dict[str, tuple[float, AnomalyModel]] = {}
    for f in sorted(p.glob("*.pkl")):
        m = AnomalyModel.load(f)
        t = f.stat().st_mtime
        if m.service not in newest or t >= newest[m.service][0]:
            newest[m.service] = (t, m)
    return {s: m for s, (_, m) in newest.items()}


# --- the live hook -----------------------------------------------------------------------------

def anomaly_alert(model: AnomalyModel, parsed: ParsedEvent, *, threshold: float | None = None,
                  detected_at_ms: int | None = None, window_ms: int = _HOUR_MS) -> Alert | None:
    """An ``anomaly`` alert for ``parsed`` if it scores above the threshold, else None.

    ``threshold``: ``detect.model_threshold`` when set, else the calibrated one. ``detected_at_ms``:
    the wall clock of the live detector; None stamps the trigger's ``sent_at`` (deterministic, as in
    a backtest). Anomalies of one service/scope within one event-time hour share an incident id.
    Evidence holds the score, threshold and feature values — counts and flags, never an address.
    """
    e = parsed.event
    if e.service != model.service:
        return None
    th = model.threshold if threshold is None else threshold
    vec = features_from_parsed(parsed)
    score = float(model.score_vectors(np.array([vec]))[0])
    outside = model.out_of_range(vec)
    if not (score > th or outside):
        return None
    scope = e.campaign or e.template or None
    t = e.sent_at_ms
    return Alert(
        alert_id=alert_id(e.event_id, "anomaly"),
        incident_id=incident_id(e.service, scope, ANOMALY, t - t % window_ms),
        status="open", kind="anomaly", severity="warning", service=e.service,
        campaign=e.campaign, template=e.template, trigger_event_id=e.event_id,
        first_seen_ms=t, last_seen_ms=t, copies=1, exposed=0,
        detected_at_ms=t if detected_at_ms is None else detected_at_ms,
        summary=(f"{e.service}: message unlike this service's history (anomaly score {score:.3f}, threshold {th:.3f}"
                 + (f"; never seen in training: {', '.join(outside)})" if outside else ")")),
        evidence={"score": round(score, 6), "threshold": round(th, 6),
                  "model_trained_at": model.meta.get("trained_at"), "out_of_training_range": outside,
                  "features": {n: round(v, 6) for n, v in zip(model.features, vec)}},
    )
