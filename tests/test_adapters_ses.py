"""Amazon SES event publishing -> wire v1, from payloads shaped like the documented SES records
(``Send`` record with ``mail.headers``/``commonHeaders``/``tags``, delivered raw, through SNS, or via
EventBridge), and the file/stdin converter of ``mailaudit adapt ses``."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

from mailaudit.adapters.config import AdaptConfig
from mailaudit.adapters.ses import convert
from mailaudit.ingest.wire import decode_event
from mailaudit.detect.signals import disclosure_signals
from mailaudit.config import DisclosureRules
from mailaudit.ingest.parsed import parse_event

CUSTOMERS = [f"customer{i}@example{i % 4}.com" for i in range(12)]

SEND = {
    "eventType": "Send",
    "mail": {
        "timestamp": "2026-11-02T07:30:00.123Z",
        "source": "Shop Billing <billing@shop.example>",
        "sourceArn": "arn:aws:ses:eu-west-1:123456789012:identity/shop.example",
        "sendingAccountId": "123456789012",
        "messageId": "010201927f8a1b2c-6f1e0f7c-0000-4000-8000-3f2a1b0c9d8e-000000",
        "destination": ["customer0@example0.com"],
        "headersTruncated": False,
        "headers": [
            {"name": "From", "value": "Shop Billing <billing@shop.example>"},
            {"name": "To", "value": ", ".join(CUSTOMERS)},
            {"name": "Subject", "value": "Your November invoice"},
            {"name": "Message-ID", "value": "<inv-2026-11-0001@shop.example>"},
            {"name": "MIME-Version", "value": "1.0"},
            {"name": "Content-Type", "value": "multipart/alternative; boundary=\"----=_Part_1\""},
        ],
        "commonHeaders": {
            "from": ["Shop Billing <billing@shop.example>"],
            "to": CUSTOMERS,
            "messageId": "<inv-2026-11-0001@shop.example>",
            "subject": "Your November invoice",
        },
        "tags": {
            "ses:configuration-set": ["billing-events"],
            "ses:source-ip": ["192.0.2.10"],
            "ses:from-domain": ["shop.example"],
            "ses:caller-identity": ["billing-app"],
            "campaign": ["invoices-2026-11"],
        },
    },
    "send": {},
}


def test_send_record_gives_envelope_raw_headers_and_tags():
    out = convert(SEND, AdaptConfig())
    (e,) = out.events
    assert e.envelope_to == ["customer0@example0.com"]
    assert e.to == ", ".join(CUSTOMERS) and e.message_id == "<inv-2026-11-0001@shop.example>"
    assert e.service == "billing-events" and e.campaign == "invoices-2026-11"   # configuration set, tag
    assert e.to_wire()["sent_at"] == "2026-11-02T07:30:00.123Z"
    assert e.extra["provider"] == "ses" and e.extra["envelope_from"] == "Shop Billing <billing@shop.example>"
    # Round trip through the wire format and the disclosure signals: this copy is a leak.
    back = decode_event(e.encode())
    sig = disclosure_signals(parse_event(back), DisclosureRules())
    assert len(sig.strangers) == 11 and sig.verdict == "fire"


def test_service_tag_wins_and_commonheaders_used_without_headers():
    rec = copy.deepcopy(SEND)
    del rec["mail"]["headers"]
    rec["mail"]["commonHeaders"]["cc"] = ["auditor@shop.example"]
    rec["mail"]["tags"]["service"] = ["billing"]
    (e,) = convert(rec, AdaptConfig()).events
    assert e.service == "billing" and e.cc == "auditor@shop.example"
    assert e.to == ", ".join(CUSTOMERS) and e.extra["headers_source"] == "commonHeaders"


def test_same_record_twice_has_the_same_event_id_and_other_types_are_skipped():
    delivery = copy.deepcopy(SEND)
    delivery["eventType"] = "Delivery"
    delivery["delivery"] = {"timestamp": "2026-11-02T07:30:01.000Z", "recipients": ["customer0@example0.com"],
                            "processingTimeMillis": 546, "smtpResponse": "250 ok", "reportingMTA": "a8-70.smtp-out"}
    open_ = {"eventType": "Open", "mail": SEND["mail"], "open": {"ipAddress": "192.0.2.1", "timestamp": "x"}}
    out = convert([SEND, SEND, delivery, open_], AdaptConfig())
    assert [e.event_id for e in out.events][0] == out.events[1].event_id and len(out.events) == 2
    assert out.skipped == {"event_type_delivery": 1, "event_type_open": 1}


def test_sns_and_eventbridge_envelopes_are_unwrapped():
    sns = {"Type": "Notification", "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
           "TopicArn": "arn:aws:sns:eu-west-1:123456789012:ses-events", "Message": json.dumps(SEND),
           "Timestamp": "2026-11-02T07:30:00.500Z", "SignatureVersion": "1", "Signature": "EXAMPLE"}
    bridge = {"version": "0", "id": "a1b2", "detail-type": "Email Sent", "source": "aws.ses",
              "account": "123456789012", "time": "2026-11-02T07:30:00Z", "region": "eu-west-1", "detail": SEND}
    confirm = {"Type": "SubscriptionConfirmation", "TopicArn": "arn:aws:sns:eu-west-1:123456789012:ses-events",
               "SubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=x"}
    out = convert([sns, bridge, confirm], AdaptConfig())
    assert [e.message_id for e in out.events] == ["<inv-2026-11-0001@shop.example>"] * 2
    assert out.skipped == {"sns_subscription_confirmation": 1} and "ses-events" in out.notes[0]


def test_cli_converts_jsonl_from_stdin(tmp_path):
    lines = "\n".join(json.dumps(r) for r in (SEND, {"eventType": "Bounce", "mail": SEND["mail"]})) + "\n"
    p = subprocess.run([sys.executable, "-m", "mailaudit.cli", "adapt", "ses", "--in", "-", "--service", "x"],
                       input=lines, capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    (line,) = p.stdout.splitlines()
    e = decode_event(line.encode(), extra_fields=["provider"])
    assert e.envelope_to == ["customer0@example0.com"] and e.extra == {"provider": "ses"}
    assert '1 event(s) converted; skipped: {"event_type_bounce": 1}' in p.stderr


def test_cli_bad_input_is_one_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"eventType": "Send"}\nnot json\n')
    p = subprocess.run([sys.executable, "-m", "mailaudit.cli", "adapt", "ses", "--in", str(f)],
                       capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert p.returncode == 2 and p.stderr.strip() == "mailaudit adapt: line 2 is not JSON: Expecting value: line 1 column 1 (char 0)"
