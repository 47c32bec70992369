"""Amazon SES event publishing records -> wire v1 events (pure: no I/O).

SES publishes one ``Send`` record per accepted API/SMTP submission (through SNS, Firehose or
EventBridge). Its ``mail`` object is what mailaudit needs: ``destination`` is the envelope (every
recipient of the submission), ``headers`` the raw header fields when the configuration set includes
them (``headersTruncated`` says whether SES cut them), ``commonHeaders.to/cc`` the parsed visible
recipients otherwise. So an SES sender gets the full disclosure detection: a To listing customers who
are not in ``destination`` is a stranger list, exactly as in the milter.

Other event types (Delivery, Bounce, Open...) describe the same message again, per recipient or per
reader; they are counted and skipped so a message is one event, as the contract wants.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Iterable

from mailaudit.adapters.config import AdaptConfig
from mailaudit.adapters.events import Converted, HeaderBlock
from mailaudit.ingest.wire import Event, parse_time

# Deterministic event ids: SNS and Firehose deliver at least once; a re-delivery must dedup downstream.
NAMESPACE = uuid.UUID("6f1d3c52-7a0e-4d8c-9a57-2b6f0e4c1a90")


def _first(tags: dict[str, Any], name: str) -> str | None:
    v = tags.get(name)
    if isinstance(v, list):
        v = v[0] if v else None
    return v.strip() or None if isinstance(v, str) else None


def _joined(values: Any) -> str:
    if isinstance(values, list):
        return ", ".join(str(v) for v in values)
    return values if isinstance(values, str) else ""


def unwrap(doc: Any, out: Converted) -> Iterable[dict]:
    """SES records from whatever carried them: a bare record, a list, an SNS notification (its
    ``Message`` is the record as a JSON string) or an EventBridge event (record in ``detail``)."""
    if isinstance(doc, list):
        for d in doc:
            yield from unwrap(d, out)
        return
    if not isinstance(doc, dict):
        out.skip("not_an_object")
        return
    kind = doc.get("Type")
    if kind == "SubscriptionConfirmation":
        out.notes.append("SNS subscription confirmation received: confirm it with the SubscribeURL "
                         f"of topic {doc.get('TopicArn', '?')} (see docs/integrations/ses.md)")
        out.skip("sns_subscription_confirmation")
        return
    if kind == "Notification" and isinstance(doc.get("Message"), str):
        try:
            inner = json.loads(doc["Message"])
        except ValueError:
            out.skip("sns_message_not_json")
            return
        yield from unwrap(inner, out)
        return
    if "detail" in doc and isinstance(doc.get("detail"), dict) and "mail" in doc["detail"]:
        yield doc["detail"]
        return
    yield doc


def convert_record(rec: dict, acfg: AdaptConfig) -> tuple[Event | None, str | None]:
    """One SES record -> (event, None), or (None, skip reason)."""
    kind = rec.get("eventType") or rec.get("notificationType")
    if kind != "Send":
        return None, f"event_type_{str(kind or 'missing').lower()}"
    mail = rec.get("mail")
    if not isinstance(mail, dict):
        return None, "no_mail_object"
    destination = mail.get("destination")
    if not isinstance(destination, list) or not destination:
        return None, "no_destination"
    try:
        sent_at_ms = parse_time(str(mail.get("timestamp", "")))
    except ValueError:
        return None, "bad_timestamp"
    headers = HeaderBlock(
        (str(h.get("name", "")), str(h.get("value", "")))
        for h in (mail.get("headers") or []) if isinstance(h, dict)
    )
    common = mail.get("commonHeaders") if isinstance(mail.get("commonHeaders"), dict) else {}
    tags = mail.get("tags") if isinstance(mail.get("tags"), dict) else {}
    ses_id = str(mail.get("messageId") or "")

    service = (headers.first("X-Mailaudit-Service") or "").strip() or _first(tags, acfg.service_tag) \
        or _first(tags, "ses:configuration-set") or acfg.default_service or "ses"
    campaign = (headers.first("X-Mailaudit-Campaign") or "").strip() or _first(tags, acfg.campaign_tag)
    template = (headers.first("X-Mailaudit-Template") or "").strip() or _first(tags, acfg.template_tag)

    to = headers.joined("To")
    cc = headers.joined("Cc")
    extra: dict[str, Any] = {"provider": "ses", "provider_message_id": ses_id}
    if to is None:                     # no headers in the record: the parsed lists are what we have
        to = _joined(common.get("to"))
        cc = _joined(common.get("cc"))
        extra["headers_source"] = "commonHeaders"
    if mail.get("headersTruncated"):
        extra["headers_truncated"] = True
    if isinstance(mail.get("source"), str):
        extra["envelope_from"] = mail["source"]
    mid = (headers.first("Message-ID") or "").strip() or str(common.get("messageId") or "") or ses_id
    subject = headers.first("Subject") if headers.fields else common.get("subject")
    return Event(
        event_id=str(uuid.uuid5(NAMESPACE, f"ses:{ses_id}:{kind}:{mail.get('timestamp')}")),
        sent_at_ms=sent_at_ms,
        service=service,
        message_id=mid,
        from_=headers.first("From") or _joined(common.get("from")) or str(mail.get("source") or ""),
        to=to,
        envelope_to=[str(a) for a in destination],
        campaign=campaign,
        template=template,
        cc=cc or "",
        bcc=headers.joined("Bcc"),
        subject=subject if acfg.include_subject and isinstance(subject, str) else None,
        extra=extra,
    ), None


def convert(doc: Any, acfg: AdaptConfig) -> Converted:
    out = Converted()
    for rec in unwrap(doc, out):
        try:
            event, reason = convert_record(rec, acfg)
        except Exception:  # noqa: BLE001 - one bad record (wrong field types...) is skipped, not the batch
            event, reason = None, "bad_record"
        if event is None:
            out.skip(reason or "unknown")
        else:
            out.events.append(event)
    return out
