"""Incident expiry skips its scan until the earliest possible resolution (issue 16): the same alerts,
at the same watermarks, as the scan on every step it replaced."""

from __future__ import annotations

import random

from mailaudit.detect.incidents import IncidentTracker


def _drive(tracker: IncidentTracker, ops, rescan_each_time: bool) -> list[tuple]:
    out = []
    for op in ops:
        if op[0] == "trigger":
            _, svc, scope, t = op
            inc, new = tracker.open_or_get(svc, scope, "disclosure", t, "concatenated_to", "critical")
            a = tracker.record(inc, new, kind="concatenated_to", severity="critical", event_id=f"e{t}",
                               sent_at_ms=t, campaign=scope, template=None, copies=1, summary="s", evidence={})
            out.append(("alert", a.status, a.incident_id) if a else ("none",))
        elif op[0] == "expire":
            _, svc, wm = op
            if rescan_each_time:
                tracker._not_before.clear()            # the old behaviour: a full scan every time
            out.extend(("resolved", a.incident_id, a.service) for a in tracker.expire(svc, wm))
        else:                                           # a restore from a checkpoint
            tracker.open = {s: dict(incs) for s, incs in tracker.open.items()}
    return out


def test_expiry_resolves_what_a_scan_every_step_resolves():
    rng = random.Random(7)
    for _ in range(30):
        ops, t = [], 0
        for _ in range(400):
            t += rng.choice((0, 1, 10, 500, 5_000, 40_000))
            r = rng.random()
            svc = rng.choice(("billing", "news"))
            if r < 0.45:
                ops.append(("trigger", svc, f"c{rng.randrange(12)}", t - rng.randrange(0, 3_000)))
            elif r < 0.97:
                ops.append(("expire", svc, t - rng.randrange(0, 2_000)))
            else:
                ops.append(("restore",))
        fast = _drive(IncidentTracker(resolve_after_s=60), ops, rescan_each_time=False)
        slow = _drive(IncidentTracker(resolve_after_s=60), ops, rescan_each_time=True)
        assert fast == slow
        assert any(x[0] == "resolved" for x in fast)


def test_expiry_skips_the_scan_until_the_earliest_incident_can_resolve():
    tr = IncidentTracker(resolve_after_s=60)
    for i in range(300):
        inc, new = tr.open_or_get("news", f"c{i}", "disclosure", 1_000 + i, "concatenated_to", "critical")
        tr.record(inc, new, kind="concatenated_to", severity="critical", event_id=f"e{i}", sent_at_ms=1_000 + i,
                  campaign=f"c{i}", template=None, copies=1, summary="s", evidence={})
    assert tr.expire("news", 2_000) == []               # scans once, learns the earliest: 1,000 + 60,000
    assert tr._not_before["news"] == 61_000
    scanned = []
    incs = tr.open["news"]
    tr.open["news"] = type("Spy", (dict,), {"items": lambda self: scanned.append(1) or dict.items(self)})(incs)
    assert tr.expire("news", 61_000) == [] and not scanned   # not past it yet: no scan
    resolved = tr.expire("news", 61_001)
    assert scanned and [a.status for a in resolved] == ["resolved"]   # the incident of c0 only
