"""Per-copy slips: a campaign whose every copy shows one other customer.

A mail merge that Cc's the next row, or a To formula dragged one cell too far, puts a single external
address on each copy, a different one each time, that did not receive that Message-ID. One such copy
is indistinguishable from a forwarding address or a customer's second mailbox; the *pattern* is not:
``slip_copies`` copies of one campaign or template, within ``slip_window_s`` of event time, each
showing a different external non-recipient who is a person (a consumer-mailbox address) or who
received a copy of the same campaign themselves (the next customer). From then on every such copy of
the campaign is a trigger of the incident.

This module keeps the bookkeeping (plain lists and dicts, JSON state); the engine decides, because
it owns the sibling index (the non-recipient may still get the same Message-ID within the group wait).
"""

from __future__ import annotations

from typing import Any

MAX_SCOPES = 256          # campaigns/templates tracked per service (least recent dropped)
MAX_CANDIDATES = 512      # copies waiting to ripen per campaign
MAX_ENVELOPES = 8192      # recent envelope ids per campaign (for "received a copy of the campaign")


def _ripe(cand: list, wait_ms: int) -> int:
    return cand[8] if len(cand) > 8 else cand[0] + wait_ms


class SlipTracker:
    """Candidates per scope: ``[sent_at_ms, event_id, campaign, template, message_id, strangers, envelope,
    fingerprint, ripe_ms]`` where ``strangers`` is ``[[id, hash, masked, domain, consumer], ...]`` and
    ``envelope`` a list of ids. ``ripe_ms`` is when its group wait ends on the service's clock: a copy
    that arrives late waits from its arrival, not from its send time (candidates checkpointed before it
    existed ripen at ``sent_at_ms`` + the wait, as they did)."""

    def __init__(self):
        self.scopes: dict[str, dict[str, Any]] = {}
        self.due_ms = 1 << 62                     # earliest time a candidate ripens (any scope)

    def _scope(self, scope: str) -> dict[str, Any]:
        s = self.scopes.get(scope)
        if s is None:
            if len(self.scopes) >= MAX_SCOPES:
                self.scopes.pop(next(iter(self.scopes)))
            s = self.scopes[scope] = {"cand": [], "env": {}, "confirmed": [], "unfired": [], "armed_until": 0,
                                      "last": []}
        else:
            self.scopes[scope] = self.scopes.pop(scope)       # most recent last
        return s

    def repeats_last(self, scope: str, ids: list[int]) -> bool:
        """The same strangers as the scope's previous candidate: a constant address on every copy (an
        archive mailbox), which can never make a pattern of different people — skipped cheaply. Records
        ``ids`` as the scope's last strangers otherwise."""
        s = self._scope(scope)
        if s["last"] == ids:
            return True
        s["last"] = ids
        return False

    def add(self, scope: str, cand: list, ripe_ms: int) -> None:
        s = self._scope(scope)
        s["cand"].append((cand + [None] * 8)[:8] + [ripe_ms])     # ripe_ms always at index 8
        if len(s["cand"]) > MAX_CANDIDATES:
            s["cand"].pop(0)
        env = s["env"]
        for i in cand[6]:
            env[i] = cand[0]
        if len(env) > MAX_ENVELOPES + MAX_ENVELOPES // 4:       # trimmed in bulk: amortised O(1)
            s["env"] = dict(list(env.items())[-MAX_ENVELOPES:])
        self.due_ms = min(self.due_ms, ripe_ms)

    def take_ripe(self, clock_ms: int, wait_ms: int) -> list[tuple[str, list]]:
        """Candidates whose group wait is over, oldest first. Candidates are kept in arrival order,
        which is the order of their ripe times (the service's clock only moves forward), so each scope
        is taken from the front: O(ripe)."""
        out = []
        due = 1 << 62
        for scope, s in self.scopes.items():
            cand = s["cand"]
            k = 0
            while k < len(cand) and _ripe(cand[k], wait_ms) <= clock_ms:
                out.append((scope, cand[k]))
                k += 1
            if k:
                del cand[:k]
            if cand:
                due = min(due, _ripe(cand[0], wait_ms))
        self.due_ms = due
        out.sort(key=lambda x: (x[1][0], x[1][1]))
        return out

    def received(self, scope: str, addr_id: int, window_ms: int, t_ms: int) -> bool:
        """Did ``addr_id`` receive a copy of this campaign within the window around ``t_ms``?"""
        t = self.scopes.get(scope, {}).get("env", {}).get(addr_id)
        return t is not None and abs(t - t_ms) <= window_ms

    def confirm(self, scope: str, t_ms: int, addr_id: int, window_ms: int) -> int:
        """File one confirmed slip; return the distinct addresses confirmed within the window."""
        s = self._scope(scope)
        conf = s["confirmed"]
        k = 0
        while k < len(conf) and (conf[k][0] < t_ms - window_ms or len(conf) - k >= MAX_CANDIDATES):
            k += 1
        if k:
            del conf[:k]
        conf.append([t_ms, addr_id])
        return len({c[1] for c in conf})

    def hold(self, scope: str, entry: list, keep: int) -> list[list]:
        """Keep a confirmed copy until the pattern is clear (then each becomes a trigger); returns the
        held copies, oldest first (at most ``keep``)."""
        held = self._scope(scope)["unfired"]
        held.append(entry)
        del held[:-keep]
        return held

    def armed(self, scope: str, t_ms: int) -> bool:
        return self.scopes.get(scope, {}).get("armed_until", 0) >= t_ms

    def arm(self, scope: str, until_ms: int) -> None:
        s = self._scope(scope)
        s["armed_until"] = max(s["armed_until"], until_ms)

    def to_state(self) -> dict[str, Any]:
        return {"due_ms": self.due_ms, "scopes": {
            k: {"cand": v["cand"], "env": [[i, t] for i, t in v["env"].items()], "confirmed": v["confirmed"],
                "unfired": v["unfired"], "armed_until": v["armed_until"], "last": v.get("last", [])}
            for k, v in self.scopes.items()}}

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> "SlipTracker":
        t = cls()
        t.due_ms = int(d.get("due_ms", 1 << 62))
        for k, v in d.get("scopes", {}).items():
            t.scopes[str(k)] = {"cand": [list(c) for c in v.get("cand", [])],
                                "env": {int(i): int(ts) for i, ts in v.get("env", [])},
                                "confirmed": [list(c) for c in v.get("confirmed", [])],
                                "unfired": [list(c) for c in v.get("unfired", [])],
                                "armed_until": int(v.get("armed_until", 0)),
                                "last": [int(i) for i in v.get("last", [])]}
        return t
