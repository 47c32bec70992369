"""One message through the mail-path audit: decide inline, publish, count.

Shared by the milter and the smtplib drop-in so both apply the same policy and report the same figures.
Publishing never waits: the ``Publisher`` buffer is bounded and a full buffer drops (counted), because
an MTA that stalls when the audit log is down is worse than a gap in the log. ``fail_open = false``
turns that around for operators who prefer deferring mail to sending it unaudited.

What is published: every message the MTA accepts, quarantined ones included (they may be released, and
the detector should alert on an attempted leak), with the extra field ``inline_action`` saying what
happened (``accept`` / ``quarantine``; ``blocked`` for a refused smtplib send). A deferred (4xx)
submission is not published: the client retries it and that attempt is the one that counts.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from mailaudit.adapters.config import TEMPFAIL, MilterConfig
from mailaudit.adapters.metrics import Counters, Latency, render
from mailaudit.adapters.policy import ACCEPT, Decision, InlinePolicy
from mailaudit.config import Config
from mailaudit.ingest.publisher import HoldGuard, Publisher, PublisherClosed
from mailaudit.ingest.wire import Event

log = logging.getLogger("mailaudit.adapters")


class Auditor:
    def __init__(self, cfg: Config, mcfg: MilterConfig, *, publisher: Publisher | None = None,
                 guard: HoldGuard | None = None, name: str = "milter"):
        self.cfg = cfg
        self.mcfg = mcfg
        self.name = name
        self.guard = guard if guard is not None else HoldGuard(cfg.kafka, fail_closed=mcfg.hold_fail_closed)
        # No guard on the publisher: a held message is still published (as quarantined) by us.
        self.publisher = publisher if publisher is not None else Publisher(
            cfg.kafka, service=f"mailaudit-{name}", max_buffer=mcfg.buffer_max, max_block_ms=0, on_full="drop")
        self.policy = InlinePolicy(mcfg, cfg.detect, self.guard.is_held)
        self.counters = Counters()
        self.latency = {"message_overhead": Latency()}

    def audit(self, event: Event, blocked_action: str = "quarantine", publish_held: bool = True,
              also: tuple[str, ...] = ()) -> Decision:
        """Decide and publish one submission. ``blocked_action`` names the fate of a stopped message in
        the published event (the milter quarantines, the smtplib drop-in refuses: ``blocked``).
        ``publish_held=False``: a message stopped by a hold is not published (the sender keeps it and
        sends it after ``release``; that send is the event)."""
        self.counters.inc("messages", service=event.service)
        try:
            decision = self.policy(event, also) if also else self.policy(event)
        except Exception:
            # A bug or an absurd header must not stop mail: pass it, count it, keep the traceback.
            log.exception("inline policy failed on message %s; passing it", event.message_id[:100])
            self.counters.inc("errors", stage="policy")
            decision = Decision(ACCEPT, ACCEPT, None, None)
        self._count(event, decision)
        if decision.action == TEMPFAIL or (decision.blocked and decision.cause == "hold" and not publish_held):
            return decision
        event.extra["inline_action"] = blocked_action if decision.blocked else ACCEPT
        try:
            published = self.publisher.publish_event(event) is not None
        except PublisherClosed:
            published = False
        if not published:
            self.counters.inc("unpublished", service=event.service)
            if not self.mcfg.fail_open and decision.action == ACCEPT:
                return Decision(TEMPFAIL, TEMPFAIL, "audit_unavailable",
                                "mailaudit audit log unavailable (buffer full); try again later")
        return decision

    def _count(self, event: Event, d: Decision) -> None:
        if d.cause:
            self.counters.inc("decisions", service=event.service, cause=d.cause, action=d.action, would=d.would)
        if d.cause and d.would != ACCEPT and not d.blocked:
            log.warning("monitor: would %s %s (service=%s campaign=%s): %s",
                        d.would, event.message_id[:100], event.service, event.campaign, d.reason)

    def observe(self, started: float) -> None:
        self.latency["message_overhead"].add((time.perf_counter() - started) * 1000)

    def gauges(self) -> dict[str, float]:
        p = self.publisher.stats()
        return {
            "published": p["published"], "publish_failed": p["failed"], "publish_dropped": p["dropped"],
            "publish_buffered": p["buffered"], "hold_guard_ready": float(self.guard.ready),
            "holds_in_force": float(len(self.guard.holds())),
        }

    def metrics_text(self) -> str:
        return render(f"mailaudit_{self.name}", self.counters, self.gauges(), self.latency)

    def stats(self) -> dict[str, Any]:
        q = self.latency["message_overhead"].quantiles((0.5, 0.99))
        return {
            "messages": self.counters.total("messages"),
            "unpublished": self.counters.total("unpublished"),
            "errors": self.counters.total("errors"),
            "overhead_p50_ms": round(q[0.5], 3), "overhead_p99_ms": round(q[0.99], 3),
            **self.gauges(),
        }

    def close(self, timeout: float = 5.0) -> None:
        self.publisher.close(timeout)
        self.guard.close(timeout)
