"""Inline policy, identity resolution and the [milter]/[adapt] config (pure, no servers)."""

from __future__ import annotations

import pytest

from mailaudit.adapters.config import ServicePolicy, load_adapter_config
from mailaudit.adapters.events import (
    HeaderBlock, build_event, headers_from_bytes, resolve_identity, service_for_sender, strip_fields,
)
from mailaudit.adapters.policy import ACCEPT, decide
from mailaudit.config import ConfigError, DisclosureRules
from mailaudit.ingest.publisher import Hold

from helpers import make_event

RULES = DisclosureRules()
ENFORCE = ServicePolicy(mode="enforce")
MONITOR = ServicePolicy(mode="monitor")
CONCAT_TO = ", ".join(f"c{i}@d{i}.example" for i in range(30))


def test_concatenated_to_is_quarantined_in_enforce_and_only_reported_in_monitor():
    e = make_event(1, to=CONCAT_TO, envelope=["c0@d0.example"])
    d = decide(e, ENFORCE, RULES, None)
    assert (d.action, d.would, d.cause, d.severity) == ("quarantine", "quarantine", "disclosure", "critical")
    assert d.kinds[0] == "concatenated_to"
    assert "30 visible addresses, 29 not recipients" in d.reason
    assert "c5@d5.example" not in d.reason                  # the reason goes to logs: counts only
    m = decide(e, MONITOR, RULES, None)
    assert (m.action, m.would) == (ACCEPT, "quarantine")


@pytest.mark.parametrize("to,envelope", [
    ("Alice <alice@example.com>", ["alice@example.com"]),                     # transactional
    ("reader@example.org", ["reader@example.org"]),                          # one-To newsletter copy
    ("a@x.example, b@y.example, c@z.example", ["a@x.example", "b@y.example", "c@z.example"]),  # group thread
    ("undisclosed-recipients:;", [f"r{i}@example.com" for i in range(50)]),   # proper Bcc mailing
])
def test_normal_mail_passes_enforce(to, envelope):
    assert decide(make_event(2, to=to, envelope=envelope), ENFORCE, RULES, None).action == ACCEPT


def test_run_together_to_with_strangers_is_critical():
    e = make_event(3, to="a@x.comb@y.orgc@z.net", envelope=["a@x.com"])
    d = decide(e, ENFORCE, RULES, None)
    assert d.action == "quarantine" and "run_together" in d.kinds


def test_bcc_left_in_is_a_warning_quarantined_only_when_configured():
    e = make_event(4, to="a@x.example", envelope=["a@x.example", "b@y.example"], bcc="b@y.example")
    assert decide(e, ENFORCE, RULES, None).action == ACCEPT        # warning < critical (default)
    d = decide(e, ServicePolicy(mode="enforce", quarantine_severity="warning"), RULES, None)
    assert d.action == "quarantine" and d.kinds == ("bcc_header",)


def test_few_strangers_wait_for_siblings_so_inline_passes():
    # A message split into one submission per recipient shows the others: not a leak by itself.
    e = make_event(5, to="a@x.example, b@y.example, c@z.example", envelope=["a@x.example"])
    assert decide(e, ENFORCE, RULES, None).action == ACCEPT


def test_hold_quarantines_or_defers_per_policy_and_never_in_monitor():
    hold = Hold("newsletter", "spring", "operator", 0)
    e = make_event(6, service="newsletter", campaign="spring")
    assert decide(e, ENFORCE, RULES, hold).action == "quarantine"
    d = decide(e, ServicePolicy(mode="enforce", on_hold="tempfail"), RULES, hold)
    assert (d.action, d.cause) == ("tempfail", "hold") and "campaign spring" in d.reason
    assert decide(e, MONITOR, RULES, hold).action == ACCEPT


def test_identity_header_then_sender_map_then_default():
    senders = {"billing@shop.example": "billing", "@news.shop.example": "newsletter", "@.corp.example": "corp"}
    assert resolve_identity("crm", "c1", None, "billing@shop.example", senders, "mail").service == "crm"
    i = resolve_identity(None, " nl-1 ", "", "billing@shop.example", senders, "mail")
    assert (i.service, i.campaign, i.template, i.source) == ("billing", "nl-1", None, "sender")
    assert service_for_sender("x@news.shop.example", senders) == "newsletter"
    assert service_for_sender("x@eu.mail.corp.example", senders) == "corp"
    assert resolve_identity("  ", None, None, "x@other.example", senders, "mail").source == "default"


def test_build_event_from_envelope_and_raw_headers():
    h = HeaderBlock([("From", "Shop <s@shop.example>"), ("To", "a@x.example,\n  \"B, C\" <b@y.example>"),
                     ("to", "late@z.example"), ("Message-ID", " <m1@shop.example> "), ("Subject", "Hi")])
    ident = resolve_identity("shop", None, None, "bounce@shop.example", {}, "mail")
    e = build_event(ident, "bounce@shop.example", ["a@x.example"], h, body_bytes=100, sent_at_ms=5)
    assert e.to == 'a@x.example,\n  "B, C" <b@y.example>, late@z.example'      # both To fields, raw
    assert e.message_id == "<m1@shop.example>" and e.envelope_to == ["a@x.example"]
    assert e.extra["envelope_from"] == "bounce@shop.example" and e.bcc is None
    assert e.size_bytes == h.size() + 100 and e.to_wire()["sent_at"] == "1970-01-01T00:00:00.005Z"


def test_header_helpers_keep_folding_and_strip_only_headers():
    data = b"From: a@b\r\nX-Mailaudit-Service: s\r\n  more\r\nTo: x@y\r\n\r\nX-Mailaudit-Service: body\r\n"
    assert headers_from_bytes(data).fields == [("From", "a@b"), ("X-Mailaudit-Service", "s\n  more"), ("To", "x@y")]
    assert strip_fields(data, ["x-mailaudit-service"]) == b"From: a@b\r\nTo: x@y\r\n\r\nX-Mailaudit-Service: body\r\n"


def test_config_file_env_and_per_service_policy(tmp_path):
    p = tmp_path / "m.toml"
    p.write_text("""
[kafka]
bootstrap = "ignored-by-this-loader:9092"
[milter]
listen = "unix:/run/mailaudit.sock"
default_service = "relay"
[milter.senders]
"@news.example" = "newsletter"
[milter.policy]
on_hold = "tempfail"
[milter.services.newsletter]
mode = "enforce"
[adapt]
campaign_tag = "cmp"
""")
    a = load_adapter_config(p, env={"MAILAUDIT_ADAPT_SECRET": "s3cret"})
    m = a.milter
    assert (m.listen, m.default_service, m.senders) == ("unix:/run/mailaudit.sock", "relay", {"@news.example": "newsletter"})
    assert m.policy_for("newsletter") == ServicePolicy(mode="enforce", on_hold="tempfail")
    assert m.policy_for("other").mode == "monitor"
    assert (a.adapt.campaign_tag, a.adapt.secret) == ("cmp", "s3cret")
    assert load_adapter_config(p, env={"MAILAUDIT_MILTER_MODE": "enforce"}).milter.policy_for("x").mode == "enforce"


@pytest.mark.parametrize("body,msg", [
    ("[milter]\nmode = 'enforce'\n", "unknown setting 'mode'"),
    ("[milter.policy]\nmode = 'block'\n", "milter.policy.mode must be one of"),
    ("[milter.services.x]\non_hold = 'bounce'\n", "milter.services.x.on_hold"),
    ("[milter]\nbuffer_max = 'many'\n", "expected int"),
])
def test_config_mistakes_are_named(tmp_path, body, msg):
    p = tmp_path / "bad.toml"
    p.write_text(body)
    with pytest.raises(ConfigError, match=msg):
        load_adapter_config(p, env={})
