"""The mailaudit milter: every message through Postfix or Sendmail is audited, and a leaking copy can be
stopped before it is delivered.

Built on libmilter through ``pymilter`` (the binding Sendmail's own protocol library sits under), so
protocol negotiation, timeouts and threading are libmilter's, not ours. Per SMTP transaction we
collect MAIL FROM, every RCPT TO, the header fields (raw) and the body size; at end-of-message the
``Auditor`` decides (monitor / enforce, hold) and publishes the wire v1 event without waiting on Kafka.

Stopping a message means *quarantine* (Postfix's hold queue, Sendmail's quarantine): nothing is
delivered, nothing bounces back to the sender to be retried and caught again, and the operator can
release (``postsuper -H``) or delete (``postsuper -d``) it. A held campaign may instead get a 4xx so
the sending application retries after ``release``.

Callbacks that only collect data are declared ``noreply``: the MTA does not wait for an answer to each
RCPT or header, which is most of the per-message overhead a milter adds.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import Milter

from mailaudit.adapters.auditor import Auditor
from mailaudit.adapters.config import QUARANTINE, TEMPFAIL, MilterConfig
from mailaudit.adapters.events import (HeaderBlock, build_event, lower_senders, resolve_identity,
                                       service_for_sender, strip_brackets)

log = logging.getLogger("mailaudit.milter")

# The Kafka producer is a Python thread too: with CPython's default 5 ms GIL switch interval an MTA
# callback can wait that long behind it. 0.5 ms keeps the per-message tail well under the 5 ms target
# (measured in bench/milter.py) for a little more switching overhead.
GIL_SWITCH_INTERVAL_S = 0.0005


def smtp_text(reason: str | None, percent: bool = True) -> str:
    """A hold reason comes from mail.control (an operator's words): one line of printable ASCII
    ('%' escaped for ``setreply``), or libmilter refuses it and the catch-all would accept a message
    that must wait (issue 14)."""
    text = " ".join("".join(c if " " <= c <= "~" else " " for c in (reason or "held")).split())[:200] or "held"
    return text.replace("%", "%%") if percent else text


def make_milter_class(auditor: Auditor, mcfg: MilterConfig,
                      on_quarantine: Callable[[str | None, object, object], None] | None = None) -> type:
    """A ``Milter.Base`` subclass bound to one auditor and config (libmilter creates one instance per
    SMTP connection through ``Milter.factory``). ``on_quarantine(queue_id, event, decision)`` lets
    the auto-release keep track of hold quarantines."""
    senders = lower_senders(mcfg.senders)
    control = (mcfg.service_header, mcfg.campaign_header, mcfg.template_header)

    class AuditMilter(Milter.Base):
        def __init__(self):
            self._reset()

        def _reset(self):
            self.mail_from = ""
            self.rcpts: list[str] = []
            self.headers = HeaderBlock()
            self.body_bytes = 0
            self.cost = 0.0                     # seconds spent in our callbacks for this message

        @Milter.noreply
        @Milter.decode("replace")
        def envfrom(self, mailfrom, *params):
            t = time.perf_counter()
            self._reset()
            self.mail_from = strip_brackets(mailfrom)
            self.cost += time.perf_counter() - t
            return Milter.CONTINUE

        @Milter.noreply
        @Milter.decode("replace")
        def envrcpt(self, to, *params):
            t = time.perf_counter()
            self.rcpts.append(strip_brackets(to))
            self.cost += time.perf_counter() - t
            return Milter.CONTINUE

        @Milter.noreply
        @Milter.decode("replace")
        def header(self, name, value):
            t = time.perf_counter()
            self.headers.add(name, value)
            self.cost += time.perf_counter() - t
            return Milter.CONTINUE

        @Milter.noreply
        def body(self, chunk):
            self.body_bytes += len(chunk)
            return Milter.CONTINUE

        def eom(self):
            t = time.perf_counter()
            try:
                return self._eom()
            except Exception:
                # Never let a bug of ours stop mail: libmilter would answer with milter_default_action.
                log.exception("milter eom failed; accepting the message unaudited")
                auditor.counters.inc("errors", stage="eom")
                return Milter.CONTINUE
            finally:
                self.cost += time.perf_counter() - t
                auditor.latency["message_overhead"].add(self.cost * 1000)
                self._reset()

        def _eom(self):
            h = self.headers
            ident = resolve_identity(h.first(mcfg.service_header), h.first(mcfg.campaign_header),
                                     h.first(mcfg.template_header), self.mail_from, senders,
                                     mcfg.default_service)
            qid = self.getsymval("i")
            event = build_event(
                ident, self.mail_from, self.rcpts, h, body_bytes=self.body_bytes,
                include_subject=mcfg.include_subject, envelope_from=mcfg.envelope_from,
                fallback_message_id=f"<{qid}@mailaudit.queue-id.invalid>" if qid else None,
            )
            if mcfg.strip_headers:
                self._strip_control_headers()
            # The service the verified MAIL FROM maps to binds too: a header cannot escape its holds.
            mapped = service_for_sender(self.mail_from, senders) if ident.source == "header" else None
            decision = auditor.audit(event, also=(mapped,) if mapped else ())
            if decision.action == QUARANTINE:
                self.quarantine(smtp_text(decision.reason, percent=False))
                log.warning("quarantined %s queue_id=%s service=%s campaign=%s rcpts=%d: %s",
                            event.message_id[:100], qid, event.service, event.campaign, len(self.rcpts),
                            decision.reason)
                if on_quarantine is not None:
                    on_quarantine(qid, event, decision)
                return Milter.ACCEPT
            if decision.action == TEMPFAIL:
                self.setreply("451", "4.7.1", smtp_text(decision.reason))
                log.warning("deferred %s queue_id=%s service=%s campaign=%s: %s", event.message_id[:100],
                            qid, event.service, event.campaign, decision.reason)
                return Milter.TEMPFAIL
            return Milter.ACCEPT

        def _strip_control_headers(self):
            for name in control:
                for idx in range(self.headers.count(name), 0, -1):
                    self.chgheader(name, idx, "")

        def abort(self):
            self._reset()
            return Milter.CONTINUE

        def close(self):
            return Milter.CONTINUE

    return AuditMilter


def run(auditor: Auditor, mcfg: MilterConfig, on_quarantine=None) -> None:
    """Serve until SIGTERM/SIGINT (libmilter handles both and returns from its main loop)."""
    import sys

    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    Milter.factory = make_milter_class(auditor, mcfg, on_quarantine)
    Milter.set_flags(Milter.QUARANTINE | Milter.CHGHDRS)
    log.info("mailaudit milter listening on %s", mcfg.listen)
    Milter.runmilter(mcfg.name, mcfg.listen, mcfg.timeout_s)
