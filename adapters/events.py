"""Wire v1 events from what an MTA sees: the SMTP envelope and the raw header fields.

The milter never gets an ``EmailMessage``: it gets MAIL FROM, each RCPT TO and the header fields one by
one, as the client wrote them. Building the event from those (instead of re-parsing a serialised
message) keeps the header values byte-for-byte raw and costs next to nothing per message.
Which service and campaign a message belongs to is decided here too, the same way for every adapter.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from mailaudit.ingest.privacy import redact_text
from mailaudit.ingest.wire import Event


@dataclass(frozen=True, slots=True)
class Identity:
    service: str
    campaign: str | None
    template: str | None
    source: str                 # "header" | "sender" | "default": where the service came from (logs, metrics)


def strip_brackets(addr: str) -> str:
    """``<a@b>`` (as MTAs pass envelope addresses) -> ``a@b``; the null sender ``<>`` -> ``""``."""
    a = addr.strip()
    if a.startswith("<") and a.endswith(">"):
        a = a[1:-1].strip()
    return a


def service_for_sender(mail_from: str, senders: Mapping[str, str]) -> str | None:
    """Exact MAIL FROM first, then its domain (``@domain``), then parent domains (``@.example``)."""
    if not senders or not mail_from:
        return None
    addr = mail_from.lower()
    if addr in senders:
        return senders[addr]
    domain = addr.rpartition("@")[2]
    if "@" + domain in senders:
        return senders["@" + domain]
    parts = domain.split(".")
    for i in range(1, len(parts)):
        key = "@." + ".".join(parts[i:])
        if key in senders:
            return senders[key]
    return None


def resolve_identity(
    header_service: str | None,
    header_campaign: str | None,
    header_template: str | None,
    mail_from: str,
    senders: Mapping[str, str],
    default_service: str,
) -> Identity:
    """A service header wins (the sender said so), then the sender map, then the default.

    Header values are the sender's free text and are stored as sent: an address typed into one is
    masked here (issue 14), since service, campaign and template are not treated as personal data."""
    campaign = _name((header_campaign or "").strip()) or None
    template = _name((header_template or "").strip()) or None
    svc = _name((header_service or "").strip())
    if svc:
        return Identity(svc, campaign, template, "header")
    svc = service_for_sender(mail_from, senders)
    if svc:
        return Identity(svc, campaign, template, "sender")
    return Identity(default_service, campaign, template, "default")


def _name(value: str) -> str:
    return redact_text(value) if "@" in value or "%40" in value.lower() else value


def lower_senders(senders: Mapping[str, str]) -> dict[str, str]:
    return {k.strip().lower(): v.strip() for k, v in senders.items()}


@dataclass
class Converted:
    """What a provider payload turned into: events, and what was skipped and why."""

    events: list[Event] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)     # reason -> count
    notes: list[str] = field(default_factory=list)            # e.g. an SNS subscription to confirm

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


class HeaderBlock:
    """Header fields in arrival order with raw values; lookups are case-insensitive."""

    __slots__ = ("fields", "_index")

    def __init__(self, fields: Iterable[tuple[str, str]] = ()):
        self.fields: list[tuple[str, str]] = []
        self._index: dict[str, list[str]] = {}
        for name, value in fields:
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        self.fields.append((name, value))
        self._index.setdefault(name.lower(), []).append(value)

    def first(self, name: str) -> str | None:
        values = self._index.get(name.lower())
        return values[0] if values else None

    def joined(self, name: str) -> str | None:
        """All occurrences of a field joined with ", " (a second To: is as visible as the first)."""
        values = self._index.get(name.lower())
        return None if values is None else ", ".join(values)

    def count(self, name: str) -> int:
        return len(self._index.get(name.lower(), ()))

    def size(self) -> int:
        """Bytes of the header block as transmitted ("Name: value\\r\\n" each, then the blank line)."""
        return sum(len(n) + len(v.encode("utf-8", "surrogateescape")) + 4 for n, v in self.fields) + 2


def build_event(
    identity: Identity,
    mail_from: str,
    rcpts: list[str],
    headers: HeaderBlock,
    *,
    body_bytes: int = 0,
    sent_at_ms: int | None = None,
    include_subject: bool = True,
    envelope_from: bool = True,
    fallback_message_id: str | None = None,
    event_id: str | None = None,
) -> Event:
    """One submission -> one event. ``rcpts`` are the RCPT TO addresses, brackets already stripped."""
    mid = (headers.first("Message-ID") or "").strip() or (fallback_message_id or "")
    extra = {"envelope_from": mail_from} if envelope_from else {}
    return Event(
        event_id=event_id or str(uuid.uuid4()),
        sent_at_ms=int(time.time() * 1000) if sent_at_ms is None else sent_at_ms,
        service=identity.service,
        message_id=mid,
        from_=headers.first("From") or "",
        to=headers.joined("To") or "",
        envelope_to=list(rcpts),
        campaign=identity.campaign,
        template=identity.template,
        cc=headers.joined("Cc") or "",
        bcc=headers.joined("Bcc"),
        subject=headers.first("Subject") if include_subject else None,
        size_bytes=headers.size() + body_bytes,
        extra=extra,
    )


def split_message(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(header block, separator, body) of a serialised message; CRLF or bare LF line ends."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = data.find(sep)
        if i >= 0:
            return data[:i], sep, data[i + len(sep):]
    return data, b"", b""


def headers_from_bytes(data: bytes) -> HeaderBlock:
    """The header fields of a serialised message as an MTA's milter sees them: raw values, folding kept
    (joined with "\\n"), the one space after the colon removed."""
    block, _, _ = split_message(data)
    out: list[list[str]] = []
    for line in block.decode("utf-8", "replace").splitlines():
        if line[:1] in (" ", "\t") and out:
            out[-1][1] += "\n" + line
            continue
        name, sep, value = line.partition(":")
        if sep:
            out.append([name.strip(), value[1:] if value[:1] == " " else value])
    return HeaderBlock((n, v) for n, v in out)


def strip_fields(data: bytes, names: Iterable[str]) -> bytes:
    """``data`` without the named header fields (continuation lines included); the body is untouched."""
    drop = {n.lower().encode() for n in names}
    block, sep, body = split_message(data)
    nl = b"\r\n" if b"\r\n" in block else b"\n"
    kept, skipping = [], False
    for line in block.split(nl):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.partition(b":")[0].strip().lower() in drop
        if not skipping:
            kept.append(line)
    return nl.join(kept) + sep + body
