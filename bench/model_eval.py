"""Does the anomaly model earn its place? Recall on the simulator's incidents and false alarms on benign
traffic, next to the rule engine on the very same streams.

Training: ``train_hours`` of benign traffic (seed 1), one model per service, calibrated at one alert
per 10,000 training messages (and, for context, per 1,000). Benign test: ``test_hours`` of another
seed (2). Incidents: one stream per kind (seed 3), the injected events scored by the model of the
service that hosts the incident; the rules run over the whole stream through ``DetectionEngine``.
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np

from mailaudit.config import DetectConfig
from mailaudit.detect.engine import DetectionEngine
from mailaudit.detect.model import calibrate, features_from_parsed, train
from mailaudit.ingest.parsed import parse_event
from mailaudit.ingest.simulator import INCIDENT_KINDS, Simulator

_CALIBRATIONS = (10_000, 1_000)


def _features_by_service(events) -> tuple[dict[str, list], dict[str, list]]:
    feats, ids = defaultdict(list), defaultdict(list)
    for e in events:
        feats[e.service].append(features_from_parsed(parse_event(e)))
        ids[e.service].append(e.event_id)
    return feats, ids


def _rules(events, service: str, start_ms: int, end_ms: int, injected: list[str]) -> dict:
    """Rule alerts on the incident's service during the incident (+5 min), and copies before the first."""
    eng = DetectionEngine(DetectConfig())
    alerts = []
    for e in events:
        alerts.extend(eng.process(e))
    alerts.extend(eng.flush())
    pos = {eid: i for i, eid in enumerate(injected)}
    hits = [a for a in alerts if a.service == service and a.status == "open"
            and start_ms <= a.last_seen_ms <= end_ms + 300_000]
    first = min((pos[a.trigger_event_id] for a in hits if a.trigger_event_id in pos), default=None)
    return {"caught": bool(hits), "kinds": sorted({a.kind for a in hits}),
            "copies_before_first_alert": first}


def _benign_rule_alerts(events) -> int:
    eng = DetectionEngine(DetectConfig())
    n = 0
    for e in events:
        n += len(eng.process(e))
    return n + sum(1 for a in eng.flush() if a.status == "open")


def bench_model_eval(rate: float = 5.0, train_hours: float = 24.0, test_hours: float = 6.0,
                     incident_s: float = 4 * 3600.0, incident_at_s: float = 3.5 * 3600.0,
                     random_state: int = 0) -> dict:
    t0 = time.perf_counter()
    feats, _ = _features_by_service(Simulator(seed=1, rate=rate).events(train_hours * 3600))
    models, train_scores = {}, {}
    for service, rows in sorted(feats.items()):
        models[service] = train(service, np.array(rows), random_state=random_state)
        train_scores[service] = models[service].score_vectors(np.array(rows))
    thresholds = {n: {s: calibrate(train_scores[s], n) for s in models} for n in _CALIBRATIONS}
    train_s = time.perf_counter() - t0

    benign = list(Simulator(seed=2, rate=rate).events(test_hours * 3600))
    bf, bids = _features_by_service(benign)
    benign_scores = {s: models[s].score_vectors(np.array(rows)) for s, rows in bf.items()}
    benign_range = {s: np.array([bool(models[s].out_of_range(v)) for v in rows]) for s, rows in bf.items()}
    n_benign = sum(len(v) for v in benign_scores.values())
    false_alarms = {}
    for n in _CALIBRATIONS:
        per = {s: int((sc > thresholds[n][s]).sum()) for s, sc in benign_scores.items()}
        false_alarms[n] = {"total": sum(per.values()), "per_10k": 1e4 * sum(per.values()) / n_benign,
                           "by_service": per}
    per = {s: int(((sc > thresholds[10_000][s]) | benign_range[s]).sum()) for s, sc in benign_scores.items()}
    false_alarms["guarded"] = {"total": sum(per.values()), "per_10k": 1e4 * sum(per.values()) / n_benign,
                               "by_service": per}
    # Where the benign flags come from: (service, campaign or template, UTC hour) of each flagged message.
    by_id = {e.event_id: e for e in benign}
    where: dict[str, int] = defaultdict(int)
    for s_, sc in benign_scores.items():
        for eid, hit in zip(bids[s_], (sc > thresholds[10_000][s_]) | benign_range[s_]):
            if hit:
                e = by_id[eid]
                where[f"{s_}/{e.campaign or e.template or '-'}/{(e.sent_at_ms // 3_600_000) % 24:02d}h"] += 1
    false_alarms["guarded"]["where"] = dict(sorted(where.items(), key=lambda kv: -kv[1])[:10])

    # Cost of the live hook: one message at a time (as the detector sees them) vs one matrix.
    m = models["billing"]
    sample = [parse_event(e) for e in benign[:300]]
    t1 = time.perf_counter()
    for p in sample:
        m.is_anomalous(p)
    one_ms = 1000 * (time.perf_counter() - t1) / len(sample)
    xb = np.array(bf["billing"])
    t1 = time.perf_counter()
    m.score_vectors(xb)
    batch_us = 1e6 * (time.perf_counter() - t1) / len(xb)

    incidents = {}
    for kind in INCIDENT_KINDS:
        sim = Simulator(seed=3, rate=rate)
        events = list(sim.events(incident_s, incident=kind, incident_at_s=incident_at_s))
        inj = sim.injected[0]
        injected = set(inj.event_ids)
        inj_events = [e for e in events if e.event_id in injected]
        x = np.array([features_from_parsed(parse_event(e)) for e in inj_events])
        scores = models[inj.service].score_vectors(x)
        outside = np.array([bool(models[inj.service].out_of_range(v)) for v in x])
        row = {"service": inj.service, "injected": len(inj_events),
               "score_median": float(np.median(scores)), "rules": _rules(events, inj.service, inj.start_ms,
                                                                         inj.end_ms, inj.event_ids)}
        for n in _CALIBRATIONS:
            flagged = scores > thresholds[n][inj.service]
            row[f"model_1_per_{n}"] = {
                "caught": bool(flagged.any()), "recall": float(flagged.mean()),
                "copies_before_first_flag": int(np.argmax(flagged)) if flagged.any() else None,
                "threshold": thresholds[n][inj.service]}
        flagged = (scores > thresholds[10_000][inj.service]) | outside
        row["model_guarded"] = {"caught": bool(flagged.any()), "recall": float(flagged.mean()),
                                "copies_before_first_flag": int(np.argmax(flagged)) if flagged.any() else None}
        incidents[kind] = row

    beyond = [k for k, r in incidents.items()
              if (r["model_1_per_10000"]["caught"] or r["model_guarded"]["caught"]) and not r["rules"]["caught"]]
    return {
        "rate": rate, "train_hours": train_hours, "test_hours": test_hours, "incident_s": incident_s,
        "training_messages": {s: len(v) for s, v in sorted(feats.items())},
        "benign_test_messages": n_benign, "benign_rule_alerts": _benign_rule_alerts(benign),
        "false_alarms": false_alarms, "incidents": incidents,
        "incidents_caught_by_model_not_rules": beyond, "seconds": time.perf_counter() - t0,
        "train_seconds": train_s, "score_one_ms": one_ms, "score_batched_us_per_message": batch_us,
    }


def _table(r: dict) -> str:
    lines = ["| incident | service | injected | rules: caught (kinds), copies before 1st | forest 1/10k: recall, 1st flag "
             "| forest 1/1k: recall, 1st flag | forest 1/10k + range guard: recall, 1st flag |",
             "|---|---|---|---|---|---|---|"]
    for k, row in r["incidents"].items():
        ru = row["rules"]
        m1, m2, m3 = row["model_1_per_10000"], row["model_1_per_1000"], row["model_guarded"]
        lines.append(f"| {k} | {row['service']} | {row['injected']} | {'yes' if ru['caught'] else 'NO'} "
                     f"({', '.join(ru['kinds'])}), {ru['copies_before_first_alert']} | "
                     f"{m1['recall']:.1%}, {m1['copies_before_first_flag']} | {m2['recall']:.1%}, {m2['copies_before_first_flag']} | "
                     f"{m3['recall']:.1%}, {m3['copies_before_first_flag']} |")
    fa = r["false_alarms"]
    lines.append("")
    lines.append(f"Benign ({r['benign_test_messages']} messages, seed 2): rules {r['benign_rule_alerts']} alerts; "
                 f"model 1/10k {fa[10000]['total']} flags ({fa[10000]['per_10k']:.1f} per 10k), "
                 f"model 1/1k {fa[1000]['total']} flags ({fa[1000]['per_10k']:.1f} per 10k), "
                 f"model 1/10k + range guard {fa['guarded']['total']} flags ({fa['guarded']['per_10k']:.1f} per 10k)")
    lines.append(f"Benign flags by service/scope/hour: {fa['guarded']['where']}")
    lines.append(f"Scoring cost: {r['score_one_ms']:.2f} ms per message one at a time, "
                 f"{r['score_batched_us_per_message']:.1f} us per message in one matrix")
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys

    res = bench_model_eval()
    print(_table(res))
    json.dump(res, sys.stdout, indent=2, default=str)
    print()
