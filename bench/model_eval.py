"""Does a per-service IsolationForest earn a place beside the rules? Judged on the pattern catalogue.

Issue 12 item 4. For every catalogue pattern (tests/corpus) the service's model is fitted on its own
*history* — the first half of the pattern's time span, which always ends before a leak starts — and
calibrated there (one flag per 10,000 training messages at most). It then scores the rest of the
stream the way a live detector would: in batches, as polls deliver them. A flagged message opens or
updates one ``anomaly`` incident per (service, campaign or template); a flag more than
``resolve_after_s`` after the previous one opens a new incident (the engine's incident rule).

Per half of the frozen split (tests/corpus/split.json) it reports, for three designs:

* ``forest``: score above the calibrated threshold;
* ``forest_guard``: ... or a count/flag feature outside its training min/max (the former design);
* ``forest_magnitude``: ... or an exposure feature (visible addresses, strangers, visible domains)
  an order of magnitude above its training maximum, or an exposure flag (run-together, Bcc header,
  semicolons) never seen in training;
* ``forest_shape``: a forest on the header-shape features alone (no size, no hour of day), score
  above its calibrated threshold;

leaks caught in their class's deadline, those of them the rules (``bench detection`` with the
shipped config) do not catch in time, and false incidents on benign messages (benign patterns, and
the non-leak messages of leak patterns after their history) per 100k. The decision is taken on the
tuning half; the test half ("team-built held-out") is reported beside it.

It also measures the scoring cost per message: one at a time, and per poll batch (100, 500).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from mailaudit.ingest.parsed import parse_event
from mailaudit.ingest.wire import validate_event

ALERTS_PER = 10_000
RESOLVE_AFTER_MS = 900_000
MIN_HISTORY = 50
COST_PATTERN = "sms_style_alerts_burst_known"    # a busy one-To service: ~2,900 messages
_LN10 = math.log(10.0)


# --- features and model (self-contained: the product no longer ships the model, see docs/model.md) ---

FEATURES = ("log_to", "log_cc", "log_bcc", "log_env", "log_visible", "log_visible_domains",
            "log_strangers", "run_together", "has_bcc", "is_group", "semicolon", "log_unparseable",
            "log_size", "hour_sin", "hour_cos")
_GUARDED = tuple(range(12))                    # counts and flags (not size, not hour)
_EXPOSURE_COUNTS = (4, 5, 6)                   # log_visible, log_visible_domains, log_strangers
_EXPOSURE_FLAGS = (7, 8, 10)                   # run_together, has_bcc, semicolon


def features(p) -> tuple[float, ...]:
    """Message shape: header counts (log1p), exposure flags, size and hour of day (sin/cos)."""
    to, cc = p.to.addresses, p.cc.addresses
    visible = p.visible
    env = set(p.envelope)
    hour = (p.event.sent_at_ms // 3_600_000) % 24
    lg = math.log1p
    return (lg(len(to)), lg(len(cc)), lg(len(p.bcc.addresses)), lg(len(p.envelope)), lg(len(visible)),
            lg(len({a.rpartition("@")[2] for a in visible})), lg(sum(1 for a in visible if a not in env)),
            float(p.run_together), float(p.has_bcc), float(bool(p.to.group or p.cc.group)),
            float(bool(p.to.semicolon or p.cc.semicolon)),
            lg(min(65535, len(p.to.unparseable) + len(p.cc.unparseable) + len(p.bcc.unparseable))),
            lg(p.event.size_bytes or 0), math.sin(hour * 2 * math.pi / 24), math.cos(hour * 2 * math.pi / 24))


def calibrate(scores: np.ndarray, alerts_per: int = ALERTS_PER) -> float:
    """The threshold letting at most one in ``alerts_per`` training messages through (strictly above)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    k = int(math.floor(s.size / alerts_per))
    return float(s[max(0, s.size - 1 - k)])


class Model:
    def __init__(self, x: np.ndarray, random_state: int = 0, n_estimators: int = 200, max_samples: int = 512):
        from sklearn.ensemble import IsolationForest

        self.forest = IsolationForest(n_estimators=n_estimators, max_samples=min(max_samples, len(x)),
                                      random_state=random_state, n_jobs=1).fit(x)
        self.lo, self.hi = x.min(axis=0), x.max(axis=0)
        self.threshold = calibrate(self.score(x))
        ns = len(_GUARDED)
        self.shape = IsolationForest(n_estimators=n_estimators, max_samples=min(max_samples, len(x)),
                                     random_state=random_state, n_jobs=1).fit(x[:, :ns])
        self.shape_threshold = calibrate(-self.shape.score_samples(x[:, :ns]))

    def score(self, x: np.ndarray) -> np.ndarray:
        return -self.forest.score_samples(x)

    def flags(self, x: np.ndarray) -> dict[str, np.ndarray]:
        forest = self.score(x) > self.threshold
        g = list(_GUARDED)
        guard = ((x[:, g] < self.lo[g]) | (x[:, g] > self.hi[g])).any(axis=1)
        c, f = list(_EXPOSURE_COUNTS), list(_EXPOSURE_FLAGS)
        mag = (x[:, c] > self.hi[c] + _LN10).any(axis=1) | (x[:, f] > self.hi[f]).any(axis=1)
        shape = -self.shape.score_samples(x[:, :len(_GUARDED)]) > self.shape_threshold
        return {"forest": forest, "forest_guard": forest | guard, "forest_magnitude": forest | mag,
                "forest_shape": shape}


DESIGNS = ("forest", "forest_guard", "forest_magnitude", "forest_shape")


def _incidents(idx: list[int], events, sent) -> int:
    """Campaign-level incidents: flags of one scope within ``RESOLVE_AFTER_MS`` of each other are one."""
    last: dict[str, int] = {}
    n = 0
    for i in idx:
        scope = events[i].campaign or events[i].template or ""
        if scope not in last or sent[i] - last[scope] > RESOLVE_AFTER_MS:
            n += 1
        last[scope] = sent[i]
    return n


def eval_pattern(p, scale: float = 1.0) -> dict[str, Any]:
    stream = p.generate(scale)
    events = [validate_event(e) for e in stream.events]
    sent = [e.sent_at_ms for e in events]
    leak = np.array([e.event_id in stream.leak_ids for e in events])
    first_leak = int(np.argmax(leak)) if leak.any() else None
    cut = sent[0] + (sent[-1] - sent[0]) // 2
    if first_leak is not None:
        cut = min(cut, sent[first_leak])
    hist = np.array([t < cut for t in sent])
    row: dict[str, Any] = {"pattern": p.name, "class": p.cls, "history": int(hist.sum()),
                           "scored": int((~hist).sum())}
    if hist.sum() < MIN_HISTORY:
        row["model"] = False                    # too little history to train: no model, no flags
        return row
    x = np.array([features(parse_event(e)) for e in events])
    m = Model(x[hist])
    live = ~hist
    flags = m.flags(x[live])
    live_idx = np.where(live)[0]
    row["model"] = True
    row["benign_scored"] = int((live & ~leak).sum())
    for d in DESIGNS:
        f = np.zeros(len(events), dtype=bool)
        f[live_idx] = flags[d]
        benign_idx = [int(i) for i in np.where(f & ~leak)[0]]
        r = {"false_flags": len(benign_idx), "false_incidents": _incidents(benign_idx, events, sent)}
        if first_leak is not None:
            hits = np.where(f & leak)[0]
            r["caught"] = bool(hits.size)
            r["leak_flags"] = int(hits.size)
            if hits.size:
                delay = (sent[hits[0]] - sent[first_leak]) / 1000.0
                r["delay_s"] = delay
                r["in_time"] = bool(hits[0] == first_leak) if p.deadline == "first_copy" else delay <= p.deadline
            else:
                r["in_time"] = False
        row[d] = r
    return row


def _cost(x: np.ndarray, m: Model) -> dict[str, float]:
    """Scoring cost per message (µs) of one 200-tree forest: one at a time, and per poll batch."""
    out = {}
    one = x[:200]
    t = time.perf_counter()
    for v in one:
        m.score(v[None, :])
    out["one_at_a_time_us"] = 1e6 * (time.perf_counter() - t) / len(one)
    for b in (100, 500):
        xb = np.resize(x, (b * 4, x.shape[1]))
        t = time.perf_counter()
        for i in range(0, len(xb), b):
            m.score(xb[i:i + b])
        out[f"batch_{b}_us"] = 1e6 * (time.perf_counter() - t) / len(xb)
    return out


def bench_model_eval(scale: float = 1.0, corpus_path: str | None = None, rules: dict | None = None,
                     **_ignored) -> dict[str, Any]:
    from mailaudit.bench.detection import bench_detection, load_corpus

    corpus = load_corpus(corpus_path)
    split = corpus.load_split()
    t0 = time.perf_counter()
    rules = rules or bench_detection(scale=scale, corpus_path=corpus_path)
    rules_in_time = {r["pattern"]: r.get("in_time", False) for r in rules["per_pattern"]}
    rows = [eval_pattern(corpus.PATTERNS[n], scale) for n in sorted(corpus.PATTERNS)]
    halves: dict[str, Any] = {}
    for h in ("tune", "test"):
        hr = [r for r in rows if r["pattern"] in split[h]]
        benign_msgs = sum(r.get("benign_scored", 0) for r in hr)
        leaks = [r for r in hr if r["class"] != "benign"]
        t: dict[str, Any] = {"label": "team-built held-out" if h == "test" else "tuning half (decision taken here)",
                             "patterns": len(hr), "patterns_without_model": sorted(r["pattern"] for r in hr if not r["model"]),
                             "leak_patterns": len(leaks), "benign_messages_scored": benign_msgs,
                             "rules_leaks_in_time": sum(int(rules_in_time[r["pattern"]]) for r in leaks)}
        for d in DESIGNS:
            with_model = [r for r in hr if r["model"]]
            caught = sorted(r["pattern"] for r in with_model if r["class"] != "benign" and r[d]["in_time"])
            false_inc = sum(r[d]["false_incidents"] for r in with_model)
            t[d] = {
                "leaks_in_time": len(caught),
                "beyond_rules": [n for n in caught if not rules_in_time[n]],
                "false_incidents": false_inc,
                "false_flags": sum(r[d]["false_flags"] for r in with_model),
                "false_incidents_per_100k": round(1e5 * false_inc / benign_msgs, 1) if benign_msgs else None,
                "false_incident_patterns": sorted(r["pattern"] for r in with_model if r[d]["false_incidents"]),
            }
        halves[h] = t
    # cost, on the largest history in the catalogue
    evs = [validate_event(e) for e in corpus.PATTERNS[COST_PATTERN].generate(max(scale, 0.2)).events]
    x = np.array([features(parse_event(e)) for e in evs])
    tf = time.perf_counter()
    for e in evs[:2000]:
        features(parse_event(e))
    feat_us = 1e6 * (time.perf_counter() - tf) / min(2000, len(evs))
    cost = _cost(x, Model(x[: len(x) // 2]))
    cost["features_incl_parse_us"] = feat_us
    return {"scale": scale, "alerts_per": ALERTS_PER, "halves": halves, "cost_us_per_message": cost,
            "per_pattern": rows, "seconds": round(time.perf_counter() - t0, 1)}


if __name__ == "__main__":
    import json
    import sys

    r = bench_model_eval()
    json.dump({k: v for k, v in r.items() if k != "per_pattern"}, sys.stdout, indent=2, default=str)
    print()
