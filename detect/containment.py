"""Containment policy: what detection does besides alerting when a campaign is leaking.

``off``: nothing. ``notify``: the alert says a hold is recommended (evidence ``containment``).
``hold``: the first ``critical`` disclosure alert of an incident also publishes a ``hold`` for its
service/campaign on ``mail.control`` (through the outbox), which mailers using the SDK's guard mode
and the milter honour until an operator releases it. The policy is pure: it returns the command.
"""

from __future__ import annotations

from mailaudit.detect.alerts import DISCLOSURE, Alert
from mailaudit.ingest.publisher import control_record

MODES = ("off", "notify", "hold")


class ContainmentPolicy:
    def __init__(self, mode: str):
        if mode not in MODES:
            raise ValueError(f"detect.containment must be one of {', '.join(MODES)} (got {mode!r})")
        self.mode = mode

    def apply(self, alert: Alert) -> dict | None:
        """Annotate ``alert``; return an outbox control record when a hold must be published."""
        if self.mode == "off" or alert.category != DISCLOSURE or alert.severity != "critical" or alert.status != "open":
            return None
        scope = alert.campaign or alert.template
        target = {"service": alert.service, "campaign": scope}
        if self.mode == "notify":
            alert.evidence["containment"] = {"action": "recommend_hold", **target}
            return None
        alert.evidence["containment"] = {"action": "hold", **target}
        key, value = control_record("hold", alert.service, scope, reason=alert.summary, at_ms=alert.detected_at_ms,
                                    by="mailaudit-detect", incident_id=alert.incident_id)
        return {"type": "control", "key": key.decode(), "value": value.decode()}
