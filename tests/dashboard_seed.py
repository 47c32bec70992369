"""A small, exactly known data set for the dashboard tests, written the way the product writes it.

Events go through the real ingest path (``parse_event`` -> ``EventRows``, so hashes and masks are
the real keyed ones and a search by address must find them); alerts, incidents and exposures go
through the detector's sink column builders. Everything is relative to ``now`` so the Live page's
"last hour" holds the recent part. ``Seeded`` records what was written, for the assertions.

Contents (times before ``now``):

* billing: 120 one-recipient receipts over the last 50 minutes, plus 30 two hours ago;
* support: 10 messages to 3 recipients each (30 recipients), last hour;
* newsletter / campaign ``spring-sale``: 40 one-To copies, plus 3 leaking copies whose To: lists the
  same 12 subscribers while each goes to one of them (BitMEX-style), 10 minutes ago;
* one open critical ``concatenated_to`` incident for those 3 copies (open + update alerts), and one
  resolved ``volume_spike`` incident on receipts two days ago;
* 4 malformed-input errors in the last hour.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass, field

from mailaudit.config import Config
from mailaudit.detect.alerts import Alert, alert_id, incident_id
from mailaudit.detect.sinks import alert_columns, exposure_columns, incident_columns
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.parsed import parse_event
from mailaudit.ingest.privacy import AddressHasher, domain_of, mask_address
from mailaudit.ingest.rows import EventRows
from mailaudit.ingest.writer import insert_events
from mailaudit.ingest.wire import Event

# Twelve subscribers with distinct initials, so their masks (a***@gmail.com) are distinct too.
LEAK_LIST = [f"{name}@{domain}" for name, domain in zip(
    ["alice", "bruno", "chloe", "dmitri", "elena", "farid", "greta", "hiro", "ines", "jonas", "kemal", "lucia"],
    ["gmail.com", "yahoo.com", "outlook.com", "gmx.de"] * 3)]
LEAK_CAMPAIGN = "spring-sale"


@dataclass
class Seeded:
    now_ms: int
    messages_last_hour: dict[str, int] = field(default_factory=dict)
    recipients_last_hour: dict[str, int] = field(default_factory=dict)
    messages_last_day: dict[str, int] = field(default_factory=dict)
    incident_id: str = ""
    resolved_incident_id: str = ""
    leak_event_ids: list[str] = field(default_factory=list)
    exposed_masked: set[str] = field(default_factory=set)
    seen_by: dict[str, int] = field(default_factory=dict)      # masked exposed address -> distinct recipients
    errors: int = 0
    billing_address: str = "customer7@example.com"             # a billing recipient (once, as To + envelope)
    leaked_address: str = LEAK_LIST[5]                          # shown in 3 leaking copies, recipient of none


def _event(i: int, service: str, ms: int, to: list[str], envelope: list[str], campaign: str | None = None,
           template: str | None = None) -> Event:
    return Event(event_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"dash-seed/{service}/{i}")), sent_at_ms=ms,
                 service=service, message_id=f"<{service}.{i}@mailer.shop.example>",
                 from_=f"Shop {service.title()} <{service}@shop.example>", to=", ".join(to), envelope_to=envelope,
                 campaign=campaign, template=template, subject=f"{service} message {i}", size_bytes=4000 + i)


def seed(db: Database, cfg: Config, now_ms: int | None = None) -> Seeded:
    now_ms = now_ms or int(time.time() * 1000)
    s = Seeded(now_ms=now_ms)
    hasher = AddressHasher(cfg.require_hash_key(), cfg.privacy.hash_key_id)
    rows = EventRows(cfg.privacy, hasher)
    minute = 60_000

    def add(e: Event) -> None:
        rows.add(parse_event(e))

    for i in range(120):   # billing, last 50 minutes
        addr = f"customer{i}@example.com"
        add(_event(i, "billing", now_ms - 50 * minute + i * 25_000, [addr], [addr], template="receipt"))
    for i in range(30):    # billing, two hours ago
        addr = f"customer{1000 + i}@example.com"
        add(_event(1000 + i, "billing", now_ms - 120 * minute + i * 1000, [addr], [addr], template="receipt"))
    for i in range(10):    # support threads, 3 recipients each
        people = [f"agent{i}@acme.example", f"client{i}@example.net", f"lead{i}@acme.example"]
        add(_event(i, "support", now_ms - 40 * minute + i * 60_000, people, people))
    for i in range(40):    # newsletter, normal one-To copies
        addr = f"reader{i}@example.org"
        add(_event(i, "newsletter", now_ms - 30 * minute + i * 15_000, [addr], [addr], campaign=LEAK_CAMPAIGN))
    leak_ms = [now_ms - 10 * minute + k * 20_000 for k in range(3)]
    leak_events = []
    for k in range(3):     # the leak: To shows all 12, each copy goes to one of them
        e = _event(100 + k, "newsletter", leak_ms[k], LEAK_LIST, [LEAK_LIST[k]], campaign=LEAK_CAMPAIGN)
        leak_events.append(e)
        add(e)
    insert_events(db, rows)
    s.messages_last_hour = {"billing": 120, "support": 10, "newsletter": 43}
    s.recipients_last_hour = {"billing": 120, "support": 30, "newsletter": 43}
    s.messages_last_day = {"billing": 150, "support": 10, "newsletter": 43}
    s.leak_event_ids = [e.event_id for e in leak_events]

    # The open disclosure incident, as the detector would have written it.
    iid = incident_id("newsletter", LEAK_CAMPAIGN, "disclosure", leak_ms[0])
    s.incident_id = iid
    sample = [mask_address(a) for a in LEAK_LIST[:5]]
    alerts = []
    for k, status in ((0, "open"), (2, "update")):
        alerts.append(Alert(
            alert_id=alert_id(leak_events[k].event_id, "concatenated_to"), incident_id=iid, status=status,
            kind="concatenated_to", severity="critical", service="newsletter", campaign=LEAK_CAMPAIGN, template=None,
            trigger_event_id=leak_events[k].event_id, first_seen_ms=leak_ms[0], last_seen_ms=leak_ms[k],
            copies=k + 1, exposed=12 if k else 11, detected_at_ms=leak_ms[k] + 1500,
            summary=f"newsletter/{LEAK_CAMPAIGN}: To: header lists 12 addresses, 11 not recipients of the copy",
            evidence={"visible": 12, "strangers": 11, "visible_max": 50, "strangers_critical": 10,
                      "sample": sample}).to_dict())
    # Resolved spike two days ago on receipts.
    old_ms = now_ms - 2 * 86_400_000
    rid = incident_id("receipts", "order-confirmation", "spike", old_ms)
    s.resolved_incident_id = rid
    for status, last in (("open", old_ms), ("resolved", old_ms + 600_000)):
        trig = str(uuid.uuid5(uuid.NAMESPACE_URL, f"dash-seed/spike/{status}"))
        alerts.append(Alert(
            alert_id=alert_id(trig, "volume_spike", resolved=status == "resolved"), incident_id=rid, status=status,
            kind="volume_spike", severity="warning", service="receipts", campaign=None,
            template="order-confirmation", trigger_event_id=trig, first_seen_ms=old_ms, last_seen_ms=last,
            copies=900, exposed=0, detected_at_ms=last, summary="receipts: 900 messages in a minute (baseline 40)",
            evidence={"count": 900, "baseline": 40.0}).to_dict())
    db.insert("alerts", alert_columns(alerts))
    db.insert("incidents", incident_columns(alerts))

    exposures = []
    for k, e in enumerate(leak_events):
        shown = [a for a in LEAK_LIST if a != LEAK_LIST[k]]
        exposures.append({
            "incident_id": iid, "event_id": e.event_id, "sent_ms": e.sent_at_ms, "service": "newsletter",
            "campaign": LEAK_CAMPAIGN, "key_id": cfg.privacy.hash_key_id,
            "exposed_hashes": [hasher.hash(a) for a in shown], "exposed_masked": [mask_address(a) for a in shown],
            "exposed_domains": [domain_of(a) for a in shown], "recipient_hashes": [hasher.hash(LEAK_LIST[k])]})
    db.insert("exposures", exposure_columns(exposures))
    s.exposed_masked = {mask_address(a) for a in LEAK_LIST}
    # Who saw each address: the recipients of the copies that showed it, itself excluded.
    s.seen_by = {mask_address(a): sum(1 for k in range(3) if LEAK_LIST[k] != a) for a in LEAK_LIST}

    now = dt.datetime.fromtimestamp(now_ms / 1000, dt.timezone.utc).replace(microsecond=0)
    reasons = ["invalid_json", "missing_field", "missing_field", "wrong_type"]
    db.insert("errors", {
        "kafka_ts": [now - dt.timedelta(minutes=5 * i) for i in range(4)],
        "received_at": [now - dt.timedelta(minutes=5 * i) for i in range(4)],
        "topic": [cfg.kafka.topic_events] * 4, "partition": [0] * 4, "offset": list(range(4)),
        "reason": reasons, "detail": ["synthetic"] * 4, "size": [10] * 4,
        "excerpt": ["{not json"] * 4, "service": [""] * 4})
    s.errors = 4
    return s


def insert_duplicate(db: Database, cfg: Config, event: Event) -> None:
    """The same event stored a second time, as after a consumer crash before its offset commit."""
    rows = EventRows(cfg.privacy, AddressHasher(cfg.require_hash_key(), cfg.privacy.hash_key_id))
    rows.add(parse_event(event))
    insert_events(db, rows)


def billing_event(s: Seeded, i: int = 0) -> Event:
    addr = f"customer{i}@example.com"
    return _event(i, "billing", s.now_ms - 50 * 60_000 + i * 25_000, [addr], [addr], template="receipt")
