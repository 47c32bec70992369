"""Issue 14, low findings in the milter: a header cannot pick a laxer policy than the verified sender's,
a hold reason cannot break the 4xx reply, and metric labels stay bounded and address-free."""

from __future__ import annotations

import time

import Milter

from mailaudit.adapters.config import MilterConfig
from mailaudit.adapters.metrics import Counters, label_value
from mailaudit.adapters.milter import smtp_text
from mailaudit.ingest.publisher import ControlCommand

from postfix_support import StateGuard
from test_adapters_milter import LEAK_TO, drive, headers, milter


def test_a_service_header_does_not_escape_the_senders_hold():
    guard = StateGuard()
    guard.hold("newsletter")
    mcfg = MilterConfig(senders={"@news.shop.example": "newsletter"},
                        services={"newsletter": {"mode": "enforce", "on_hold": "tempfail"}})
    auditor, ctx = milter(mcfg, guard=guard)
    rc = drive(ctx, "n@news.shop.example", ["r@x.example"], headers("r@x.example", X_Mailaudit_Service="free"), b"x")
    assert rc == Milter.TEMPFAIL and auditor.publisher.events == []
    # ... nor its enforcement: a leak from the enforced sender is quarantined whatever the header says.
    guard.hold("newsletter", action="release")
    drive(ctx, "n@news.shop.example", ["c0@d0.example"], headers(LEAK_TO, X_Mailaudit_Service="free"), b"x")
    assert len(ctx.quarantined) == 1
    # A sender the map does not cover still names its service by header.
    drive(ctx, "x@other.example", ["c0@d0.example"], headers(LEAK_TO, X_Mailaudit_Service="free"), b"x")
    assert len(ctx.quarantined) == 1 and auditor.publisher.events[-1].service == "free"


def test_a_hold_reason_with_line_breaks_still_defers():
    guard = StateGuard()
    guard.state.apply(ControlCommand("hold", "digest", None, "leak!\r\n250 OK 100%\x00", int(time.time() * 1000), "x"))
    auditor, ctx = milter(MilterConfig(services={"digest": {"mode": "enforce", "on_hold": "tempfail"}}), guard=guard)
    rc = drive(ctx, "d@shop.example", ["r@x.example"], headers("r@x.example", X_Mailaudit_Service="digest"), b"x")
    assert rc == Milter.TEMPFAIL and ctx._reply[:2] == ("451", "4.7.1")
    text = ctx._reply[2]
    assert "\r" not in text and "\n" not in text and "\x00" not in text and "100%%" in text
    assert smtp_text("a\r\nb") == "a b" and smtp_text(None) == "held" and smtp_text("é%", percent=False) == "%"


def test_metric_labels_are_bounded_and_never_an_address():
    assert label_value("billing") == "billing"
    assert label_value("jane.doe@example.com") == "invalid" and label_value("a b") == "invalid"
    c = Counters(max_series=50)
    for i in range(500):
        c.inc("messages", service=f"svc{i}")
    assert len(c.items()) == 51 and c.get("messages", service="other") == 450
    auditor, ctx = milter(MilterConfig())
    drive(ctx, "s@shop.example", ["a@x.example"], headers("a@x.example", X_Mailaudit_Service="jane@x.example"), b"x")
    assert "jane" not in auditor.metrics_text()


def test_an_address_in_a_service_or_campaign_header_is_masked():
    auditor, ctx = milter(MilterConfig())
    drive(ctx, "s@shop.example", ["a@x.example"],
          headers("a@x.example", X_Mailaudit_Service="jane.canary@x.example", X_Mailaudit_Campaign="for bob.q@y.org"),
          b"x")
    e = auditor.publisher.events[-1]
    assert (e.service, e.campaign) == ("j***@x.example", "for b***@y.org")
