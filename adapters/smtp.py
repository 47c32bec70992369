"""``smtplib`` drop-in for Python mailers: ``AuditedSMTP`` / ``AuditedSMTP_SSL``.

Replace ``smtplib.SMTP(host, port)`` with ``AuditedSMTP(host, port, auditor=..., service="billing")``
and every ``send_message`` / ``sendmail`` is audited with its real envelope (the ``from_addr`` and
``to_addrs`` the SMTP transaction uses, not what the headers claim), under the same inline policy as
the milter: in ``enforce`` a leaking copy raises ``DisclosureBlocked`` and a held campaign raises
``MessageHeld`` *before* anything is sent.

Everything funnels through ``sendmail`` (``send_message`` calls it with the flattened message, Bcc
already removed), so the event describes exactly the bytes that go on the wire.
"""

from __future__ import annotations

import smtplib
from email.utils import make_msgid
from typing import Iterable, Sequence

from mailaudit.adapters.auditor import Auditor
from mailaudit.adapters.config import MilterConfig
from mailaudit.adapters.events import (
    build_event, headers_from_bytes, lower_senders, resolve_identity, split_message, strip_brackets, strip_fields,
)
from mailaudit.adapters.policy import Decision
from mailaudit.config import Config


class MessageRefused(smtplib.SMTPException):
    """mailaudit's inline policy stopped this message; nothing was sent."""

    def __init__(self, decision: Decision, message_id: str):
        super().__init__(decision.reason)
        self.decision = decision
        self.message_id = message_id


class DisclosureBlocked(MessageRefused):
    """The copy would show addresses to people they were not sent to (service in ``enforce``)."""


class MessageHeld(MessageRefused):
    """The service or campaign is held on ``mail.control``; send again after ``release``."""


def make_auditor(cfg: Config, mcfg: MilterConfig | None = None) -> Auditor:
    """An auditor for a Python mailer (one per process; share it between connections, close it at exit)."""
    return Auditor(cfg, mcfg or MilterConfig(), name="smtplib")


class _Audited:
    def __init__(self, *args, auditor: Auditor, service: str | None = None, campaign: str | None = None,
                 template: str | None = None, **kwargs):
        # Set before smtplib's __init__, which may already connect.
        self.auditor = auditor
        self.service = service
        self.campaign = campaign
        self.template = template
        self.last_decision: Decision | None = None
        mcfg = auditor.mcfg
        self._senders = lower_senders(mcfg.senders)
        super().__init__(*args, **kwargs)

    def sendmail(self, from_addr: str, to_addrs: str | Sequence[str], msg: str | bytes,
                 mail_options: Iterable[str] = (), rcpt_options: Iterable[str] = ()):
        data = msg.encode("utf-8") if isinstance(msg, str) else bytes(msg)
        rcpts = [strip_brackets(a) for a in ([to_addrs] if isinstance(to_addrs, str) else list(to_addrs))]
        headers = headers_from_bytes(data)
        mcfg = self.auditor.mcfg
        if not (headers.first("Message-ID") or "").strip():
            # The MTA would add one we never see; add it here so the event and the copy agree.
            block = split_message(data)[0]
            nl = b"\r\n" if b"\r\n" in block or not block else b"\n"
            data = f"Message-ID: {make_msgid()}".encode() + nl + data
            headers = headers_from_bytes(data)
        ident = resolve_identity(
            headers.first(mcfg.service_header) or self.service, headers.first(mcfg.campaign_header) or self.campaign,
            headers.first(mcfg.template_header) or self.template, strip_brackets(from_addr), self._senders,
            mcfg.default_service,
        )
        body_len = len(split_message(data)[2])
        event = build_event(ident, strip_brackets(from_addr), rcpts, headers, body_bytes=body_len,
                            include_subject=mcfg.include_subject, envelope_from=mcfg.envelope_from)
        decision = self.last_decision = self.auditor.audit(event, blocked_action="blocked", publish_held=False)
        if decision.blocked:
            cls = MessageHeld if decision.cause == "hold" else DisclosureBlocked
            raise cls(decision, event.message_id)
        if mcfg.strip_headers:
            data = strip_fields(data, (mcfg.service_header, mcfg.campaign_header, mcfg.template_header))
        return super().sendmail(from_addr, to_addrs, data, mail_options, rcpt_options)


class AuditedSMTP(_Audited, smtplib.SMTP):
    """``smtplib.SMTP`` that audits every message it sends (keyword-only ``auditor``, ``service``...)."""


class AuditedSMTP_SSL(_Audited, smtplib.SMTP_SSL):  # noqa: N801 (mirrors smtplib's name)
    """``smtplib.SMTP_SSL`` that audits every message it sends."""


class AuditedLMTP(_Audited, smtplib.LMTP):
    """``smtplib.LMTP`` that audits every message it sends."""
