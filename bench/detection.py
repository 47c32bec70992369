"""`mailaudit bench detection`: every catalogue pattern through the real backtest path, judged per pattern.

Each pattern (tests/corpus, issue 12 item 3) is run on its own through ``detect.backtest.run_backtest``
— the code ``mailaudit backtest`` runs — with the shipped default ``DetectConfig`` (or the one passed
in). The bench taps the input and the output of that run, so it knows which event was being
processed when each alert came out: the detection time of an alert is the service's event clock at
that moment (the latest ``sent_at`` fed so far), not the ``detected_at`` stamp, which in a backtest is
the trigger's own ``sent_at`` and would hide a late decision. Alerts that only come out of the final
``flush()`` are dated ``last event + lateness_s``: the earliest a live detector, advancing its
watermark on the wall clock, could have raised them.

Judgement, per pattern:
* benign: every alert of any kind and status is a false alarm;
* leak: alerts before the first leaking copy are false alarms on the history; the leak is *caught*
  by an alert emitted at or after the first leaking copy whose trigger is a leaking copy or was sent
  after the leak began; *in time* when that happens on the first leaking copy (class deadline
  ``first_copy``) or within the class deadline in seconds of event time.

Totals are given per half of the frozen split (tests/corpus/split.json). The test half is labelled
"team-built held-out": the team wrote both halves, so it is held out from tuning, not unseen data.
"""

from __future__ import annotations

import bisect
import importlib
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from mailaudit.config import DetectConfig
from mailaudit.detect.backtest import run_backtest
from mailaudit.ingest.wire import parse_time

LABELS = {"tune": "tuning half (designs and thresholds are chosen on this half only)",
          "test": "team-built held-out"}


def load_corpus(path: str | Path | None = None):
    """Import the catalogue package from a checkout (``tests/corpus`` next to ``bench/``) or ``path``."""
    tests = Path(path) if path else Path(__file__).resolve().parent.parent / "tests"
    if not (tests / "corpus" / "__init__.py").is_file():
        from mailaudit.cli import UserError
        raise UserError(f"pattern catalogue not found under {tests} (run from a source checkout)")
    if str(tests) not in sys.path:
        sys.path.insert(0, str(tests))
    return importlib.import_module("corpus")


class _Tap:
    """Counts the lines the backtest has pulled and records alerts as they are written."""

    def __init__(self, lines: list[bytes]):
        self.lines = lines
        self.idx = -1
        self.alerts: list[tuple[int, dict]] = []

    def feed(self):
        for i, line in enumerate(self.lines):
            self.idx = i
            yield line
        self.idx = len(self.lines)               # what follows comes from flush()

    def write(self, s: str) -> int:
        if s != "\n":
            self.alerts.append((self.idx, json.loads(s)))
        return len(s)


class _Null:
    def write(self, s: str) -> int:
        return len(s)


def run_pattern(p, cfg: DetectConfig, scale: float = 1.0, prepare=None) -> dict[str, Any]:
    """One pattern through ``run_backtest``; the per-pattern verdict (see the module docstring).

    ``prepare(pattern, stream, cfg) -> cfg``: derive the config for this pattern (e.g. per-service
    overrides an experiment wants to try); the default runs every pattern with ``cfg`` as given.
    """
    stream = p.generate(scale)
    events = stream.events
    if prepare is not None:
        cfg = prepare(p, stream, cfg)
    lines = [json.dumps(e, ensure_ascii=False, separators=(",", ":")).encode("utf-8") for e in events]
    sent = [parse_time(e["sent_at"]) for e in events]
    clock, m = [], -(1 << 62)
    for t in sent:
        m = max(m, t)
        clock.append(m)
    end_ms = clock[-1] + int(cfg.lateness_s * 1000)
    tap = _Tap(lines)
    t0 = time.perf_counter()
    res = run_backtest(tap.feed(), cfg, tap, _Null(), jobs=1)
    elapsed = time.perf_counter() - t0
    by_id = {e["event_id"]: i for i, e in enumerate(events)}

    def at(idx: int) -> int:
        return clock[idx] if idx < len(clock) else end_ms

    out: dict[str, Any] = {"pattern": p.name, "class": p.cls, "deadline": p.deadline, "events": len(events),
                           "alerts": res.alerts, "kinds": dict(Counter(a["kind"] for _, a in tap.alerts)),
                           "seconds": round(elapsed, 3)}
    if p.cls == "benign":
        out["false_alerts"] = len(tap.alerts)
        out["false_incidents"] = len({a["incident_id"] for _, a in tap.alerts})
        out["ok"] = not tap.alerts
        out["false_sample"] = [_brief(a, at(i)) for i, a in tap.alerts[:3]]
        return out
    first = next(i for i, e in enumerate(events) if e["event_id"] in stream.leak_ids)
    start_ms = sent[first]
    before = [(i, a) for i, a in tap.alerts if i < first]
    hits = []
    for i, a in tap.alerts:
        if i < first or a["status"] == "resolved":
            continue
        trig = by_id.get(a["trigger_event_id"])
        if trig is not None and (events[trig]["event_id"] in stream.leak_ids or sent[trig] >= start_ms):
            hits.append((i, a))
    out.update(leak_copies=len(stream.leak_ids), history_alerts=len(before),
               history_sample=[_brief(a, at(i)) for i, a in before[:3]], caught=bool(hits))
    if hits:
        i, a = hits[0]
        delay = (at(i) - start_ms) / 1000.0
        out.update(first_alert_kind=a["kind"], first_alert_severity=a["severity"],
                   copies_before_alert=sum(1 for j in range(first, min(i, len(events)))
                                           if events[j]["event_id"] in stream.leak_ids),
                   delay_s=round(delay, 3), on_first_copy=i == first,
                   caught_kinds=sorted({a["kind"] for _, a in hits}))
        out["in_time"] = (i == first) if p.deadline == "first_copy" else delay <= float(p.deadline)
    else:
        out.update(in_time=False, delay_s=None)
    out["ok"] = out["in_time"] and not before
    return out


def _brief(a: dict, clock_ms: int) -> dict:
    from mailaudit.ingest.wire import format_time
    return {"kind": a["kind"], "status": a["status"], "severity": a["severity"], "emitted_at": format_time(clock_ms),
            "summary": a["summary"][:160]}


def _totals(rows: list[dict], label: str) -> dict[str, Any]:
    leaks = [r for r in rows if r["class"] != "benign"]
    benign = [r for r in rows if r["class"] == "benign"]
    by_class: dict[str, dict] = {}
    for r in leaks:
        c = by_class.setdefault(r["class"], {"patterns": 0, "caught": 0, "in_time": 0})
        c["patterns"] += 1
        c["caught"] += int(r["caught"])
        c["in_time"] += int(r["in_time"])
    benign_msgs = sum(r["events"] for r in benign)
    false_inc = sum(r["false_incidents"] for r in benign)
    t = {
        "label": label,
        "leak_patterns": len(leaks),
        "leaks_caught": sum(int(r["caught"]) for r in leaks),
        "leaks_in_time": sum(int(r["in_time"]) for r in leaks),
        "leaks_missed": sorted(r["pattern"] for r in leaks if not r["caught"]),
        "leaks_late": sorted(r["pattern"] for r in leaks if r["caught"] and not r["in_time"]),
        "leak_history_alerts": sum(r["history_alerts"] for r in leaks),
        "by_class": by_class,
        "benign_patterns": len(benign),
        "benign_patterns_alerting": sorted(r["pattern"] for r in benign if not r["ok"]),
        "benign_alerts": sum(r["false_alerts"] for r in benign),
        "benign_incidents": false_inc,
        "benign_messages": benign_msgs,
        "false_incidents_per_100k_benign_messages": round(1e5 * false_inc / benign_msgs, 2) if benign_msgs else None,
    }
    t["goal_met"] = t["leaks_in_time"] == t["leak_patterns"] and t["benign_alerts"] == 0 \
        and t["leak_history_alerts"] == 0
    return t


def bench_detection(scale: float = 1.0, half: str | None = None, patterns: list[str] | None = None,
                    cfg: DetectConfig | None = None, corpus_path: str | None = None, prepare=None,
                    per_pattern: bool = True, throughput: bool = True, **_ignored) -> dict[str, Any]:
    """Per-pattern results and per-half totals. ``half``: ``tune``/``test`` only; ``patterns``: names only."""
    corpus = load_corpus(corpus_path)
    split = corpus.load_split()
    cfg = cfg or DetectConfig()
    names = sorted(corpus.PATTERNS)
    if half:
        if half not in ("tune", "test"):
            raise ValueError(f"half must be 'tune' or 'test', got {half!r}")
        names = [n for n in names if n in split[half]]
    if patterns:
        unknown = sorted(set(patterns) - set(corpus.PATTERNS))
        if unknown:
            raise ValueError(f"unknown patterns: {', '.join(unknown)}")
        names = [n for n in names if n in patterns]
    t0 = time.perf_counter()
    rows = [run_pattern(corpus.PATTERNS[n], cfg, scale, prepare) for n in names]
    for r in rows:
        r["half"] = "tune" if r["pattern"] in split["tune"] else "test"
    halves = {h: _totals([r for r in rows if r["half"] == h], LABELS[h])
              for h in ("tune", "test") if any(r["half"] == h for r in rows)}
    events = sum(r["events"] for r in rows)
    secs = time.perf_counter() - t0
    bt = sum(r["seconds"] for r in rows)
    out: dict[str, Any] = {
        "scale": scale, "patterns": len(rows), "events": events, "seconds": round(secs, 2),
        "backtest_events_per_s": round(events / bt) if bt else None,
        "halves": halves,
        "note": ("test half = team-built held-out: held out from tuning by the frozen split, but written by "
                 "the same team; the outside held-out streams remain the judge"),
    }
    if throughput:
        out["cli_backtest"] = cli_throughput([corpus.PATTERNS[n] for n in names], scale)
    if per_pattern:
        out["per_pattern"] = rows
    return out


def cli_throughput(patterns, scale: float = 1.0, runs: int = 3) -> dict[str, Any]:
    """``mailaudit backtest --jobs 1`` over the whole selection as one file (patterns merged in event
    time; each pattern is its own service), wall clock of the CLI process, median of ``runs``."""
    import os
    import statistics
    import subprocess
    import tempfile

    evs = [e for p in patterns for e in p.generate(scale).events]
    evs.sort(key=lambda e: e["sent_at"])                  # format_time: fixed width, sorts as time
    fd, path = tempfile.mkstemp(suffix=".jsonl", prefix="mailaudit-catalogue-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for e in evs:
                f.write(json.dumps(e, ensure_ascii=False, separators=(",", ":")) + "\n")
        rates, outs = [], set()
        for _ in range(runs):
            t = time.perf_counter()
            res = subprocess.run([sys.executable, "-m", "mailaudit", "backtest", path, "--jobs", "1", "--quiet"],
                                 capture_output=True, check=True)
            rates.append(len(evs) / (time.perf_counter() - t))
            outs.add(res.stdout)
    finally:
        os.unlink(path)
    return {"events": len(evs), "events_per_s": round(statistics.median(rates)),
            "events_per_s_runs": [round(r) for r in rates], "identical_output_across_runs": len(outs) == 1,
            "note": "wall clock of the whole CLI process, start-up included; --jobs 1"}


def _table(r: dict) -> str:
    lines = []
    for h, t in r["halves"].items():
        lines.append(f"{h} ({t['label']}): leaks in time {t['leaks_in_time']}/{t['leak_patterns']} "
                     f"(caught {t['leaks_caught']}), benign patterns alerting {len(t['benign_patterns_alerting'])}"
                     f"/{t['benign_patterns']} ({t['benign_alerts']} alerts, {t['benign_incidents']} incidents "
                     f"on {t['benign_messages']} messages), history alerts in leak patterns {t['leak_history_alerts']}")
    for p in r.get("per_pattern", []):
        if p["class"] == "benign":
            lines.append(f"  [{p['half']}] {p['pattern']:40s} benign        {'ok' if p['ok'] else 'ALERTS ' + str(p['kinds'])}")
        else:
            lines.append(f"  [{p['half']}] {p['pattern']:40s} {p['class']:13s} "
                         f"{'in time' if p['in_time'] else ('LATE' if p['caught'] else 'MISSED')}"
                         f" delay={p['delay_s']} kinds={p.get('caught_kinds')} history_alerts={p['history_alerts']}")
    return "\n".join(lines)


if __name__ == "__main__":
    res = bench_detection()
    print(_table(res))
