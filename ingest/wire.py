"""Wire format v1: one outbound message as a mailer publishes it (see docs/wire-format.md).

Validation is strict about what the contract requires and lenient about what it does not (unknown
fields are ignored unless listed in ``extra_fields``). Every rejection carries a short machine reason
(``MalformedEvent.reason``) for the DLQ header and the errors table, and a human detail.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

import msgspec


class MalformedEvent(ValueError):
    """An event that breaks wire format v1. ``reason`` is a stable short code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Event:
    event_id: str
    sent_at_ms: int                      # event time, UTC epoch milliseconds
    service: str
    message_id: str
    from_: str
    to: str
    envelope_to: list[str]
    campaign: str | None = None
    template: str | None = None
    cc: str = ""
    bcc: str | None = None               # None: no Bcc header in the sent copy (the normal case)
    subject: str | None = None
    size_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # The event_id as a UUID when the decoder built one (a UUID column takes UUID objects as they are,
    # a string costs a parse per row); None when the text was checked without building it.
    uid: uuid.UUID | None = field(default=None, compare=False, repr=False)

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "v": 1,
            "event_id": self.event_id,
            "sent_at": format_time(self.sent_at_ms),
            "service": self.service,
            "campaign": self.campaign,
            "template": self.template,
            "message_id": self.message_id,
            "from": self.from_,
            "to": self.to,
            "envelope_to": list(self.envelope_to),
        }
        if self.cc:
            d["cc"] = self.cc
        if self.bcc is not None:
            d["bcc"] = self.bcc
        if self.subject is not None:
            d["subject"] = self.subject
        if self.size_bytes is not None:
            d["size_bytes"] = self.size_bytes
        d.update(self.extra)
        return d

    def encode(self) -> bytes:
        return json.dumps(self.to_wire(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# RFC 3339 date-time with a mandatory offset; any number of fractional digits.
_TIME_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):?(\d{2}))\Z"
)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)


def parse_time(value: str) -> int:
    """RFC 3339 → UTC epoch milliseconds. A time without an offset is ambiguous, so it is refused."""
    if len(value) == 24 and value[19] == "." and value[23] == "Z" and value[20:23].isdecimal():
        # "2026-11-02T07:30:00.000Z", the shape we and most mailers write: the events of a batch share
        # their seconds, so the full parse runs once per second seen, not once per event (hot path).
        base = _SECONDS.get(value[:19])
        if base is None:
            base = _parse_time(value) - int(value[20:23])
            if len(_SECONDS) >= _SECONDS_MAX:
                _SECONDS.clear()
            _SECONDS[value[:19]] = base
        return base + int(value[20:23])
    return _parse_time(value)


# The instant of each "YYYY-MM-DDTHH:MM:SS" prefix seen in the canonical shape; cleared when full.
_SECONDS: dict[str, int] = {}
_SECONDS_MAX = 4096


def _parse_time(value: str) -> int:
    m = _TIME_RE.match(value)
    if not m:
        raise ValueError(f"not an RFC 3339 time with offset: {value[:40]!r}")
    y, mo, d, h, mi, s, frac, z, sign, oh, om = m.groups()
    if (frac is None or len(frac) <= 6) and s != "60" and (z or (int(oh) <= 23 and int(om) <= 59)):
        # The shape is checked above; the C parser does the arithmetic (hot path of ingest).
        try:
            return (datetime.fromisoformat(value) - _EPOCH) // _MS
        except ValueError:
            pass                                        # e.g. Feb 30: the slow path says why
    try:
        dt = datetime(int(y), int(mo), int(d), int(h), int(mi), min(int(s), 59), tzinfo=timezone.utc)
    except ValueError as e:
        raise ValueError(f"invalid date/time {value[:40]!r}: {e}") from None
    ms = int(dt.timestamp()) * 1000 + (int(frac[:3].ljust(3, "0")) if frac else 0)
    if not z:
        if int(oh) > 23 or int(om) > 59:
            raise ValueError(f"invalid offset in {value[:40]!r}")
        off = (int(oh) * 60 + int(om)) * 60_000
        ms -= off if sign == "+" else -off
    return ms


def format_time(ms: int) -> str:
    """UTC epoch milliseconds → ``2026-11-02T07:30:00.000Z`` (the format of every time we emit)."""
    dt = datetime.fromtimestamp(ms // 1000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


_REQUIRED_STR = ("event_id", "sent_at", "service", "message_id", "from", "to")
_OPTIONAL_STR = ("cc", "bcc", "subject")
_NULLABLE_STR = ("campaign", "template")
KNOWN_FIELDS = frozenset(
    ("v", "envelope_to", "size_bytes") + _REQUIRED_STR + _OPTIONAL_STR + _NULLABLE_STR
)
_MAX_SIZE = 2**32 - 1


class _Fields(msgspec.Struct, kw_only=True, gc=False):
    """The shape of a well-formed event, typed: msgspec rejects anything else and the reference path
    says why (the reason codes and messages of docs/wire-format.md come only from there)."""

    v: int
    sent_at: str
    service: str
    message_id: str
    from_: str = msgspec.field(name="from")
    to: str
    envelope_to: list[str]
    campaign: str | None = None
    template: str | None = None
    cc: str | None = None
    bcc: str | None = None
    subject: str | None = None
    size_bytes: int | None = None


class _Strict(_Fields, kw_only=True, gc=False):
    event_id: str


class WireRow(_Fields, kw_only=True, gc=False):
    """A well-formed event as ingest stores it: the event id already a UUID, parsed by msgspec (C);
    its text form, which only ``Event`` keeps, is not needed for a row (the column is a UUID)."""

    event_id: uuid.UUID


_FAST = msgspec.json.Decoder(_Strict)
_FAST_ROW = msgspec.json.Decoder(WireRow)
_FAST_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)
_SURROGATE_ESCAPE_B = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def decode_event(raw: bytes, extra_fields: Iterable[str] = ()) -> Event:
    """Bytes of one Kafka message → ``Event``, or ``MalformedEvent`` saying exactly what is wrong.

    Two paths with one outcome: a compiled decode (msgspec, typed) for well-formed events, the hot
    path of ingest and detection; anything it refuses, or anything its checks do not cover, goes
    through the reference path (``json`` + ``validate_event``), which alone words the rejection.
    """
    if not extra_fields:
        event = _decode_fast(raw)
        if event is not None:
            return event
    return decode_event_reference(raw, extra_fields)


def _checked(decoder: msgspec.json.Decoder, raw: bytes):
    """``(typed event, sent_at in ms)`` when ``raw`` passes every check of the contract that msgspec's
    types do not make; None when the reference path must judge (or word) it."""
    if not raw.isascii():
        try:
            raw.decode("utf-8")        # the contract is UTF-8, including fields the decoder skips
        except UnicodeDecodeError:
            return None
    try:
        w = decoder.decode(raw)
    except _FAST_ERRORS:
        return None
    if w.v != 1 or not w.service.strip():
        return None
    size = w.size_bytes
    if size is not None and not 0 <= size <= _MAX_SIZE:
        return None
    # One byte is a memchr; a two-byte needle ("\\u") costs ~0.9 µs per event, more than the regex.
    if b"\\" in raw and _SURROGATE_ESCAPE_B.search(raw):
        return None
    try:
        return w, parse_time(w.sent_at)
    except ValueError:
        return None


def decode_row(raw: bytes) -> tuple[WireRow, int] | None:
    """The typed decode for storage alone (``ingest.rows.EventRows.add_raw``): what ``decode_event``
    accepts on its compiled path, without building an ``Event``. None: take ``decode_event``."""
    return _checked(_FAST_ROW, raw)


# The form every mailer writes, checked by one match (~0.2 µs) instead of building a UUID (~1.2 µs):
# the detector needs the id's text, not the object (a row takes ``decode_row``'s UUID).
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _decode_fast(raw: bytes) -> Event | None:
    """The typed decode, or None when the reference path must judge (or word) the input."""
    got = _checked(_FAST, raw)
    if got is None:
        return None
    w, sent_at_ms = got
    event_id = w.event_id
    uid = None
    if _CANONICAL_UUID.fullmatch(event_id) is None:     # a UUID written otherwise: let uuid judge it
        try:
            uid = uuid.UUID(event_id)
        except ValueError:
            return None
    return Event(
        event_id=event_id.lower(),
        sent_at_ms=sent_at_ms,
        service=w.service,
        message_id=w.message_id,
        from_=w.from_,
        to=w.to,
        envelope_to=w.envelope_to,
        campaign=w.campaign or None,
        template=w.template or None,
        cc=w.cc or "",
        bcc=w.bcc,
        subject=w.subject,
        size_bytes=w.size_bytes,
        extra={},
        uid=uid,
    )


def decode_event_reference(raw: bytes, extra_fields: Iterable[str] = ()) -> Event:
    """The reference decode (stdlib ``json`` + ``validate_event``): the contract's wording of every
    rejection, and the path for events carrying ``extra_fields``."""
    try:
        # Decode explicitly: json.loads(bytes) would also accept UTF-16/32, and the contract is UTF-8.
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedEvent("invalid_utf8", f"not UTF-8 at byte {e.start}") from None
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise MalformedEvent("invalid_json", str(e)[:200]) from None
    event = validate_event(doc, extra_fields)
    if "\\u" in text and _SURROGATE_ESCAPE.search(text):
        _refuse_lone_surrogates(event)
    return event


# A JSON \u escape of a UTF-16 surrogate. A correct pair decodes to one character; a lone one decodes
# to a string no UTF-8 encoder accepts, which would make the batch insert fail on every retry.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _refuse_lone_surrogates(event: Event) -> None:
    for name in ("event_id", "service", "campaign", "template", "message_id", "from_", "to", "cc", "bcc", "subject"):
        value = getattr(event, name)
        if value:
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise MalformedEvent("invalid_utf8", f"{name.rstrip('_')} holds a lone UTF-16 surrogate escape") from None
    for i, a in enumerate(event.envelope_to):
        try:
            a.encode("utf-8")
        except UnicodeEncodeError:
            raise MalformedEvent("invalid_utf8", f"envelope_to[{i}] holds a lone UTF-16 surrogate escape") from None
    if event.extra:
        try:
            json.dumps(event.extra, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise MalformedEvent("invalid_utf8", "an extra field holds a lone UTF-16 surrogate escape") from None


def validate_event(doc: Any, extra_fields: Iterable[str] = ()) -> Event:
    if not isinstance(doc, dict):
        raise MalformedEvent("not_an_object", f"top level is {type(doc).__name__}, not an object")
    v = doc.get("v")
    if v is None:
        raise MalformedEvent("missing_field", "v")
    if type(v) is not int or v != 1:
        raise MalformedEvent("unsupported_version", f"v={v!r}; this consumer reads v=1")
    for name in _REQUIRED_STR:
        value = doc.get(name)
        if value is None:
            raise MalformedEvent("missing_field", name)
        if type(value) is not str:
            raise MalformedEvent("wrong_type", f"{name} must be a string, got {type(value).__name__}")
    for name in _OPTIONAL_STR + _NULLABLE_STR:
        value = doc.get(name)
        if value is not None and type(value) is not str:
            raise MalformedEvent("wrong_type", f"{name} must be a string, got {type(value).__name__}")
    env = doc.get("envelope_to")
    if env is None:
        raise MalformedEvent("missing_field", "envelope_to")
    if type(env) is not list or any(type(a) is not str for a in env):
        raise MalformedEvent("wrong_type", "envelope_to must be an array of strings")
    size = doc.get("size_bytes")
    if size is not None and (type(size) is not int or not 0 <= size <= _MAX_SIZE):
        raise MalformedEvent("wrong_type", f"size_bytes must be a non-negative integer, got {size!r}")
    event_id = doc["event_id"]
    try:
        uuid.UUID(event_id)
    except ValueError:
        raise MalformedEvent("bad_event_id", f"event_id is not a UUID: {event_id[:40]!r}") from None
    try:
        sent_at_ms = parse_time(doc["sent_at"])
    except ValueError as e:
        raise MalformedEvent("bad_sent_at", str(e)) from None
    if not doc["service"].strip():
        raise MalformedEvent("empty_field", "service must not be empty")
    extra = {k: doc[k] for k in extra_fields if k in doc and k not in KNOWN_FIELDS}
    return Event(
        event_id=event_id.lower(),
        sent_at_ms=sent_at_ms,
        service=doc["service"],
        message_id=doc["message_id"],
        from_=doc["from"],
        to=doc["to"],
        envelope_to=env,
        campaign=doc.get("campaign") or None,
        template=doc.get("template") or None,
        cc=doc.get("cc") or "",
        bcc=doc.get("bcc"),
        subject=doc.get("subject"),
        size_bytes=size,
        extra=extra,
    )
