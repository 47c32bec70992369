"""Offline detection over a file of wire-format events: the rules tuned on history before going live.

Same engine, same rules, same ids as the live detector; ``detected_at`` is each trigger's ``sent_at``
(no clock), so two runs over one file print the same bytes. Events are fed in file order: the file
should be sorted by event time within the lateness window, as the live topic is.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Callable, Iterable

from mailaudit.config import DetectConfig
from mailaudit.detect.alerts import Alert
from mailaudit.detect.engine import DetectionEngine
from mailaudit.ingest.wire import MalformedEvent, decode_event


@dataclass
class BacktestResult:
    lines: int = 0
    events: int = 0
    malformed: int = 0
    late: int = 0
    alerts: int = 0
    exposure_rows: int = 0
    elapsed_s: float = 0.0
    by_kind: Counter = field(default_factory=Counter)
    by_status: Counter = field(default_factory=Counter)
    incidents: set = field(default_factory=set)

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.by_kind.items())) or "none"
        return (f"backtest: {self.events} events ({self.malformed} malformed lines, {self.late} late), "
                f"{self.alerts} alerts in {len(self.incidents)} incidents [{kinds}], "
                f"{self.elapsed_s:.2f} s, {self.events_per_s:,.0f} events/s")


def run_backtest(lines: Iterable[bytes], cfg: DetectConfig, out: IO[str], err: IO[str], *,
                 extra_fields: Iterable[str] = (), hasher=None, exposure_out: IO[str] | None = None,
                 spike_factory: Callable | None = None) -> BacktestResult:
    """Decode, detect, print. Malformed lines get one warning each on ``err`` and never stop the run."""
    engine = DetectionEngine(cfg, clock=None, hasher=hasher, spike_factory=spike_factory)
    res = BacktestResult()
    extra = tuple(extra_fields)
    write = out.write
    t0 = time.perf_counter()

    def emit(alerts: list[Alert]) -> None:
        for a in alerts:
            write(a.to_json())
            write("\n")
            res.alerts += 1
            res.by_kind[a.kind] += 1
            res.by_status[a.status] += 1
            res.incidents.add(a.incident_id)
        if exposure_out is not None:
            rows = engine.take_exposures()
            for r in rows:
                exposure_out.write(json.dumps(r.to_dict(), sort_keys=True, separators=(",", ":")))
                exposure_out.write("\n")
            res.exposure_rows += len(rows)

    for n, line in enumerate(lines, 1):
        res.lines = n
        if not line.strip():
            continue
        try:
            event = decode_event(line, extra)
        except MalformedEvent as e:
            res.malformed += 1
            err.write(f"line {n}: {e.reason}: {e.detail}\n")
            continue
        alerts = engine.process(event)
        if alerts or exposure_out is not None:
            emit(alerts)
    emit(engine.flush())
    res.elapsed_s = time.perf_counter() - t0
    res.events = engine.stats["events"]
    res.late = engine.stats["late"]
    return res
