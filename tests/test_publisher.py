"""Publisher SDK, hold guard and the publish/simulate verbs.

The pure parts (building the event from a real EmailMessage, the hold-state rules) are tested
directly; delivery, Kafka-down behaviour and containment run against the session broker.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import make_msgid

import pytest
from kafka import TopicPartition

from mailaudit.cli import build_parser
from mailaudit.config import KafkaConfig
from mailaudit.ingest.kafka_io import ensure_topics, make_consumer, missing_topics
from mailaudit.ingest.publisher import (
    CampaignHeld, ControlCommand, HoldGuard, HoldState, InvalidMessage, Publisher, PublishBufferFull,
    PublisherClosed, control_record, event_from_message, parse_control, send_control,
)
from mailaudit.ingest.simulator import Simulator
from mailaudit.ingest.topics import create_topics
from mailaudit.ingest.wire import decode_event

SENT = datetime(2026, 11, 2, 7, 30, tzinfo=timezone.utc)
SENT_MS = 1_793_604_600_000


def message(to: str, cc: str | None = None, bcc: str | None = None, subject: str = "Your invoice") -> EmailMessage:
    m = EmailMessage()
    m["From"] = "José Müller <billing@acme.example>"
    m["To"] = to
    if cc:
        m["Cc"] = cc
    if bcc:
        m["Bcc"] = bcc
    m["Subject"] = subject
    m["Message-ID"] = make_msgid(domain="acme.example")
    m.set_content("Hello,\n\nyour invoice is attached.\n")
    return m


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_topic(kcfg: KafkaConfig, topic: str, n: int, timeout_s: float = 15.0):
    """The first ``n`` records of every partition of ``topic`` (group-less: assign and seek)."""
    c = make_consumer(kcfg, None, request_timeout_ms=5000)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic))]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out, deadline = [], time.monotonic() + timeout_s
        while len(out) < n and time.monotonic() < deadline:
            for records in c.poll(timeout_ms=300).values():
                out.extend(records)
        return out
    finally:
        c.close()


# --- building the event from a message (pure) ----------------------------------------------------

def test_event_keeps_raw_headers_true_envelope_and_size():
    many = ", ".join(f"user{i}@gmail.com" for i in range(12))
    m = message(to='"Smith, John" <john@x.com>, ' + many, cc="Zoë Ångström <zoe@y.org>", subject="Héllo wörld")
    ev = event_from_message(m, ["john@x.com"], "billing", campaign="c-1", template="invoice", sent_at=SENT)
    wire = bytes(m.as_bytes(policy=m.policy.clone(linesep="\r\n")))
    assert ev.envelope_to == ["john@x.com"]                       # the true envelope, not the To list
    assert ev.to.startswith('"Smith, John" <john@x.com>, user0@gmail.com')
    assert "\r\n " in ev.to                                        # folded as written on the wire
    assert ("To: " + ev.to + "\r\n").encode() in wire
    assert ev.from_.startswith("=?utf-8?") and ev.from_.endswith("<billing@acme.example>")
    assert ev.cc.startswith("=?utf-8?") and ev.cc.endswith("<zoe@y.org>")
    assert ev.subject.startswith("=?utf-8?")
    assert ev.message_id == m["Message-ID"]
    assert ev.bcc is None
    assert ev.size_bytes == len(wire)
    assert (ev.service, ev.campaign, ev.template, ev.sent_at_ms) == ("billing", "c-1", "invoice", SENT_MS)
    back = decode_event(ev.encode())                              # valid wire v1
    assert back.to == ev.to and back.envelope_to == ["john@x.com"]


def test_bcc_left_in_is_reported_unless_the_transport_strips_it():
    m = message(to="Undisclosed recipients:;", bcc="a@x.com, b@y.org")
    ev = event_from_message(m, ["a@x.com", "b@y.org"], "internal")
    assert ev.bcc == "a@x.com, b@y.org" and ev.to == "Undisclosed recipients:;"
    assert event_from_message(m, ["a@x.com"], "internal", bcc_stripped_by_transport=True).bcc is None


def test_envelope_defaults_to_what_smtplib_would_use_and_raw_bytes_work():
    m = message(to="A <a@x.com>, b@y.org", cc="c@z.net", bcc="d@w.io")
    assert event_from_message(m, None, "internal").envelope_to == ["a@x.com", "b@y.org", "c@z.net", "d@w.io"]
    raw = m.as_bytes()
    ev = event_from_message(raw, "a@x.com", "internal", include_subject=False)
    assert ev.envelope_to == ["a@x.com"] and ev.to == "A <a@x.com>, b@y.org" and ev.subject is None
    assert ev.size_bytes == len(raw)


def test_messages_that_cannot_be_described_are_refused():
    m = message(to="a@x.com")
    del m["Message-ID"]
    with pytest.raises(InvalidMessage, match="Message-ID"):
        event_from_message(m, ["a@x.com"], "billing")
    with pytest.raises(InvalidMessage, match="envelope"):
        event_from_message(message(to="a@x.com"), [], "billing")
    with pytest.raises(InvalidMessage, match="naive"):
        event_from_message(message(to="a@x.com"), ["a@x.com"], "billing", sent_at=datetime(2026, 11, 2))


# --- hold state rules (pure) -------------------------------------------------------------------

def cmd(action, campaign=None, at=0, service="newsletter"):
    return ControlCommand(action, service, campaign, f"{action} {campaign}", SENT_MS + at, None)


def test_hold_state_rules():
    s = HoldState()
    assert s.is_held("newsletter", "c1") is None
    s.apply(cmd("hold", "c1", at=1))
    assert s.is_held("newsletter", "c1").campaign == "c1"
    assert s.is_held("newsletter", "c2") is None and s.is_held("newsletter") is None
    assert s.is_held("billing", "c1") is None
    s.apply(cmd("hold", None, at=2))                               # the whole service
    assert s.is_held("newsletter", "c2").campaign is None and s.is_held("newsletter") is not None
    s.apply(cmd("release", None, at=3))                            # lifts the service and c1
    assert s.is_held("newsletter", "c1") is None and s.is_held("newsletter") is None
    s.apply(cmd("hold", "c2", at=4))                               # later than the release: holds
    assert s.is_held("newsletter", "c2") is not None
    s.apply(cmd("release", "c2", at=1))                            # older than the hold: ignored
    assert s.is_held("newsletter", "c2") is not None
    s.apply(cmd("release", "c2", at=5))
    assert s.is_held("newsletter", "c2") is None
    assert s.holds() == []


def test_control_messages_round_trip_and_garbage_is_ignored():
    key, value = control_record("hold", "newsletter", "nl-1", reason="leak", at_ms=SENT_MS, by="detect")
    assert json.loads(key) == ["newsletter", "nl-1"]
    doc = json.loads(value)
    assert doc == {"v": 1, "action": "hold", "service": "newsletter", "campaign": "nl-1", "reason": "leak",
                   "at": "2026-11-02T07:30:00.000Z", "by": "detect"}
    assert parse_control(value) == ControlCommand("hold", "newsletter", "nl-1", "leak", SENT_MS, "detect")
    for bad in (b"", b"{", b"[]", b'{"v":1,"action":"pause","service":"x"}', b'{"v":1,"action":"hold"}',
                b'{"v":2,"action":"hold","service":"x"}'):
        assert parse_control(bad) is None
    with pytest.raises(ValueError):
        control_record("pause", "newsletter")


# --- Kafka down -------------------------------------------------------------------------------

def test_kafka_down_publish_never_blocks_and_buffer_full_raises():
    kcfg = KafkaConfig(bootstrap=f"127.0.0.1:{closed_port()}")
    failed = []
    pub = Publisher(kcfg, "billing", max_buffer=3, max_block_ms=200, on_error=lambda i, p, e: failed.append((i, p)))
    m = message(to="a@x.com")
    ids, durations = [], []
    for _ in range(3):
        t = time.monotonic()
        ids.append(pub.publish(m, ["a@x.com"]))
        durations.append(time.monotonic() - t)
    t = time.monotonic()
    with pytest.raises(PublishBufferFull, match="not connected"):
        pub.publish(m, ["a@x.com"])
    waited = time.monotonic() - t
    assert max(durations) < 0.2
    assert 0.15 <= waited < 0.6
    assert pub.buffered == 3 and pub.published == 0
    t = time.monotonic()
    pub.close(timeout=0.5)
    assert time.monotonic() - t < 1.5
    assert (pub.published, pub.failed, pub.buffered) == (0, 3, 0)
    assert sorted(i for i, _ in failed) == sorted(ids)
    assert {decode_event(p).event_id for _, p in failed} == set(ids)      # spoolable wire JSON
    with pytest.raises(PublisherClosed):
        pub.publish(m, ["a@x.com"])


def test_kafka_down_drop_mode_counts_drops():
    kcfg = KafkaConfig(bootstrap=f"127.0.0.1:{closed_port()}")
    pub = Publisher(kcfg, "billing", max_buffer=2, max_block_ms=0, on_full="drop")
    m = message(to="a@x.com")
    t = time.monotonic()
    results = [pub.publish(m, ["a@x.com"]) for _ in range(5)]
    assert time.monotonic() - t < 0.5
    assert results[2:] == [None, None, None] and all(results[:2])
    assert pub.dropped == 3
    pub.close(timeout=0.2)
    assert (pub.published, pub.failed, pub.dropped) == (0, 2, 3)


def test_fail_closed_guard_holds_everything_until_loaded():
    kcfg = KafkaConfig(bootstrap=f"127.0.0.1:{closed_port()}")
    with HoldGuard(kcfg, fail_closed=True, connect_timeout_ms=300) as strict, \
            HoldGuard(kcfg, connect_timeout_ms=300) as lenient:
        assert not strict.wait_ready(0.3)
        assert strict.is_held("billing") is not None
        assert lenient.is_held("billing") is None


# --- against the real broker ---------------------------------------------------------------------

@pytest.mark.servers
def test_published_message_reads_back_as_wire_v1(make_cfg):
    cfg = make_cfg()
    create_topics(cfg.kafka)
    m = message(to='"Doe, Jane" <jane@x.com>, bob@y.org', cc="=?utf-8?q?Zo=C3=AB?= <zoe@z.net>")
    with Publisher(cfg.kafka, "billing") as pub:
        eid = pub.publish(m, ["jane@x.com"], campaign="c-7", template="invoice", sent_at=SENT)
        more = [pub.publish(m, ["bob@y.org"]) for _ in range(49)]
        assert pub.flush(15)
        assert (pub.published, pub.failed, pub.dropped) == (50, 0, 0)
    records = read_topic(cfg.kafka, cfg.kafka.topic_events, 50)
    assert len(records) == 50
    assert {r.key for r in records} == {b"billing"}
    assert {json.loads(r.value)["event_id"] for r in records} == {eid, *more}
    [first] = [r for r in records if json.loads(r.value)["event_id"] == eid]
    doc = json.loads(first.value)
    assert doc["envelope_to"] == ["jane@x.com"]
    assert doc["to"] == '"Doe, Jane" <jane@x.com>, bob@y.org'
    assert doc["cc"] == "=?utf-8?q?Zo=C3=AB?= <zoe@z.net>"
    assert doc["from"] == "=?utf-8?q?Jos=C3=A9_M=C3=BCller?= <billing@acme.example>"
    assert doc["message_id"] == m["Message-ID"] and doc["sent_at"] == "2026-11-02T07:30:00.000Z"
    assert (doc["service"], doc["campaign"], doc["template"]) == ("billing", "c-7", "invoice")
    assert "bcc" not in doc
    assert decode_event(first.value).event_id == eid


@pytest.mark.servers
def test_publisher_is_thread_safe(make_cfg):
    cfg = make_cfg()
    create_topics(cfg.kafka)
    sim = Simulator(seed=5, rate=500)
    events = list(sim.events(4))
    pub = Publisher(cfg.kafka, "sim", max_buffer=100, max_block_ms=10000)   # back-pressure, no loss
    chunks = [events[i::4] for i in range(4)]
    threads = [threading.Thread(target=lambda c=c: [pub.publish_event(e) for e in c]) for c in chunks]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert pub.flush(20)
    pub.close()
    assert (pub.published, pub.failed) == (len(events), 0)
    records = read_topic(cfg.kafka, cfg.kafka.topic_events, len(events))
    assert sorted(r.value for r in records) == sorted(e.encode() for e in events)
    assert all(r.key == json.loads(r.value)["service"].encode() for r in records)


@pytest.mark.servers
def test_hold_guard_blocks_held_campaign_until_release(make_cfg):
    cfg = make_cfg()
    create_topics(cfg.kafka)
    # History written before the guard starts is rebuilt from the beginning of the topic.
    send_control(cfg.kafka, "hold", "newsletter", "nl-old", reason="old leak")
    send_control(cfg.kafka, "hold", "newsletter", "nl-fixed", reason="fixed since")
    send_control(cfg.kafka, "release", "newsletter", "nl-fixed")
    guard = HoldGuard(cfg.kafka, poll_ms=100)
    pub = Publisher(cfg.kafka, "newsletter", guard=guard)
    try:
        assert guard.wait_ready(15)
        m = message(to="a@x.com")
        with pytest.raises(CampaignHeld, match="old leak"):
            pub.publish(m, ["a@x.com"], campaign="nl-old")
        assert pub.publish(m, ["a@x.com"], campaign="nl-fixed")

        send_control(cfg.kafka, "hold", "newsletter", "nl-7", reason="concatenated To", by="test")
        t = time.monotonic()
        while guard.is_held("newsletter", "nl-7") is None and time.monotonic() - t < 10:
            time.sleep(0.02)
        propagation = time.monotonic() - t
        assert propagation < 3, propagation
        with pytest.raises(CampaignHeld) as held:
            pub.publish(m, ["a@x.com"], campaign="nl-7")
        assert held.value.hold.reason == "concatenated To" and held.value.hold.by == "test"
        assert pub.publish(m, ["a@x.com"], campaign="nl-8")        # other campaigns flow
        ev = Simulator(seed=1, services=["newsletter"]).events(10).__next__()
        ev.campaign = "nl-7"
        with pytest.raises(CampaignHeld):                             # pre-built events are guarded too
            pub.publish_event(ev)

        send_control(cfg.kafka, "release", "newsletter", "nl-7", reason="fixed")
        t = time.monotonic()
        while guard.is_held("newsletter", "nl-7") is not None and time.monotonic() - t < 10:
            time.sleep(0.02)
        assert pub.publish(m, ["a@x.com"], campaign="nl-7")
        assert pub.flush(15) and pub.published == 3
    finally:
        pub.close()
        guard.close()
    # Only the messages that were let through were recorded (one key: one partition, in order).
    records = read_topic(cfg.kafka, cfg.kafka.topic_events, 4, timeout_s=1.5)
    assert [json.loads(r.value)["campaign"] for r in records] == ["nl-fixed", "nl-8", "nl-7"]


@pytest.mark.servers
def test_ensure_topics_is_idempotent_and_applies_configs(make_cfg):
    cfg = make_cfg()
    name = cfg.kafka.topic_events
    assert missing_topics(cfg.kafka, [name]) == [name]
    assert ensure_topics(cfg.kafka, {name: 3}, configs={name: {"retention.ms": 3600000}}) == [name]
    assert ensure_topics(cfg.kafka, {name: 3}) == []
    assert missing_topics(cfg.kafka, [name]) == []
    c = make_consumer(cfg.kafka, None)
    try:
        assert c.partitions_for_topic(name) == {0, 1, 2}
    finally:
        c.close()


# --- the verbs ---------------------------------------------------------------------------------

def run_verb(argv, cfg) -> int:
    args = build_parser().parse_args(argv)
    return args._run(args, cfg)


@pytest.mark.servers
def test_publish_verb_sends_lines_as_is(make_cfg, tmp_path, capsys):
    cfg = make_cfg()
    create_topics(cfg.kafka)
    good = [e.encode() for e in Simulator(seed=2, rate=50).events(2)]
    lines = good + [b"{not json", b'{"service": 42}', "caf\u00e9 \ufffd".encode()]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines[:3]) + b"\n\n" + b"\r\n".join(lines[3:]) + b"\n")
    assert run_verb(["publish", str(path)], cfg) == 0
    err = capsys.readouterr().err
    assert f"{len(lines)} lines" in err and f"{len(lines)} acknowledged" in err and "1 blank" in err
    records = read_topic(cfg.kafka, cfg.kafka.topic_events, len(lines))
    assert sorted(r.value for r in records) == sorted(lines)
    for r in records:
        try:
            service = json.loads(r.value).get("service")
        except ValueError:
            service = None
        assert r.key == (service.encode() if isinstance(service, str) else b"")


def test_publish_verb_user_errors(tmp_path):
    from mailaudit.cli import UserError

    cfg = KafkaConfig(bootstrap=f"127.0.0.1:{closed_port()}")
    full = type("Cfg", (), {"kafka": cfg})()
    with pytest.raises(UserError, match="cannot reach Kafka"):
        run_verb(["publish", str(tmp_path / "x.jsonl")], full)


@pytest.mark.servers
def test_simulate_verb_fast_into_kafka_and_jsonl_is_deterministic(make_cfg, tmp_path, capsys):
    cfg = make_cfg()
    create_topics(cfg.kafka)
    inj = tmp_path / "inj.json"
    assert run_verb(["simulate", "--fast", "--rate", "100", "--duration", "20", "--incident", "cc_leak",
                     "--incident-size", "10", "--injected", str(inj)], cfg) == 0
    err = capsys.readouterr().err
    n = int(err.split("simulate: published ")[1].split(",")[0])
    assert n > 1000 and "failed 0" in err
    records = read_topic(cfg.kafka, cfg.kafka.topic_events, n)
    assert len(records) == n
    events = [decode_event(r.value) for r in records]
    assert all(r.key == e.service.encode() for r, e in zip(records, events))
    [leak] = json.loads(inj.read_text())
    assert leak["kind"] == "cc_leak" and len(leak["event_ids"]) == 10
    assert set(leak["event_ids"]) <= {e.event_id for e in events}
    now = time.time() * 1000
    assert now - 30_000 < max(e.sent_at_ms for e in events) <= now   # synthetic time ending now

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for path in (a, b):
        assert run_verb(["simulate", "--rate", "100", "--duration", "30", "--incident", "bcc_left",
                         "--jsonl", str(path)], cfg) == 0
    assert a.read_bytes() == b.read_bytes() and a.read_bytes().count(b"\n") > 2000
