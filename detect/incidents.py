"""Incidents: one page per cause, not one per copy.

Every trigger (a leaking copy, an alerting spike bucket or message) is filed under the open incident of
its key ``(service, campaign or template or '', category)``. The first trigger opens it (``open``
alert); later ones update its running ``copies``/``exposed`` counts, and at most one ``update`` alert
goes out per ``update_interval_s`` of event time; when the service's watermark passes the last
trigger by ``resolve_after_s`` the incident is closed with a ``resolved`` alert carrying the final
counts. A later trigger of the same key opens a new incident (a new window start, so a new id).

Everything runs on event time, so a replay reproduces the same incidents, alerts and ids.

``exposed`` counts distinct addresses exactly up to ``exact_max`` per incident, then switches to a
HyperLogLog sketch (2^14 registers, 16 KiB, ~0.8 % standard error) and flags the count approximate,
so a 10-million-address leak costs the detector kilobytes, not gigabytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from mailaudit.detect.alerts import Alert, alert_id, incident_id, max_severity
from mailaudit.ingest.wire import format_time

_HLL_P = 14
_HLL_M = 1 << _HLL_P
_HLL_SHIFT = 64 - _HLL_P
_HLL_MASK = (1 << _HLL_SHIFT) - 1


class DistinctCounter:
    """Distinct 64-bit ids: an exact set up to ``exact_max``, then HyperLogLog."""

    __slots__ = ("exact", "registers", "exact_max")

    def __init__(self, exact_max: int = 100_000):
        self.exact: set[int] | None = set()
        self.registers: bytearray | None = None
        self.exact_max = exact_max

    @property
    def approximate(self) -> bool:
        return self.registers is not None

    def add(self, h: int) -> None:
        if self.exact is not None:
            self.exact.add(h)
            if len(self.exact) > self.exact_max:
                self._to_sketch()
            return
        self._add_sketch(h)

    def update(self, hs: Iterable[int]) -> None:
        for h in hs:
            self.add(h)

    def _to_sketch(self) -> None:
        self.registers = bytearray(_HLL_M)
        exact, self.exact = self.exact, None
        for h in exact:
            self._add_sketch(h)

    def _add_sketch(self, h: int) -> None:
        idx = h >> _HLL_SHIFT
        rho = _HLL_SHIFT - (h & _HLL_MASK).bit_length() + 1
        if rho > self.registers[idx]:
            self.registers[idx] = rho

    def __len__(self) -> int:
        if self.exact is not None:
            return len(self.exact)
        m = _HLL_M
        regs = self.registers
        est = (0.7213 / (1 + 1.079 / m)) * m * m / sum(2.0 ** -r for r in regs)
        zeros = regs.count(0)
        if est <= 2.5 * m and zeros:
            est = m * math.log(m / zeros)
        return int(round(est))


@dataclass(slots=True)
class Incident:
    id: str
    service: str
    scope: str
    category: str
    window_start_ms: int
    kind: str                         # kind of the opening alert; named again by the resolved alert
    severity: str
    first_seen_ms: int
    last_seen_ms: int
    last_alert_ms: int                # event time of the last open/update alert (rate limit)
    copies: int = 0
    exposed: DistinctCounter = field(default_factory=DistinctCounter)
    kinds: dict[str, int] = field(default_factory=dict)
    trigger_ids: set[str] | None = field(default_factory=set)   # dedup of re-delivered triggers (bounded)
    exposure_fps: dict[str, Any] = field(default_factory=dict)  # visible lists already counted (engine cache)
    last_event_id: str = ""
    last_event_ms: int = 0
    last_kind: str = ""
    last_campaign: str | None = None
    last_template: str | None = None
    last_summary: str = ""
    last_evidence: dict[str, Any] = field(default_factory=dict)


_MAX_TRIGGER_IDS = 50_000


class IncidentTracker:
    def __init__(self, update_interval_s: float = 60.0, resolve_after_s: float = 900.0,
                 exposed_exact_max: int = 100_000, clock: Callable[[], int] | None = None):
        self.update_ms = int(update_interval_s * 1000)
        self.resolve_ms = int(resolve_after_s * 1000)
        self.exposed_exact_max = exposed_exact_max
        self.clock = clock
        self.open: dict[str, dict[tuple[str, str], Incident]] = {}   # service -> (scope, category) -> incident

    @property
    def open(self) -> dict[str, dict[tuple[str, str], Incident]]:
        return self._open

    @open.setter
    def open(self, value: dict[str, dict[tuple[str, str], Incident]]) -> None:
        self._open = value
        # service -> a time no open incident of it resolves before (a lower bound: a trigger only moves
        # an incident's last_seen_ms forward). ``expire`` runs on every watermark step of a service, so
        # without it every event re-scanned all of the service's open incidents: a cost that grew with
        # them (hundreds in the latency bench's 3 minutes, each leak a new campaign).
        self._not_before: dict[str, int] = {}

    def get(self, service: str, scope: str | None, category: str) -> Incident | None:
        return self.open.get(service, {}).get((scope or "", category))

    def open_or_get(self, service: str, scope: str | None, category: str, sent_at_ms: int,
                    kind: str, severity: str) -> tuple[Incident, bool]:
        incs = self.open.setdefault(service, {})
        key = (scope or "", category)
        inc = incs.get(key)
        if inc is not None:
            return inc, False
        nb = self._not_before.get(service)
        if nb is not None and sent_at_ms + self.resolve_ms < nb:
            self._not_before[service] = sent_at_ms + self.resolve_ms
        inc = Incident(
            id=incident_id(service, scope, category, sent_at_ms),
            service=service, scope=scope or "", category=category, window_start_ms=sent_at_ms,
            kind=kind, severity=severity, first_seen_ms=sent_at_ms, last_seen_ms=sent_at_ms,
            last_alert_ms=sent_at_ms, exposed=DistinctCounter(self.exposed_exact_max),
        )
        incs[key] = inc
        return inc, True

    def seen_trigger(self, inc: Incident, event_id: str) -> bool:
        """True when this trigger event was already filed (an at-least-once re-delivery)."""
        ids = inc.trigger_ids
        if ids is None:
            return False
        if event_id in ids:
            return True
        if len(ids) >= _MAX_TRIGGER_IDS:
            inc.trigger_ids = None
        else:
            ids.add(event_id)
        return False

    def record(self, inc: Incident, new: bool, *, kind: str, severity: str, event_id: str,
               sent_at_ms: int, campaign: str | None, template: str | None, copies: int,
               summary: str, evidence: dict[str, Any]) -> Alert | None:
        """File one trigger; return the alert it raises (open, or a rate-limited update), if any."""
        inc.copies += copies
        inc.kinds[kind] = inc.kinds.get(kind, 0) + 1
        inc.severity = max_severity(inc.severity, severity)
        inc.first_seen_ms = min(inc.first_seen_ms, sent_at_ms)
        inc.last_seen_ms = max(inc.last_seen_ms, sent_at_ms)
        inc.last_event_id, inc.last_event_ms, inc.last_kind = event_id, sent_at_ms, kind
        inc.last_campaign, inc.last_template = campaign, template
        inc.last_summary, inc.last_evidence = summary, evidence
        if new:
            status = "open"
        elif sent_at_ms >= inc.last_alert_ms + self.update_ms:
            status = "update"
        else:
            return None
        inc.last_alert_ms = max(inc.last_alert_ms, sent_at_ms)
        return self._alert(inc, status, kind, event_id, sent_at_ms, campaign, template, summary, evidence)

    def expire(self, service: str, watermark_ms: int) -> list[Alert]:
        """Resolve the service's incidents whose last trigger is ``resolve_after_s`` behind the watermark."""
        incs = self._open.get(service)
        if not incs:
            return []
        nb = self._not_before.get(service)
        if nb is not None and watermark_ms <= nb:
            return []
        out = []
        resolve_ms = self.resolve_ms
        for key in [k for k, i in incs.items() if i.last_seen_ms + resolve_ms < watermark_ms]:
            out.append(self._resolve(incs.pop(key)))
        self._not_before[service] = min((i.last_seen_ms + resolve_ms for i in incs.values()), default=2**62)
        return out

    def close_all(self) -> list[Alert]:
        out = []
        for service in sorted(self.open):
            incs = self.open[service]
            for key in sorted(incs):
                out.append(self._resolve(incs[key]))
            incs.clear()
        return out

    def _resolve(self, inc: Incident) -> Alert:
        ev = dict(inc.last_evidence)
        ev["kinds"] = dict(sorted(inc.kinds.items()))
        ev["resolve_after_s"] = self.resolve_ms / 1000
        summary = (f"Resolved: {inc.copies} {'copies' if inc.category == 'disclosure' else 'messages'} "
                   f"between {_hm(inc.first_seen_ms)} and {_hm(inc.last_seen_ms)}; "
                   f"no new trigger for {self.resolve_ms // 1000} s. Last: {inc.last_summary}")
        return self._alert(inc, "resolved", inc.kind, inc.last_event_id, inc.last_event_ms,
                           inc.last_campaign, inc.last_template, summary, ev, resolved=True)

    def _alert(self, inc: Incident, status: str, kind: str, event_id: str, sent_at_ms: int,
               campaign: str | None, template: str | None, summary: str, evidence: dict[str, Any],
               resolved: bool = False) -> Alert:
        exposed = len(inc.exposed)
        if inc.exposed.approximate:
            evidence = dict(evidence, exposed_approximate=True)
        return Alert(
            alert_id=alert_id(event_id, kind, resolved=resolved),
            incident_id=inc.id,
            status=status,
            kind=kind,
            severity=inc.severity,
            service=inc.service,
            campaign=campaign,
            template=template,
            trigger_event_id=event_id,
            first_seen_ms=inc.first_seen_ms,
            last_seen_ms=inc.last_seen_ms,
            copies=inc.copies,
            exposed=exposed,
            detected_at_ms=self.clock() if self.clock is not None else sent_at_ms,
            summary=summary,
            evidence=evidence,
        )


def _hm(ms: int) -> str:
    return format_time(ms)[:19].replace("T", " ")
