"""Realistic demo data for screenshots and manual checks: simulated traffic, detected for real.

The simulator's ten services over the last ``hours`` (daily rhythm, newsletter bursts, support
threads, Undisclosed-recipients mail...) go through the real ingest path (parse, hash, mask,
``EventRows``) into ``events``, and through the real ``DetectionEngine`` into ``alerts``,
``incidents`` and ``exposures`` (via the detector's sink column builders), so what the pages show
is what the product would show. Incidents are injected near the end (still open) and, on a second
short stream, a few hours earlier (resolved by then).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from mailaudit.config import Config
from mailaudit.detect.engine import DetectionEngine
from mailaudit.detect.sinks import alert_columns, exposure_columns, incident_columns
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.parsed import parse_event
from mailaudit.ingest.privacy import AddressHasher
from mailaudit.ingest.rows import EventRows
from mailaudit.ingest.simulator import Simulator
from mailaudit.ingest.wire import Event
from mailaudit.ingest.writer import insert_events


@dataclass
class DemoLoad:
    events: int = 0
    alerts: int = 0
    exposure_copies: int = 0
    incidents: set[str] = field(default_factory=set)
    open_incident: str | None = None
    exposed_sample: str | None = None      # a raw address the open incident exposed (to search for)


def _streams(now_ms: int, hours: float, rate: float, seed: int) -> Iterable[tuple[Simulator, Iterable[Event]]]:
    span = hours * 3600.0
    live = Simulator(seed=seed, start_ms=now_ms - int(span * 1000), rate=rate)
    yield live, live.events(span, incident="concatenated_to", incident_at_s=span - 14 * 60, incident_size=600)
    # Earlier and short: a Cc-instead-of-Bcc leak on billing, long resolved by now.
    earlier = Simulator(seed=seed + 1, start_ms=now_ms - int(min(span, 5 * 3600) * 1000), rate=max(1.0, rate / 20),
                        services=["billing"])
    yield earlier, earlier.events(900, incident="cc_leak", incident_at_s=300)


def load(cfg: Config, db: Database, hours: float = 24.0, rate: float = 6.0, seed: int = 21,
         now_ms: int | None = None, log: Callable[[str], None] = lambda s: None) -> DemoLoad:
    now_ms = now_ms or int(time.time() * 1000)
    hasher = AddressHasher(cfg.require_hash_key(), cfg.privacy.hash_key_id)
    out = DemoLoad()
    alerts: list[dict] = []
    exposures: dict[tuple[str, str], dict] = {}
    for sim, events in _streams(now_ms, hours, rate, seed):
        engine = DetectionEngine(cfg.detect, clock=None, hasher=hasher)
        rows = EventRows(cfg.privacy, hasher)
        envelopes: dict[str, tuple[str, str, list[str]]] = {}
        for e in events:
            if e.sent_at_ms >= now_ms:
                break
            p = parse_event(e)
            rows.add(p)
            if p.strangers or p.has_bcc or p.run_together:
                envelopes[e.event_id] = (e.service, e.campaign or e.template or "",
                                         [hasher.hash(a) for a in p.envelope])
            alerts.extend(a.to_dict() for a in engine.process(e, p))
            _collect(engine, envelopes, exposures)
            if len(rows) >= 50_000:
                out.events += insert_events(db, rows)
                rows = EventRows(cfg.privacy, hasher)
                log(f"events: {out.events:,}")
        alerts.extend(a.to_dict() for a in engine.advance(now_ms - int(cfg.detect.lateness_s * 1000)))
        _collect(engine, envelopes, exposures)
        out.events += insert_events(db, rows)
        for inj in sim.injected:
            if inj.kind == "concatenated_to" and inj.exposed:
                out.exposed_sample = inj.exposed[len(inj.exposed) // 2]
    if alerts:
        db.insert("alerts", alert_columns(alerts))
        db.insert("incidents", incident_columns(alerts))
    if exposures:
        db.insert("exposures", exposure_columns(list(exposures.values())))
    out.alerts = len(alerts)
    out.exposure_copies = len(exposures)
    out.incidents = {a["incident_id"] for a in alerts}
    opened = [a for a in alerts if a["kind"] == "concatenated_to"]
    out.open_incident = opened[-1]["incident_id"] if opened else None
    log(f"loaded {out.events:,} events, {out.alerts} alerts, {len(out.incidents)} incidents")
    return out


def _collect(engine: DetectionEngine, envelopes: dict, exposures: dict) -> None:
    """Fold the engine's (copy, address) exposure rows into one row per copy, as the detector does."""
    for r in engine.take_exposures():
        rec = exposures.get((r.incident_id, r.event_id))
        if rec is None:
            service, campaign, recipients = envelopes.get(r.event_id, ("", "", []))
            rec = exposures[(r.incident_id, r.event_id)] = {
                "incident_id": r.incident_id, "event_id": r.event_id, "sent_ms": r.sent_at_ms,
                "service": service, "campaign": campaign, "key_id": r.key_id, "exposed_hashes": [],
                "exposed_masked": [], "exposed_domains": [], "recipient_hashes": recipients}
        rec["exposed_hashes"].append(r.address_hash)
        rec["exposed_masked"].append(r.address_masked)
        rec["exposed_domains"].append(r.domain)
