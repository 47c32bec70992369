"""The milter's callbacks in-process (pymilter's test context): what it publishes and does per message,
failing open when Kafka is unreachable, and the auto-release of held quarantines."""

from __future__ import annotations

import subprocess

import Milter
import pytest

from mailaudit.adapters.auditor import Auditor
from mailaudit.adapters.config import MilterConfig
from mailaudit.adapters.milter import make_milter_class
from mailaudit.adapters.release import HoldReleaser
from mailaudit.bench.milter import Ctx, drive
from mailaudit.config import Config
from mailaudit.ingest.publisher import Publisher
from mailaudit.stack import free_port

from postfix_support import RecordingPublisher, StateGuard

LEAK_TO = ", ".join(f"c{i}@d{i}.example" for i in range(25))


def milter(mcfg: MilterConfig | None = None, publisher=None, guard=None, on_quarantine=None):
    mcfg = mcfg or MilterConfig()
    auditor = Auditor(Config(), mcfg, publisher=publisher or RecordingPublisher(), guard=guard or StateGuard())
    Milter.factory = make_milter_class(auditor, mcfg, on_quarantine)
    ctx = Ctx()
    ctx._connect()
    ctx._setsymval("i", "4F2A1B3C")
    return auditor, ctx


def headers(to: str, **extra: str) -> list[tuple[str, str]]:
    h = [("From", "Shop <news@shop.example>"), ("To", to), ("Subject", "Hi"), ("Message-ID", "<m1@shop.example>")]
    return h + [(k.replace("_", "-"), v) for k, v in extra.items()]


def test_event_carries_the_envelope_and_control_headers_are_removed():
    auditor, ctx = milter(MilterConfig(senders={"@shop.example": "shop"}))
    rc = drive(ctx, "news@shop.example", ["a@x.example", "b@y.example"],
               headers("a@x.example, b@y.example", X_Mailaudit_Campaign="c-7"), b"body\r\n")
    assert rc == Milter.ACCEPT and not ctx.quarantined
    (e,) = auditor.publisher.events
    assert (e.service, e.campaign, e.envelope_to) == ("shop", "c-7", ["a@x.example", "b@y.example"])
    assert e.extra == {"envelope_from": "news@shop.example", "inline_action": "accept"}
    assert ctx._headerschanged                      # X-Mailaudit-Campaign deleted through chgheader


def test_enforce_quarantines_a_concatenated_to_and_monitor_does_not():
    seen = []
    mcfg = MilterConfig(services={"newsletter": {"mode": "enforce"}})
    auditor, ctx = milter(mcfg, on_quarantine=lambda qid, e, d: seen.append((qid, d.cause)))
    rc = drive(ctx, "n@shop.example", ["c0@d0.example"], headers(LEAK_TO, X_Mailaudit_Service="newsletter"), b"x")
    assert rc == Milter.ACCEPT                      # accepted into the queue, but on hold
    assert len(ctx.quarantined) == 1 and ctx.quarantined[0].startswith("mailaudit concatenated_to")
    assert seen == [("4F2A1B3C", "disclosure")]
    assert auditor.publisher.events[-1].extra["inline_action"] == "quarantine"

    drive(ctx, "n@shop.example", ["c0@d0.example"], headers(LEAK_TO, X_Mailaudit_Service="crm"), b"x")
    assert len(ctx.quarantined) == 1                # crm is monitored
    assert auditor.counters.get("decisions", service="crm", cause="disclosure", action="accept",
                                would="quarantine") == 1


def test_held_campaign_in_tempfail_mode_gets_a_4xx_and_is_not_published():
    guard = StateGuard()
    guard.hold("digest", "weekly")
    mcfg = MilterConfig(services={"digest": {"mode": "enforce", "on_hold": "tempfail"}})
    auditor, ctx = milter(mcfg, guard=guard)
    rc = drive(ctx, "d@shop.example", ["r@x.example"],
               headers("r@x.example", X_Mailaudit_Service="digest", X_Mailaudit_Campaign="weekly"), b"x")
    assert rc == Milter.TEMPFAIL and ctx._reply[:2] == ("451", "4.7.1")
    assert auditor.publisher.events == []
    guard.hold("digest", "weekly", action="release")
    rc = drive(ctx, "d@shop.example", ["r@x.example"],
               headers("r@x.example", X_Mailaudit_Service="digest", X_Mailaudit_Campaign="weekly"), b"x")
    assert rc == Milter.ACCEPT and len(auditor.publisher.events) == 1


def test_fails_open_when_kafka_is_unreachable_and_counts_what_it_could_not_publish():
    cfg = Config()
    cfg.kafka.bootstrap = f"127.0.0.1:{free_port()}"          # nothing listens there
    pub = Publisher(cfg.kafka, "milter-test", max_buffer=3, max_block_ms=0, on_full="drop", connect_timeout_ms=200)
    auditor, ctx = milter(MilterConfig(), publisher=pub)
    try:
        rcs = [drive(ctx, "s@shop.example", [f"u{i}@x.example"], headers(f"u{i}@x.example"), b"x") for i in range(5)]
        assert rcs == [Milter.ACCEPT] * 5                     # mail flows
        assert auditor.stats()["unpublished"] == 2 and pub.stats()["dropped"] == 2 and pub.buffered == 3
        assert "mailaudit_milter_unpublished_total" in auditor.metrics_text()
    finally:
        pub.close(0.5)


def test_fail_closed_defers_when_events_cannot_be_buffered():
    auditor, ctx = milter(MilterConfig(fail_open=False), publisher=RecordingPublisher(capacity=1))
    assert drive(ctx, "s@shop.example", ["a@x.example"], headers("a@x.example"), b"x") == Milter.ACCEPT
    assert drive(ctx, "s@shop.example", ["b@x.example"], headers("b@x.example"), b"x") == Milter.TEMPFAIL
    assert "audit log unavailable" in ctx._reply[2]


def test_a_bug_in_the_policy_never_stops_mail(monkeypatch):
    auditor, ctx = milter(MilterConfig(services={"x": {"mode": "enforce"}}))
    monkeypatch.setattr(auditor, "policy", lambda e: 1 / 0)
    assert drive(ctx, "s@shop.example", ["a@x.example"], headers(LEAK_TO, X_Mailaudit_Service="x"), b"x") == Milter.ACCEPT
    assert auditor.counters.total("errors") == 1 and len(auditor.publisher.events) == 1


def test_auto_release_runs_postsuper_for_hold_quarantines_once_released():
    guard = StateGuard()
    guard.hold("newsletter", "spring")
    calls = []

    def fake_run(cmd, **kw):
        calls.append((cmd, kw["input"]))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    r = HoldReleaser(guard.is_held, MilterConfig(postfix_config_dir="/tmp/pf/etc"), run=fake_run)

    class D:
        def __init__(self, cause):
            self.cause = cause

    class E:
        service, campaign, template = "newsletter", "spring", None

    r.track("AAA111", E, D("hold"))
    r.track("BBB222", E, D("disclosure"))           # a leak waits for a person, always
    assert r.check_once() == [] and calls == []
    guard.hold("newsletter", "spring", action="release")
    assert r.check_once() == ["AAA111"]
    assert calls == [(["postsuper", "-c", "/tmp/pf/etc", "-H", "-"], "AAA111\n")]
    assert r.pending == 0 and r.check_once() == []


@pytest.mark.parametrize("value", ["caf\xe9 <c@x.example>".encode("latin-1"), b"\xff\xfe <c@x.example>"])
def test_undecodable_header_bytes_still_publish_valid_utf8(value):
    auditor, ctx = milter()
    ctx._envfrom("<s@shop.example>")
    ctx._envrcpt("<c@x.example>")
    ctx._priv.header_bytes("To", value)
    ctx._priv.header_bytes("Message-ID", b"<m@x>")
    drive_eom(ctx)
    (e,) = auditor.publisher.events
    assert e.envelope_to == ["c@x.example"] and "<c@x.example>" in e.to
    e.encode().decode("utf-8")


def drive_eom(ctx):
    from io import BytesIO

    from mailaudit.bench.milter import _Msg

    ctx._body, ctx._msg, ctx._stage = BytesIO(), _Msg(), Milter.M_EOM
    rc = ctx._priv.eom()
    ctx._stage = None
    return rc
