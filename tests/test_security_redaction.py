"""Issue 14, finding 3 and the low redaction findings: what a malformed event leaves in the errors table.

The excerpt keeps the record's structure (keys, numbers, masked addresses) and nothing a person wrote:
no subject, no display name, no local part, wherever the record is cut."""

from __future__ import annotations

import json

import pytest

from mailaudit.ingest.dlq import EXCERPT_CHARS, Rejected, error_columns, excerpt, service_label
from mailaudit.ingest.privacy import redact_detail, redact_structure, redact_text

SECRET_WORDS = ("termination", "HIV", "Canary", "Quux", "jane.canary", "bob.quux", "Patient", "Zed")

RECORD = json.dumps({
    "v": 1, "event_id": "9b1c1f7e-0000-4000-8000-000000000001", "service": "billing", "size_bytes": "12",
    "subject": "Your termination and HIV test results",
    "from": "Dr Jane Canary <jane.canary@clinic.example>",
    "to": "Bob Quux <bob.quux@x.org>, carol@y.com", "envelope_to": ["bob.quux@x.org"],
    "extra": {"Patient Name": "Zed"},
}).encode()


def _leaks(text: str) -> list[str]:
    return [w for w in SECRET_WORDS if w.lower() in text.lower()]


def test_excerpt_keeps_structure_and_masked_addresses_only():
    out = excerpt(RECORD)
    assert not _leaks(out), out
    for kept in ('"subject":', '"size_bytes": "12"', '"service": "billing"', "j***@clinic.example", "b***@x.org",
                 "c***@y.com", '"v": 1'):
        assert kept in out, (kept, out)


@pytest.mark.parametrize("cut", range(1, len(RECORD) + 1, 3))
def test_no_cut_of_the_record_leaks_anything(cut):
    # A truncated record (the DLQ keeps a prefix) and the excerpt's own cut: redaction runs first.
    out = excerpt(RECORD[:cut])
    assert len(out) <= EXCERPT_CHARS and not _leaks(out), out


def test_an_address_straddling_the_excerpt_limit_is_never_half_shown():
    pad = "x" * (EXCERPT_CHARS - 20)
    value = json.dumps({"service": "s", "note": pad, "to": "averyuniquecanarylocalpart@example.org"}).encode()
    out = excerpt(value)
    assert "averyunique" not in out and "canarylocal" not in out


def test_non_json_text_is_reduced_to_masked_addresses():
    out = excerpt(b"Subject: HIV results for jane.canary@clinic.example\r\nTo: \"Bob Quux\" <bob.quux@x.org>")
    assert not _leaks(out) and "j***@clinic.example" in out and "b***@x.org" in out


def test_binary_and_escaped_forms():
    out = redact_structure('{"to":"jane.canary\\u0040clinic.example","x":"bob.quux%40x.org"}')
    assert not _leaks(out) and "j***@clinic.example" in out
    assert redact_structure(b"\xff\xfe garbage \x00") and isinstance(redact_structure(None), str)


def test_detail_quotes_lose_their_words():
    d = redact_detail("size_bytes must be a non-negative integer, got 'Your termination and HIV test results'")
    assert not _leaks(d) and d.startswith("size_bytes must be a non-negative integer, got '")
    assert redact_detail("v='jane.canary@clinic.example'; this consumer reads v=1").count("j***@clinic.example") == 1
    assert redact_detail("Expecting ',' delimiter: line 1 column 5 (char 4)") == \
        "Expecting ',' delimiter: line 1 column 5 (char 4)"


def test_error_row_holds_no_clear_text_in_any_column():
    r = Rejected("mail.headers", 0, 7, 1_700_000_000_000, b"jane.canary@clinic.example", RECORD, "wrong_type",
                 "size_bytes must be a non-negative integer, got 'Your termination and HIV test results'")
    cols = error_columns([r])
    for name, values in cols.items():
        assert not _leaks(str(values[0])), (name, values[0])
    assert cols["service"] == ["[unreadable key, 26 bytes]"]
    assert service_label(b"billing-eu") == "billing-eu"


@pytest.mark.parametrize("text,masked", [
    ("=?utf-8?Q?jane.canary=40clinic.example?=", "***@clinic.example"),
    ("jane.canary\uff20clinic.example", "j***@clinic.example"),
    ("jane.canary\ufe6bclinic.example", "j***@clinic.example"),
    ("write to jane.canary @ clinic.example today", "j***@clinic.example"),
    ("jane.canary&#64;clinic.example", "j***@clinic.example"),
])
def test_redact_text_catches_obfuscated_at_signs(text, masked):
    out = redact_text(text)
    assert masked in out and "jane.canary" not in out, out
