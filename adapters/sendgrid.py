"""SendGrid Event Webhook batches -> wire v1 events (pure: no I/O).

What SendGrid tells and what it does not: the Event Webhook posts a JSON array of events, one per
recipient and per thing that happened (processed, delivered, open...). There is no To or Cc header
in them and no From: only the recipient (``email``), the message (``smtp-id``, ``sg_message_id``),
the time, categories and custom args. So from SendGrid mailaudit gets volume and recipient counts per
service/campaign (spike detection works) and the envelope of each message, but **no disclosure
detection**: a concatenated To cannot be seen in these events. Send through the milter (SMTP relay
via Postfix) or the smtplib drop-in when that matters.

One wire event per message: the ``processed`` events of one ``smtp-id`` in a batch become one event
whose ``envelope_to`` lists their recipients (SendGrid usually posts them together; when a message's
recipients are split over batches they become sibling events of one Message-ID, which the detector
handles). Other event types are counted and skipped.
"""

from __future__ import annotations

import math
import uuid
from typing import Any

from mailaudit.adapters.config import AdaptConfig
from mailaudit.adapters.events import Converted
from mailaudit.ingest.wire import Event

NAMESPACE = uuid.UUID("0b7d2f4e-5c61-4a8e-8f3d-91a2c6e7b504")


def _str(v: Any) -> str | None:
    if isinstance(v, list):
        v = v[0] if v else None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = str(v)
    return v.strip() or None if isinstance(v, str) else None


def convert(doc: Any, acfg: AdaptConfig) -> Converted:
    out = Converted()
    items = doc if isinstance(doc, list) else [doc]
    groups: dict[str, list[dict]] = {}
    for ev in items:
        if not isinstance(ev, dict):
            out.skip("not_an_object")
            continue
        kind = ev.get("event")
        if kind != "processed":
            out.skip(f"event_type_{str(kind or 'missing').lower()}")
            continue
        if not isinstance(ev.get("email"), str) or not ev["email"].strip():
            out.skip("no_email")
            continue
        ts = ev.get("timestamp")
        if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts) \
                or not 0 <= ts < 1e11:
            out.skip("bad_timestamp")
            continue
        key = _str(ev.get("smtp-id")) or (_str(ev.get("sg_message_id")) or "").split(".filter")[0]
        if not key:
            out.skip("no_message_id")
            continue
        groups.setdefault(key, []).append(ev)
    for mid, evs in groups.items():
        try:
            out.events.append(_event(mid, evs, acfg))
        except Exception:  # noqa: BLE001 - one bad message is skipped, not the batch
            out.skip("bad_record")
    return out


def _event(mid: str, evs: list[dict], acfg: AdaptConfig) -> Event:
    """One wire event from the ``processed`` events of one message."""
    first = evs[0]
    service = (_str(first.get(acfg.service_tag)) or _str(first.get("category"))
               or acfg.default_service or "sendgrid")
    campaign = (_str(first.get(acfg.campaign_tag)) or _str(first.get("marketing_campaign_name"))
                or _str(first.get("singlesend_name")) or _str(first.get("marketing_campaign_id")))
    template = _str(first.get(acfg.template_tag)) or _str(first.get("sg_template_name")) \
        or _str(first.get("sg_template_id"))
    ids = sorted(str(e.get("sg_event_id", "")) for e in evs)
    return Event(
        event_id=str(uuid.uuid5(NAMESPACE, "sendgrid:" + mid + ":" + ",".join(ids))),
        sent_at_ms=int(min(float(e["timestamp"]) for e in evs) * 1000),
        service=service,
        message_id=mid,
        from_="",                  # not in the Event Webhook
        to="",                     # not in the Event Webhook: see the module docstring
        envelope_to=[e["email"].strip() for e in evs],
        campaign=campaign,
        template=template,
        extra={"provider": "sendgrid", "provider_message_id": _str(first.get("sg_message_id")) or "",
               "headers_source": "none"},
    )
