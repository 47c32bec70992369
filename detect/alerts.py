"""Alert format v1 (design.md §2): the one shape every sink receives.

Ids are UUIDv5 so that a replay, a backtest or a restarted detector emits the very same ids and sinks
can deduplicate:

* ``alert_id    = uuid5(NAMESPACE, f"{trigger_event_id}:{kind}")`` — and, for the ``resolved`` alert,
  which names the incident's last trigger, ``f"{trigger_event_id}:{kind}:resolved"`` so it never
  collides with the alert that trigger raised itself;
* ``incident_id = uuid5(NAMESPACE, f"{service}:{campaign or template or ''}:{category}:{window_start_ms}")``.

``NAMESPACE`` is fixed forever (changing it changes every id): the 16 bytes of ASCII "mailaudit-alerts".
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from mailaudit.ingest.wire import format_time, parse_time

NAMESPACE = uuid.UUID("6d61696c-6175-6469-742d-616c65727473")  # b"mailaudit-alerts"

DISCLOSURE = "disclosure"
SPIKE = "spike"
ANOMALY = "anomaly"

CATEGORY = {
    "concatenated_to": DISCLOSURE,
    "run_together": DISCLOSURE,
    "visible_disclosure": DISCLOSURE,
    "bcc_header": DISCLOSURE,
    "recipient_spike": SPIKE,
    "volume_spike": SPIKE,
    "anomaly": ANOMALY,
}

SEVERITIES = ("info", "warning", "critical")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}
STATUSES = ("open", "update", "resolved")


def alert_id(trigger_event_id: str, kind: str, resolved: bool = False) -> str:
    name = f"{trigger_event_id}:{kind}:resolved" if resolved else f"{trigger_event_id}:{kind}"
    return str(uuid.uuid5(NAMESPACE, name))


def incident_id(service: str, scope: str | None, category: str, window_start_ms: int) -> str:
    """``scope`` is the campaign, else the template, else empty (a service-wide incident)."""
    return str(uuid.uuid5(NAMESPACE, f"{service}:{scope or ''}:{category}:{window_start_ms}"))


def max_severity(a: str, b: str) -> str:
    return a if SEVERITY_RANK[a] >= SEVERITY_RANK[b] else b


@dataclass(slots=True)
class Alert:
    alert_id: str
    incident_id: str
    status: str
    kind: str
    severity: str
    service: str
    campaign: str | None
    template: str | None
    trigger_event_id: str
    first_seen_ms: int
    last_seen_ms: int
    copies: int
    exposed: int
    detected_at_ms: int
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    v: int = 1

    @property
    def category(self) -> str:
        return CATEGORY.get(self.kind, ANOMALY)

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "alert_id": self.alert_id,
            "incident_id": self.incident_id,
            "status": self.status,
            "kind": self.kind,
            "severity": self.severity,
            "service": self.service,
            "campaign": self.campaign,
            "template": self.template,
            "trigger_event_id": self.trigger_event_id,
            "first_seen": format_time(self.first_seen_ms),
            "last_seen": format_time(self.last_seen_ms),
            "copies": self.copies,
            "exposed": self.exposed,
            "detected_at": format_time(self.detected_at_ms),
            "summary": self.summary,
            "evidence": self.evidence,
        }

    def to_json(self) -> str:
        """Canonical encoding: sorted keys, no spaces, UTF-8 text — byte-identical across runs."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Alert":
        if d.get("v") != 1:
            raise ValueError(f"unsupported alert version {d.get('v')!r}")
        return cls(
            alert_id=d["alert_id"],
            incident_id=d["incident_id"],
            status=d["status"],
            kind=d["kind"],
            severity=d["severity"],
            service=d["service"],
            campaign=d.get("campaign"),
            template=d.get("template"),
            trigger_event_id=d["trigger_event_id"],
            first_seen_ms=parse_time(d["first_seen"]),
            last_seen_ms=parse_time(d["last_seen"]),
            copies=int(d["copies"]),
            exposed=int(d["exposed"]),
            detected_at_ms=parse_time(d["detected_at"]),
            summary=d["summary"],
            evidence=dict(d.get("evidence") or {}),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> "Alert":
        return cls.from_dict(json.loads(text))
