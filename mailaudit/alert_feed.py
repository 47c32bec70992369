"""Alerts as a person at a terminal reads them: `mailaudit run` prints each incident as it opens
and updates, with what to do next, and a summary when it stops.

Pure formatting over alert v1 dicts (as published on ``mail.alerts``); ``mailaudit run`` does the
reading. Each line starts with the incident id's first block so the lines of one incident line up.
"""

from __future__ import annotations

from collections import Counter


def dashboard_link(base_url: str | None, incident_id: str) -> str | None:
    return f"{base_url.rstrip('/')}/incidents?incident={incident_id}" if base_url else None


def exposure_command(incident_id: str, prefix: str = "") -> str:
    return f"{prefix}mailaudit exposure {incident_id} --format csv"


def format_alert(alert: dict, base_url: str | None = None, prefix: str = "") -> list[str]:
    """The lines for one alert: a headline, and for an opening alert the link and the next command."""
    scope = alert.get("campaign") or alert.get("template") or "-"
    status = str(alert.get("status", "")).upper()
    iid = str(alert.get("incident_id", ""))
    head = (f"{str(alert.get('severity', '')).upper():8} {status:8} {alert.get('kind', '')}  "
            f"{alert.get('service', '')}/{scope}  copies {alert.get('copies', 0)}  exposed {alert.get('exposed', 0)}  "
            f"incident {iid}")
    lines = [head]
    if alert.get("status") == "open":
        if alert.get("summary"):
            lines.append(f"    {alert['summary']}")
        link = dashboard_link(base_url, iid)
        if link:
            lines.append(f"    dashboard  {link}")
        if int(alert.get("exposed") or 0) > 0:
            lines.append(f"    next       {exposure_command(iid, prefix)}")
        containment = (alert.get("evidence") or {}).get("containment")
        if containment and containment.get("action") == "recommend_hold":
            target = containment.get("service", "")
            if containment.get("campaign"):
                target += f" --campaign {containment['campaign']}"
            lines.append(f"    contain    {prefix}mailaudit hold {target}")
    return lines


class FeedSummary:
    """Running totals of what the feed showed, for the closing summary."""

    def __init__(self) -> None:
        self.incidents: dict[str, dict] = {}
        self.alerts = 0

    def add(self, alert: dict) -> None:
        self.alerts += 1
        iid = str(alert.get("incident_id", ""))
        cur = self.incidents.setdefault(iid, {"severity": alert.get("severity"), "kind": alert.get("kind"),
                                              "service": alert.get("service"), "exposed": 0, "copies": 0,
                                              "status": alert.get("status")})
        cur["status"] = alert.get("status")
        cur["exposed"] = max(cur["exposed"], int(alert.get("exposed") or 0))
        cur["copies"] = max(cur["copies"], int(alert.get("copies") or 0))

    def lines(self, events_stored: int | None = None) -> list[str]:
        by_sev = Counter(i["severity"] for i in self.incidents.values())
        sev = ", ".join(f"{n} {s}" for s, n in sorted(by_sev.items())) or "none"
        out = [f"summary: {len(self.incidents)} incident(s) ({sev}), {self.alerts} alert(s)"
               + (f", {events_stored} events stored" if events_stored is not None else "")]
        for iid, i in self.incidents.items():
            out.append(f"  {str(i['severity']).upper():8} {i['kind']}  {i['service']}  copies {i['copies']}  "
                       f"exposed {i['exposed']}  {i['status']}  incident {iid}")
        return out
