"""``AuditedSMTP``: a real SMTP conversation with an aiosmtpd server; the event carries the envelope
the transaction used, enforce refuses a leak before anything is sent, holds stop a campaign."""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

import pytest

from mailaudit.adapters.auditor import Auditor
from mailaudit.adapters.config import MilterConfig, ServicePolicy
from mailaudit.adapters.smtp import AuditedSMTP, DisclosureBlocked, MessageHeld
from mailaudit.config import Config

from postfix_support import RecordingPublisher, Sink, StateGuard

LEAK_TO = ", ".join(f"c{i}@d{i}.example" for i in range(20))


@pytest.fixture
def sink():
    s = Sink().start()
    yield s
    s.stop()


def auditor(**mcfg) -> Auditor:
    return Auditor(Config(), MilterConfig(**mcfg), publisher=RecordingPublisher(), guard=StateGuard(), name="smtplib")


def msg(to: str, **headers) -> EmailMessage:
    m = EmailMessage()
    m["From"] = "Shop <shop@shop.example>"
    m["To"] = to
    m["Subject"] = "Hi"
    for k, v in headers.items():
        m[k.replace("_", "-")] = v
    m.set_content("hello\n")
    return m


def test_send_message_publishes_the_real_envelope(sink):
    a = auditor()
    with AuditedSMTP("127.0.0.1", sink.port, auditor=a, service="billing", campaign="inv") as s:
        m = msg("Alice <alice@example.com>", Bcc="audit@shop.example", X_Mailaudit_Template="invoice")
        s.send_message(m)
    (e,) = a.publisher.events
    # send_message derives the envelope from To+Bcc and strips Bcc from the copy: the event says so.
    assert e.envelope_to == ["alice@example.com", "audit@shop.example"] and e.bcc is None
    assert (e.service, e.campaign, e.template) == ("billing", "inv", "invoice")
    assert e.message_id and e.extra["inline_action"] == "accept"
    (got,) = sink.messages
    assert got["rcpt_tos"] == ["alice@example.com", "audit@shop.example"]
    assert e.message_id.encode() in got["content"]             # Message-ID added once, same in both
    assert b"X-Mailaudit" not in got["content"] and b"Bcc" not in got["content"]


def test_enforce_refuses_a_leaking_copy_before_sending(sink):
    a = auditor(services={"newsletter": {"mode": "enforce"}})
    with AuditedSMTP("127.0.0.1", sink.port, auditor=a, service="newsletter") as s:
        with pytest.raises(DisclosureBlocked, match="concatenated_to") as err:
            s.sendmail("news@shop.example", ["c0@d0.example"], msg(LEAK_TO).as_bytes())
        assert isinstance(err.value, smtplib.SMTPException)
        s.sendmail("news@shop.example", ["c0@d0.example"], msg("c0@d0.example").as_bytes())  # fine copy
    assert len(sink.messages) == 1
    blocked, ok = a.publisher.events
    assert blocked.extra["inline_action"] == "blocked" and ok.extra["inline_action"] == "accept"


def test_monitor_sends_the_leak_and_reports_it(sink):
    a = auditor()
    with AuditedSMTP("127.0.0.1", sink.port, auditor=a, service="crm") as s:
        s.sendmail("crm@shop.example", "c0@d0.example", msg(LEAK_TO).as_string())
        assert s.last_decision.would == "quarantine" and s.last_decision.action == "accept"
    assert len(sink.messages) == 1 and a.publisher.events[0].envelope_to == ["c0@d0.example"]


def test_held_campaign_raises_and_is_not_published_until_release(sink):
    a = auditor(policy=ServicePolicy(mode="enforce"))
    a.guard.hold("newsletter", "spring")
    with AuditedSMTP("127.0.0.1", sink.port, auditor=a, service="newsletter", campaign="spring") as s:
        with pytest.raises(MessageHeld, match="campaign spring"):
            s.send_message(msg("r@x.example"))
        assert a.publisher.events == [] and sink.messages == []
        a.guard.hold("newsletter", "spring", action="release")
        s.send_message(msg("r@x.example"))
    assert len(sink.messages) == 1 and len(a.publisher.events) == 1
