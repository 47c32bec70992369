"""The inline policy: what to do with one message *before* it leaves, from what that message alone shows.

Only the stateless part of the disclosure signals can act inline: a concatenated or run-together To,
a Bcc header left in, many visible strangers (visible addresses that are not envelope recipients of
this copy). Verdicts that need memory (sibling submissions of one Message-ID, a list repeating across a
campaign) stay with the detector; inline they pass, so the milter never delays normal mail.

``monitor`` never changes a message's fate: the decision still says what ``enforce`` would have done,
for the log and the metrics, so an operator can watch a service before switching it to ``enforce``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from mailaudit.adapters.config import ENFORCE, QUARANTINE, TEMPFAIL, MilterConfig, ServicePolicy
from mailaudit.config import DetectConfig, DisclosureRules
from mailaudit.detect.signals import FIRE, Signals, disclosure_signals
from mailaudit.ingest.parsed import parse_event
from mailaudit.ingest.publisher import Hold
from mailaudit.ingest.wire import Event

ACCEPT = "accept"
_RANK = {None: 0, "info": 0, "warning": 1, "critical": 2}


@dataclass(frozen=True, slots=True)
class Decision:
    action: str                      # accept | quarantine | tempfail: what happens to the message
    would: str                       # what enforce does (equals action in enforce; monitor logs it)
    cause: str | None                # "disclosure" | "hold" | "audit_unavailable" | None
    reason: str | None               # one line for the quarantine reason / 4xx text / log; no raw addresses
    kinds: tuple[str, ...] = ()      # disclosure kinds this copy fires, most specific first
    severity: str | None = None
    mode: str = "monitor"

    @property
    def blocked(self) -> bool:
        return self.action != ACCEPT


PASS = Decision(ACCEPT, ACCEPT, None, None)


def describe(sig: Signals) -> str:
    """The figures that make a copy leak, in one line fit for a Postfix log (counts only)."""
    parts = [f"{sig.visible} visible addresses, {len(sig.strangers)} not recipients of this copy"]
    if sig.run_together:
        parts.append("addresses run together without separator")
    if sig.bcc_exposed:
        parts.append(f"Bcc header left in naming {len(sig.bcc_exposed)} address(es)")
    return "; ".join(parts)


def decide(event: Event, policy: ServicePolicy, rules: DisclosureRules, hold: Hold | None) -> Decision:
    """Pure: one event, its service's policy and rules, and the hold in force (if any)."""
    if hold is not None:
        what = f"campaign {hold.campaign}" if hold.campaign else f"service {hold.service}"
        reason = f"mailaudit hold on {what}: {hold.reason or 'held on mail.control'}"
        would = policy.on_hold
        return Decision(would if policy.mode == ENFORCE else ACCEPT, would, "hold", reason, mode=policy.mode)
    sig = disclosure_signals(parse_event(event), rules)
    if sig.verdict != FIRE:
        return PASS if policy.mode != ENFORCE else Decision(ACCEPT, ACCEPT, None, None, mode=policy.mode)
    kinds = sig.kinds
    stop = _RANK[sig.severity] >= _RANK[policy.quarantine_severity]
    would = QUARANTINE if stop else ACCEPT
    reason = f"mailaudit {'+'.join(kinds)} ({sig.severity}): {describe(sig)}"
    return Decision(would if policy.mode == ENFORCE else ACCEPT, would, "disclosure", reason,
                    kinds, sig.severity, policy.mode)


class InlinePolicy:
    """``decide`` with the configuration resolved per service once, and the hold guard consulted."""

    def __init__(self, mcfg: MilterConfig, dcfg: DetectConfig,
                 is_held: Callable[[str, str | None], Hold | None] | None = None):
        self.mcfg = mcfg
        self.dcfg = dcfg
        self.is_held = is_held
        self._cache: dict[str, tuple[ServicePolicy, DisclosureRules]] = {}

    def for_service(self, service: str) -> tuple[ServicePolicy, DisclosureRules]:
        got = self._cache.get(service)
        if got is None:
            got = (self.mcfg.policy_for(service), self.dcfg.disclosure_for(service))
            if len(self._cache) < 10000:        # service names come from a header: bound the cache
                self._cache[service] = got
        return got

    def __call__(self, event: Event, also: tuple[str, ...] = ()) -> Decision:
        """``also``: services the MTA itself attributes the message to (the sender map on the
        verified MAIL FROM). A header naming another service must not let a sender escape that
        service's hold or enforcement (issue 14): the holds of every one apply, and the strictest
        policy of them."""
        policy, rules = self.for_service(event.service)
        scope = event.campaign or event.template
        hold = self.is_held(event.service, scope) if self.is_held else None
        for svc in also:
            if not svc or svc == event.service:
                continue
            other, _ = self.for_service(svc)
            policy = _stricter(policy, other)
            if hold is None and self.is_held:
                hold = self.is_held(svc, scope) or self.is_held(svc, None)
        return decide(event, policy, rules, hold)


def _stricter(a: ServicePolicy, b: ServicePolicy) -> ServicePolicy:
    if a.mode != b.mode:
        return a if a.mode == ENFORCE else b
    if _RANK[b.quarantine_severity] < _RANK[a.quarantine_severity]:
        return b
    return a


__all__ = ["ACCEPT", "QUARANTINE", "TEMPFAIL", "Decision", "InlinePolicy", "decide", "describe"]
