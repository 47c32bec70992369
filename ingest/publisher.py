"""Publisher SDK: one call for a mailer to record what it sends, without ever being slowed by Kafka.

Typical use, around an ``smtplib`` send::

    pub = Publisher(cfg.kafka, service="newsletter", guard=HoldGuard(cfg.kafka))
    for rcpt in audience:
        msg = build(rcpt)
        pub.publish(msg, [rcpt], campaign="nl-2026-11")   # raises CampaignHeld if contained
        smtp.send_message(msg, to_addrs=[rcpt])
    pub.close()

Call ``publish`` *before* handing the message to SMTP: a held campaign then stops at the next copy.

Why the design:
- The audit log must not become the mailer's outage. ``publish`` only serialises the event and puts
  it in a bounded in-memory buffer; a background thread owns the Kafka producer (and its connection
  attempts). ``publish`` waits at most ``max_block_ms`` for buffer space; when the buffer is still
  full it raises ``PublishBufferFull`` (``on_full="raise"``) or drops the event and counts it
  (``on_full="drop"``). The buffer bound covers every event not yet acknowledged by Kafka.
- Counters tell the operator what happened: ``published`` (acknowledged), ``failed`` (accepted but
  not delivered: delivery timeout, broker error, or still buffered at ``close``), ``dropped``
  (refused at ``publish`` under ``on_full="drop"``). ``on_error(event_id, payload, exc)`` receives
  each failed event's wire JSON: append it to a file and replay it later with ``mailaudit publish``.
- The event is built from the message as it goes on the wire: the message is serialised (CRLF line
  ends, as SMTP transmits it) and the header block is read back raw, so ``to``/``cc``/``bcc`` keep
  display names, encoded words and folding exactly as written, and ``size_bytes`` is the real size.
  ``smtplib.SMTP.send_message`` deletes ``Bcc`` from the transmitted copy: pass
  ``bcc_stripped_by_transport=True`` when you send that way, or every message with a Bcc header
  would be reported as leaking it.

Control messages (topic ``mail.control``, containment; see issue "Real-time detection" item 7)
------------------------------------------------------------------------------------------------
One JSON object per Kafka message, UTF-8::

    {"v": 1, "action": "hold" | "release", "service": "newsletter", "campaign": "nl-2026-11" | null,
     "reason": "concatenated To on copy #1", "at": "2026-11-02T07:30:00.000Z", "by": "mailaudit-detect"}

- ``campaign`` null addresses the whole service. For mail sent without a campaign, ``campaign`` names
  the template (the same "campaign or template" grouping incidents use).
- ``hold`` on (service, null) holds every message of the service; ``hold`` on (service, campaign)
  holds that campaign. ``release`` on (service, campaign) lifts that campaign's hold; ``release`` on
  (service, null) lifts the service hold *and* every campaign hold of the service issued before it.
- The command with the latest ``at`` wins (equal times: the later record), so the state does not
  depend on partition order. ``by`` (who issued it) and any other fields are informational.
- Key: the UTF-8 JSON array ``["service", "campaign-or-null"]``. Make the topic compacted
  (``cleanup.policy=compact``): the latest command per key is all the guard needs, and the rules
  above give the same state from the compacted log as from the full one.

``HoldGuard`` reads the topic from the beginning in a background thread (no consumer group: it
assigns every partition and seeks to the start) and keeps the hold state in memory. Until it has
caught up with the end of the topic it is not ``ready``; by default an unready guard lets mail through
(``fail_closed=False``: the audit log is not a gate), with ``fail_closed=True`` it holds everything.
"""

from __future__ import annotations

import email.message
import email.utils
import json
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterable

from mailaudit.config import KafkaConfig
from mailaudit.ingest.kafka_io import make_consumer, make_producer
from mailaudit.ingest.wire import Event, format_time, parse_time
from mailaudit.ingest.privacy import redact_text

log = logging.getLogger(__name__)


class PublishBufferFull(RuntimeError):
    """The buffer of unacknowledged events stayed full for ``max_block_ms`` (Kafka down or too slow)."""


class PublisherClosed(RuntimeError):
    """``publish`` after ``close``."""


class InvalidMessage(ValueError):
    """The message cannot be described in wire format v1 (no Message-ID, no envelope recipient...)."""


@dataclass(frozen=True, slots=True)
class Hold:
    service: str
    campaign: str | None          # None: the whole service
    reason: str
    at_ms: int
    by: str | None = None


class CampaignHeld(RuntimeError):
    """The service or campaign is held on ``mail.control``: do not send this message."""

    def __init__(self, hold: Hold):
        what = f"campaign {hold.campaign!r} of service {hold.service!r}" if hold.campaign else f"service {hold.service!r}"
        super().__init__(f"{what} is held: {hold.reason or 'no reason given'}")
        self.hold = hold


# --- building events from messages -------------------------------------------------------------

def _raw_headers(data: bytes) -> dict[str, list[str]]:
    """Header fields of a serialised message, values exactly as written (folding kept)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    block = data if end < 0 else data[:end]
    fields: dict[str, list[str]] = {}
    name: str | None = None
    for line in block.decode("utf-8", "replace").splitlines(keepends=True):
        if line[:1] in (" ", "\t") and name is not None:
            fields[name][-1] += line
            continue
        head, sep, value = line.partition(":")
        if not sep:
            name = None
            continue
        name = head.strip().lower()
        fields.setdefault(name, []).append(value[1:] if value[:1] in (" ", "\t") else value)
    # Line ends of the last line of each field are not part of the value; inner ones are folding.
    return {k: [v.rstrip("\r\n") for v in vs] for k, vs in fields.items()}


def envelope_of(message: email.message.Message) -> list[str]:
    """The recipients ``smtplib.send_message`` would use when given no ``to_addrs``: To, Cc and Bcc."""
    values = [str(v) for h in ("To", "Cc", "Bcc") for v in (message.get_all(h) or [])]
    return [addr for _, addr in email.utils.getaddresses(values) if addr]


def _time_ms(sent_at: datetime | int | float | None) -> int:
    if sent_at is None:
        return int(time.time() * 1000)
    if isinstance(sent_at, datetime):
        if sent_at.tzinfo is None:
            raise InvalidMessage("sent_at is a naive datetime; give it a timezone (e.g. timezone.utc)")
        return int(sent_at.timestamp() * 1000)
    if isinstance(sent_at, bool) or not isinstance(sent_at, (int, float)):
        raise InvalidMessage(f"sent_at must be a datetime or epoch milliseconds, got {type(sent_at).__name__}")
    return int(sent_at)


def event_from_message(
    message: email.message.Message | bytes,
    envelope_to: Iterable[str] | str | None,
    service: str,
    *,
    campaign: str | None = None,
    template: str | None = None,
    sent_at: datetime | int | None = None,
    include_subject: bool = True,
    bcc_stripped_by_transport: bool = False,
) -> Event:
    """Wire v1 event of one submission. ``message``: an ``EmailMessage`` (or any ``Message``) or the
    raw bytes being sent; ``envelope_to``: the SMTP RCPT TO addresses (``None``: derived from
    To/Cc/Bcc as ``smtplib.send_message`` does; a ``str`` is one address)."""
    if not service or not service.strip():
        raise InvalidMessage("service must not be empty")
    if isinstance(message, (bytes, bytearray, memoryview)):
        data = bytes(message)
    else:
        try:
            data = message.as_bytes(policy=message.policy.clone(linesep="\r\n"))
        except Exception as e:                    # the mailer's SMTP send would fail the same way
            raise InvalidMessage(f"message cannot be serialised: {e}") from e
    headers = _raw_headers(data)
    if envelope_to is None:
        if not isinstance(message, email.message.Message):
            raise InvalidMessage("envelope_to is required with a raw message")
        envelope = envelope_of(message)
    elif isinstance(envelope_to, str):
        envelope = [envelope_to]
    else:
        envelope = list(envelope_to)
    envelope = [a.strip() for a in envelope if isinstance(a, str) and a.strip()]
    if not envelope:
        raise InvalidMessage("no envelope recipient")
    mid = (headers.get("message-id") or [""])[0].strip()
    if not mid:
        raise InvalidMessage("message has no Message-ID header: set one (email.utils.make_msgid()) before "
                             "sending, so copies of one message can be matched")

    def joined(name: str) -> str | None:
        values = headers.get(name)
        return None if values is None else ", ".join(values)

    subject = joined("subject") if include_subject else None
    return Event(
        event_id=str(uuid.uuid4()),
        sent_at_ms=_time_ms(sent_at),
        service=service,
        message_id=mid,
        from_=(headers.get("from") or [""])[0],
        to=joined("to") or "",
        envelope_to=envelope,
        campaign=campaign or None,
        template=template or None,
        cc=joined("cc") or "",
        bcc=None if bcc_stripped_by_transport else joined("bcc"),
        subject=subject,
        size_bytes=len(data),
    )


# --- the publisher -----------------------------------------------------------------------------

_STOP = object()


# The largest event the pipeline carries (issue 14, finding 9). kafka-python's default request limit
# (1 MiB) made a To/Cc list over ~1 MB -- the mass-disclosure case itself -- fail to publish, and the
# milter failed open. The producer's ``max_request_size`` and the topic's ``max.message.bytes``
# (set by ``migrate``, ``ingest/topics.py``) are raised together to this plus headroom; it equals
# ``ingest.max_record_bytes``' default, above which the consumer rejects a record. An event larger
# than this is cut to fit by ``fit_event`` (address lists cut at an address boundary, flagged), so
# the detector still sees the thousands of addresses it does carry. Brokers have their own cap,
# ``message.max.bytes`` (default ~1 MB): raise it to ``KAFKA_HEADROOM_BYTES + MAX_EVENT_BYTES`` too
# (docs/operations.md), or topic-level settings above it are refused for the whole request.
MAX_EVENT_BYTES = 4 * 1024 * 1024
KAFKA_HEADROOM_BYTES = 64 * 1024
MAX_REQUEST_BYTES = MAX_EVENT_BYTES + KAFKA_HEADROOM_BYTES
TRUNCATED_FIELD = "mailaudit_truncated"


def _cut_list_text(text: str, keep: int) -> str:
    """The first ``keep`` characters of a header value, cut after the last complete address."""
    if len(text) <= keep:
        return text
    cut = text.rfind(",", 0, keep)
    return text[:cut] if cut > 0 else ""


def fit_event(event: Event, limit: int = MAX_EVENT_BYTES) -> Event:
    """``event`` if it encodes within ``limit`` bytes; otherwise a copy whose largest text fields
    (To, Cc, Bcc, envelope, subject, extra values) are cut, largest first, just enough to fit, each at
    an address boundary, with ``extra["mailaudit_truncated"]`` = {field: original length}. Never
    raises for size."""
    import dataclasses

    if len(event.encode()) <= limit:
        return event
    cur = dataclasses.replace(event, extra=dict(event.extra), envelope_to=list(event.envelope_to))
    originals: dict[str, int] = {}
    for _ in range(200):
        size = len(cur.encode())
        if size <= limit:
            break
        sizes = {"to": len(cur.to), "cc": len(cur.cc or ""), "bcc": len(cur.bcc or ""),
                 "subject": len(cur.subject or ""), "from": len(cur.from_),
                 "envelope_to": sum(len(a) + 4 for a in cur.envelope_to)}
        for k, v in cur.extra.items():
            if k != TRUNCATED_FIELD:
                sizes[f"extra.{k}"] = len(json.dumps(v, ensure_ascii=False))
        name = max(sizes, key=sizes.get)
        if sizes[name] == 0:
            break
        # Cut the largest field by the overflow (a character is at least one encoded byte, so this
        # removes at least that many bytes); the loop moves on to the next field if it was too small.
        keep = max(0, sizes[name] - (size - limit) - 1024)
        originals.setdefault(name, sizes[name])
        if name in ("to", "cc", "bcc"):
            attr = name
            setattr(cur, attr, _cut_list_text(getattr(cur, attr) or "", keep))
        elif name == "envelope_to":
            n, total = 0, 0
            while n < len(cur.envelope_to) and total + len(cur.envelope_to[n]) + 4 <= keep:
                total += len(cur.envelope_to[n]) + 4
                n += 1
            cur.envelope_to = cur.envelope_to[:max(1, n) if keep else 0] if n else cur.envelope_to[:0]
        elif name == "subject":
            cur.subject = (cur.subject or "")[:keep]
        elif name == "from":
            cur.from_ = cur.from_[:keep]
        else:
            cur.extra.pop(name[len("extra."):], None)
        cur.extra[TRUNCATED_FIELD] = dict(originals)
    return cur


class Publisher:
    """Asynchronous, bounded, never-blocking publisher of wire v1 events (see the module docstring)."""

    def __init__(
        self,
        kcfg: KafkaConfig,
        service: str,
        *,
        topic: str | None = None,
        max_buffer: int = 10000,
        max_block_ms: int = 50,
        on_full: str = "raise",
        guard: "HoldGuard | None" = None,
        include_subject: bool = True,
        bcc_stripped_by_transport: bool = False,
        delivery_timeout_ms: int = 30000,
        connect_timeout_ms: int = 5000,
        on_error: Callable[[str, bytes, BaseException], None] | None = None,
        producer_overrides: dict[str, Any] | None = None,
    ):
        if on_full not in ("raise", "drop"):
            raise ValueError("on_full must be 'raise' or 'drop'")
        if max_buffer < 1:
            raise ValueError("max_buffer must be at least 1")
        self.kcfg = kcfg
        self.service = service
        self.topic = topic or kcfg.topic_events
        self.max_block_ms = max(0, int(max_block_ms))
        self.on_full = on_full
        self.guard = guard
        self.include_subject = include_subject
        self.bcc_stripped_by_transport = bcc_stripped_by_transport
        self.on_error = on_error
        self.published = 0
        self.failed = 0
        self.dropped = 0
        self.last_error: BaseException | None = None
        self._outstanding = 0
        self._slots = threading.BoundedSemaphore(max_buffer)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._closed = False
        self._final = False
        self._stop = threading.Event()
        request_timeout = min(30000, max(1000, delivery_timeout_ms // 2))
        self._producer_kw = {
            "bootstrap_timeout_ms": connect_timeout_ms,
            "delivery_timeout_ms": max(delivery_timeout_ms, request_timeout + 100),
            "request_timeout_ms": request_timeout,
            "max_block_ms": min(10000, delivery_timeout_ms),
            "reconnect_backoff_max_ms": 2000,
            "max_request_size": MAX_REQUEST_BYTES,
            **(producer_overrides or {}),
        }
        self._producer = None
        self._close_deadline = 0.0
        self._thread = threading.Thread(target=self._run, name=f"mailaudit-publisher-{service}", daemon=True)
        self._thread.start()

    # -- mailer-facing API --

    def publish(self, message: email.message.Message | bytes, envelope_to: Iterable[str] | str | None,
                campaign: str | None = None, template: str | None = None,
                sent_at: datetime | int | None = None) -> str | None:
        """Record one submission. Returns the ``event_id`` (``None`` if dropped because the buffer was
        full under ``on_full="drop"``). Raises ``CampaignHeld``, ``PublishBufferFull``,
        ``InvalidMessage``, ``PublisherClosed``."""
        self._check_open()
        self._check_hold(self.service, campaign or template)
        event = event_from_message(
            message, envelope_to, self.service, campaign=campaign, template=template, sent_at=sent_at,
            include_subject=self.include_subject, bcc_stripped_by_transport=self.bcc_stripped_by_transport,
        )
        return self._enqueue(event)

    def publish_event(self, event: Event) -> str | None:
        """Publish a pre-built event (keyed by its own service). Same guarantees as ``publish``."""
        self._check_open()
        self._check_hold(event.service, event.campaign or event.template)
        return self._enqueue(event)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every accepted event is acknowledged or failed; False if ``timeout`` (s) ran out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._outstanding:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Flush for up to ``timeout`` s, then stop. Events still undelivered count as ``failed``."""
        if self._final:
            return
        deadline = time.monotonic() + timeout
        self._closed = True
        self.flush(timeout)
        self._close_deadline = deadline
        self._stop.set()
        self._queue.put(_STOP)
        # The sender thread closes the producer on its way out; if it is stuck connecting it finishes
        # in the background (daemon) and the events it holds are counted as failed now.
        self._thread.join(max(0.0, deadline - time.monotonic()))
        # Events that never reached the producer: tell on_error, so a mailer can spool them.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                self._done(False, item, PublisherClosed("closed before the event reached Kafka"))
        with self._cond:
            self._final = True
            if self._outstanding:
                self.failed += self._outstanding
                self._outstanding = 0
            self._cond.notify_all()

    @property
    def buffered(self) -> int:
        """Events accepted and not yet acknowledged or failed."""
        return self._outstanding

    def stats(self) -> dict[str, Any]:
        return {"published": self.published, "failed": self.failed, "dropped": self.dropped,
                "buffered": self._outstanding,
                "last_error": None if self.last_error is None else repr(self.last_error)}

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals --

    def _check_open(self) -> None:
        if self._closed:
            raise PublisherClosed("publisher is closed")

    def _check_hold(self, service: str, campaign: str | None) -> None:
        if self.guard is not None:
            hold = self.guard.is_held(service, campaign)
            if hold is not None:
                raise CampaignHeld(hold)

    def _enqueue(self, event: Event) -> str | None:
        value = event.encode()
        if len(value) > MAX_EVENT_BYTES:
            event = fit_event(event)
            value = event.encode()
        acquired = self._slots.acquire(timeout=self.max_block_ms / 1000) if self.max_block_ms else self._slots.acquire(False)
        if not acquired:
            if self.on_full == "drop":
                with self._cond:
                    self.dropped += 1
                return None
            state = "connected" if self._producer is not None else "not connected"
            raise PublishBufferFull(
                f"{self._outstanding} events waiting for Kafka at {self.kcfg.bootstrap} ({state}; "
                f"last error: {self.last_error!r})")
        with self._cond:
            self._outstanding += 1
        self._queue.put((event.service.encode("utf-8"), value, event.event_id))
        return event.event_id

    def _done(self, ok: bool, item: tuple[bytes, bytes, str], exc: BaseException | None = None) -> None:
        with self._cond:
            if self._final:
                return
            self._outstanding -= 1
            if ok:
                self.published += 1
            else:
                self.failed += 1
                if not isinstance(exc, PublisherClosed):
                    self.last_error = exc
            if not self._outstanding:
                self._cond.notify_all()
        self._slots.release()
        if not ok and self.on_error is not None:
            try:
                self.on_error(item[2], item[1], exc)
            except Exception:
                log.exception("on_error callback failed")

    def _connect(self):
        backoff = 0.1
        while not self._stop.is_set():
            try:
                return make_producer(self.kcfg, **self._producer_kw)
            except Exception as e:
                self.last_error = e
                log.warning("Kafka producer not connected (%s); %d events buffered", e, self._outstanding)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        return None

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._producer is None:
                    self._producer = self._connect()
                    continue
                item = self._queue.get()
                if item is _STOP:
                    break
                try:
                    fut = self._producer.send(self.topic, key=item[0], value=item[1])
                except Exception as e:              # buffer full past max_block_ms, record too large...
                    self._done(False, item, e)
                    continue
                fut.add_callback(self._on_ok, item)
                fut.add_errback(self._on_err, item)
        finally:
            if self._producer is not None:
                try:
                    self._producer.close(timeout=max(0.0, self._close_deadline - time.monotonic()))
                except Exception as e:  # closing must not raise into the mailer
                    log.warning("closing the Kafka producer: %s", e)

    def _on_ok(self, item, _metadata) -> None:
        self._done(True, item)

    def _on_err(self, item, exc: BaseException) -> None:
        self._done(False, item, exc)


# --- containment: control messages and the guard -----------------------------------------------

def control_record(action: str, service: str, campaign: str | None = None, reason: str = "",
                   at_ms: int | None = None, by: str | None = None, **extra: Any) -> tuple[bytes, bytes]:
    """(key, value) of one control message, ready for ``producer.send(topic, key=..., value=...)``."""
    if action not in ("hold", "release"):
        raise ValueError("action must be 'hold' or 'release'")
    if not service:
        raise ValueError("service is required")
    # The reason is free text (an operator's note): addresses masked, line breaks flattened, before it
    # reaches the topic, the milter's SMTP reply and the audit log (issue 14, finding 8).
    reason = " ".join(redact_text(reason or "").split())[:500]
    doc: dict[str, Any] = {"v": 1, "action": action, "service": service, "campaign": campaign or None,
                           "reason": reason, "at": format_time(int(time.time() * 1000) if at_ms is None else at_ms)}
    if by:
        doc["by"] = by
    doc.update(extra)
    key = json.dumps([service, campaign or None], ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return key, json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def send_control(kcfg: KafkaConfig, action: str, service: str, campaign: str | None = None, reason: str = "",
                 by: str | None = None, timeout_s: float = 10.0, **extra: Any) -> None:
    """Publish one hold/release and wait for the broker's acknowledgement (raises on failure)."""
    key, value = control_record(action, service, campaign, reason, by=by, **extra)
    producer = make_producer(kcfg, bootstrap_timeout_ms=int(timeout_s * 1000), max_block_ms=int(timeout_s * 1000))
    try:
        producer.send(kcfg.topic_control, key=key, value=value).get(timeout=timeout_s)
    finally:
        producer.close(timeout=timeout_s)


@dataclass(frozen=True, slots=True)
class ControlCommand:
    action: str
    service: str
    campaign: str | None
    reason: str
    at_ms: int
    by: str | None


def parse_control(value: bytes | None, fallback_ms: int = 0) -> ControlCommand | None:
    """A control message, or None when it is not one (ignored: a bad record must not stop containment)."""
    if not value:
        return None
    try:
        doc = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("v") != 1 or doc.get("action") not in ("hold", "release"):
        return None
    service, campaign = doc.get("service"), doc.get("campaign")
    if not isinstance(service, str) or not service or not (campaign is None or isinstance(campaign, str)):
        return None
    try:
        at_ms = parse_time(doc["at"]) if isinstance(doc.get("at"), str) else fallback_ms
    except ValueError:
        at_ms = fallback_ms
    reason = doc.get("reason") if isinstance(doc.get("reason"), str) else ""
    by = doc.get("by") if isinstance(doc.get("by"), str) else None
    return ControlCommand(doc["action"], service, campaign or None, reason, at_ms, by)


class HoldState:
    """The hold state folded from control commands; pure, so it is testable without Kafka."""

    def __init__(self) -> None:
        self._latest: dict[tuple[str, str | None], tuple[tuple[int, int], ControlCommand]] = {}
        self._seq = 0
        self._lock = threading.Lock()

    def apply(self, cmd: ControlCommand) -> None:
        with self._lock:
            self._seq += 1
            order = (cmd.at_ms, self._seq)
            key = (cmd.service, cmd.campaign)
            current = self._latest.get(key)
            if current is None or current[0] < order:
                self._latest[key] = (order, cmd)

    def is_held(self, service: str, campaign: str | None = None) -> Hold | None:
        svc = self._latest.get((service, None))
        if svc is not None and svc[1].action == "hold":
            return _hold(svc[1])
        if campaign:
            camp = self._latest.get((service, campaign))
            if camp is not None and camp[1].action == "hold" and (svc is None or svc[0] < camp[0]):
                return _hold(camp[1])
        return None

    def holds(self) -> list[Hold]:
        """Every hold in force."""
        with self._lock:
            items = list(self._latest.items())
        return [h for (s, c), _ in items if (h := self.is_held(s, c)) is not None and h.campaign == c]


def _hold(cmd: ControlCommand) -> Hold:
    return Hold(cmd.service, cmd.campaign, cmd.reason, cmd.at_ms, cmd.by)


class HoldGuard:
    """Follows ``mail.control`` from its beginning in a background thread and answers ``is_held``."""

    def __init__(self, kcfg: KafkaConfig, topic: str | None = None, *, fail_closed: bool = False,
                 poll_ms: int = 200, connect_timeout_ms: int = 5000, start: bool = True,
                 consumer_overrides: dict[str, Any] | None = None):
        self.kcfg = kcfg
        self.topic = topic or kcfg.topic_control
        self.fail_closed = fail_closed
        self.poll_ms = poll_ms
        self.state = HoldState()
        self.last_error: BaseException | None = None
        self._consumer_kw = {"bootstrap_timeout_ms": connect_timeout_ms, "fetch_max_wait_ms": poll_ms,
                             "reconnect_backoff_max_ms": 2000, **(consumer_overrides or {})}
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mailaudit-hold-guard", daemon=True)
        if start:
            self._thread.start()

    def start(self) -> "HoldGuard":
        if not self._thread.is_alive():
            self._thread.start()
        return self

    @property
    def ready(self) -> bool:
        """True once the guard has read the topic up to where it ended when the guard started."""
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def is_held(self, service: str, campaign: str | None = None) -> Hold | None:
        if not self._ready.is_set() and self.fail_closed:
            return Hold(service, None, "hold state not loaded from mail.control yet (fail_closed)", 0)
        return self.state.is_held(service, campaign)

    def holds(self) -> list[Hold]:
        return self.state.holds()

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> "HoldGuard":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self) -> None:
        from kafka import TopicPartition

        backoff = 0.1
        consumer = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = make_consumer(self.kcfg, None, **self._consumer_kw)
                parts = consumer.partitions_for_topic(self.topic)
                if not parts:
                    # No control topic yet: nothing is held. Look again later, it may be created.
                    self._ready.set()
                    self._stop.wait(2.0)
                    continue
                tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
                consumer.assign(tps)
                consumer.seek_to_beginning(*tps)
                end = consumer.end_offsets(tps)
                backoff = 0.1
                self._follow(consumer, tps, end)
                return
            except Exception as e:
                self.last_error = e
                log.warning("hold guard cannot read %s: %s", self.topic, e)
                if consumer is not None:
                    try:
                        consumer.close()
                    except Exception:
                        pass
                    consumer = None
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        if consumer is not None:
            consumer.close()

    def _follow(self, consumer, tps, end) -> None:
        try:
            while not self._stop.is_set():
                for records in consumer.poll(timeout_ms=self.poll_ms).values():
                    for r in records:
                        cmd = parse_control(r.value, fallback_ms=r.timestamp or 0)
                        if cmd is not None:
                            self.state.apply(cmd)
                if not self._ready.is_set() and all(consumer.position(tp) >= end.get(tp, 0) for tp in tps):
                    self._ready.set()
        finally:
            consumer.close()
