"""Fault injection on the real servers: what is promised to survive a broken broker, bad input, a slow
or absent ClickHouse — each test asserts that promise on event ids, not on counters.

Run alone with ``make test-faults`` (``pytest -m faults``). Consumer SIGKILL and ClickHouse killed under
the consumer live in test_ingest_e2e.py; they are not repeated here.

The local broker keeps its log in memory, so a broker restart loses every topic, message and
committed offset. What "nothing lost" can mean there, and what these tests hold the consumer to:

1. every event whose offset the consumer had committed before the broker died is in ClickHouse
   (commit-after-write; with Apache Kafka's durable log the uncommitted rest would be re-read too);
2. after the restart (topics recreated by ``create_topics``, as ``mailaudit migrate`` does) the same
   consumer process reconnects, rejoins its group and stores every newly published event exactly once,
   even though the new offsets restart at 0 below its old fetch positions;
3. events published but not yet committed when the broker died are gone with the broker's memory;
   nothing here can bring them back, so nothing asserts it (on Kafka they stay in the log).

Not tested across the restart: the DLQ. The consumer's long-lived idempotent producer keeps its
producer id, which the emptied broker no longer knows (tansu answers UnknownProducerId until it has
handed the same number out again), so whether a DLQ write after the restart succeeds depends on how
many producers the session created before: a property of the in-memory broker, not of mailaudit.
The DLQ path itself is covered by the malformed-events test below.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid

import pytest
from kafka import KafkaConsumer, TopicPartition

from faultproxy import FaultProxy
from helpers import ConsumerThread, make_event, wait_until
from mailaudit.config import ClickHouseConfig
from mailaudit.detect.consumer import DetectConsumer
from mailaudit.detect.engine import DetectionEngine
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.kafka_io import make_producer
from mailaudit.ingest.schema import migrate
from mailaudit.ingest.simulator import Simulator
from mailaudit.ingest.topics import create_topics

pytestmark = [pytest.mark.faults, pytest.mark.servers]

SERVICES = [f"svc{i}" for i in range(8)]


class ConsumerDied(AssertionError):
    """The ingest consumer's thread ended while the test still needed it."""


# --- helpers ---------------------------------------------------------------------------------------

def _setup(cfg) -> Database:
    create_topics(cfg.kafka)
    db = Database(cfg.clickhouse)
    migrate(db)
    # Merges would collapse duplicate rows and hide them; stopped, every write stays a raw row.
    db.execute("SYSTEM STOP MERGES {db}.events")
    return db


def _publish(cfg, events=(), raw=()) -> dict[str, tuple[int, int]]:
    """Publish valid events (key = service) and raw values (``(key, bytes)``); return
    ``{event_id or raw index: (partition, offset)}`` from the broker's acknowledgements."""
    p = make_producer(cfg.kafka)
    futures = [(e.event_id, p.send(cfg.kafka.topic_events, key=e.service.encode(), value=e.encode()))
               for e in events]
    futures += [(f"raw{i}", p.send(cfg.kafka.topic_events, key=k, value=v)) for i, (k, v) in enumerate(raw)]
    p.flush(60)
    out = {}
    for ident, f in futures:
        md = f.get(30)
        out[ident] = (md.partition, md.offset)
    p.close()
    return out


def _stored(db) -> tuple[int, int, set[str]]:
    """(raw rows, distinct ids, the ids), without FINAL (merges are stopped): a duplicate write shows."""
    rows = db.execute("SELECT toString(event_id) FROM {db}.events")
    ids = {r[0] for r in rows}
    return len(rows), len(ids), ids


def _count(db) -> int:
    return db.execute("SELECT count() FROM {db}.events FINAL")[0][0]


def _committed(cfg) -> dict[int, int]:
    """The ingest group's committed offsets on the events topic, per partition (OffsetFetch only;
    this client never joins the group)."""
    c = KafkaConsumer(**cfg.kafka.client_kwargs(), group_id=cfg.kafka.ingest_group, enable_auto_commit=False)
    try:
        out = {}
        for p in range(cfg.kafka.partitions):
            off = c.committed(TopicPartition(cfg.kafka.topic_events, p))
            if off is not None:
                out[p] = off
        return out
    finally:
        c.close(autocommit=False)


def _read_all(cfg, topic: str, expect: int, timeout_s: float = 20.0) -> list:
    c = KafkaConsumer(**cfg.kafka.client_kwargs(), auto_offset_reset="earliest", consumer_timeout_ms=1000)
    parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or {0})]
    c.assign(parts)
    c.seek_to_beginning()
    out: list = []
    deadline = time.monotonic() + timeout_s
    while len(out) < expect and time.monotonic() < deadline:
        for batch in c.poll(timeout_ms=500).values():
            out.extend(batch)
    c.close()
    return out


def _alive(thread_owner: ConsumerThread, predicate):
    """A wait predicate that fails at once, not at the timeout, when the consumer thread has died."""
    def check():
        if not thread_owner.thread.is_alive():
            raise ConsumerDied("the consumer thread died (its traceback is in the log above)")
        return predicate()
    return check


def _malformed(i: int) -> tuple[bytes, str]:
    """One malformed message of each reason in turn, every one distinct (i is in its bytes)."""
    base = make_event(100_000 + i).to_wire()
    kinds = [
        (lambda: f'{{"v": 1, "event_id": "broken {i}'.encode(), "invalid_json"),
        (lambda: b"\xff\xfe" + str(i).encode(), "invalid_utf8"),
        (lambda: json.dumps([1, i]).encode(), "not_an_object"),
        (lambda: json.dumps({"v": 1, "event_id": str(uuid.UUID(int=i + 1))}).encode(), "missing_field"),
        (lambda: json.dumps({**base, "envelope_to": f"victim{i}@example.org"}).encode(), "wrong_type"),
        (lambda: json.dumps({**base, "sent_at": "2026-11-02T07:30:00"}).encode(), "bad_sent_at"),
        (lambda: json.dumps({**base, "v": 2}).encode(), "unsupported_version"),
        (lambda: json.dumps({**base, "event_id": f"not-a-uuid-{i}"}).encode(), "bad_event_id"),
    ]
    make, reason = kinds[i % len(kinds)]
    return make(), reason


# --- (a) broker restart ----------------------------------------------------------------------------

def _restart_broker(local_stack, cfg, down_s: float = 1.0) -> None:
    local_stack.stop_kafka()
    try:
        time.sleep(down_s)
    finally:
        local_stack.start_kafka()
    create_topics(cfg.kafka)        # what `mailaudit migrate` does against an empty broker


def test_broker_restart_keeps_committed_events_and_stores_new_ones_exactly_once(make_cfg, local_stack):
    cfg = make_cfg()
    # Long batches by time: the last events are surely polled but unwritten when the broker dies.
    cfg.ingest.batch_time_s = 8.0
    db = _setup(cfg)
    first = [make_event(i, service=SERVICES[i % 8]) for i in range(2000)]
    in_hand = [make_event(i, service=SERVICES[i % 8]) for i in range(2000, 2300)]
    # More events after the restart than before, so the recreated partitions' offsets run through
    # (and past) the consumer's old fetch positions: a consumer that kept them would skip events.
    after = [make_event(i, service=SERVICES[i % 8]) for i in range(3000, 6000)]
    ct = ConsumerThread(cfg)
    with ct as consumer:
        offsets = _publish(cfg, first)
        wait_until(_alive(ct, lambda: sum(_committed(cfg).values()) == len(first)), 60,
                   what="the first events committed")
        offsets.update(_publish(cfg, in_hand))
        wait_until(_alive(ct, lambda: consumer.stats.consumed == len(first) + len(in_hand)), 30,
                   what="the last events polled")
        committed = _committed(cfg)
        assert consumer.stats.inserted == len(first), "the scenario needs a batch in hand at the restart"
        _restart_broker(local_stack, cfg)
        # 1. Committed before the broker died => stored.
        must = {ident for ident, (p, o) in offsets.items() if o < committed.get(p, 0)}
        assert must == {e.event_id for e in first}
        assert not must - _stored(db)[2], "events committed before the restart are missing"
        # 2. Published after the restart => stored exactly once, by the same consumer.
        _publish(cfg, after)
        wait_until(_alive(ct, lambda: {e.event_id for e in after} <= _stored(db)[2]), 90,
                   what="the events published after the restart")
    n, uniq, ids = _stored(db)
    assert n == uniq
    assert ids <= {e.event_id for e in first + in_hand + after}


def test_consumer_scaled_up_while_holding_a_batch_keeps_running(make_cfg):
    """`docker compose up --scale consume=N` mid-traffic: the rebalance revokes partitions from a
    consumer that holds an unwritten batch. It must hand over and carry on, losing nothing."""
    cfg = make_cfg()
    cfg.ingest.batch_time_s = 60.0         # only the rebalance can end the first batch
    db = _setup(cfg)
    events = [make_event(i, service=SERVICES[i % 8]) for i in range(3000)]
    a = ConsumerThread(cfg)
    with a as first:
        wait_until(_alive(a, lambda: first.consumer.assignment()), 30, what="the first consumer's assignment")
        _publish(cfg, events[:1000])
        wait_until(_alive(a, lambda: first.stats.consumed == 1000), 30, what="a batch in hand")
        assert first.stats.inserted == 0, "the scenario needs a batch in hand at the rebalance"
        b = ConsumerThread(cfg)
        with b as second:
            wait_until(_alive(a, _alive(b, lambda: second.consumer.assignment())), 30,
                       what="the second consumer's assignment")
            cfg.ingest.batch_time_s = 0.3          # both consumers share cfg: now write promptly
            _publish(cfg, events[1000:])
            wait_until(_alive(a, _alive(b, lambda: _count(db) == len(events))), 60, what="every event")
            assert first.consumer.assignment() and second.consumer.assignment()
    n, uniq, ids = _stored(db)
    assert (n, uniq) == (len(events), len(events))
    assert ids == {e.event_id for e in events}


# --- (b) 1 % malformed ------------------------------------------------------------------------------

def test_one_percent_malformed_valid_once_malformed_in_dlq_and_errors(make_cfg):
    cfg = make_cfg()
    cfg.ingest.batch_size = 1000
    db = _setup(cfg)
    valid = [make_event(i, service=SERVICES[i % 8]) for i in range(4950)]
    bad = [_malformed(i) for i in range(50)]
    # A mailer retrying after a timeout publishes some events twice: still stored once.
    retried = valid[:100]
    stream = [("ok", e) for e in valid + retried] + [("bad", b) for b in bad]
    random.Random(7).shuffle(stream)
    p = make_producer(cfg.kafka)
    for i, (kind, item) in enumerate(stream):
        if kind == "ok":
            p.send(cfg.kafka.topic_events, key=item.service.encode(), value=item.encode())
        else:
            p.send(cfg.kafka.topic_events, key=SERVICES[i % 8].encode(), value=item[0])
    p.flush(60)
    p.close()
    ct = ConsumerThread(cfg)
    with ct:
        wait_until(_alive(ct, lambda: _count(db) == len(valid)), 90, what="every valid event")
        wait_until(_alive(ct, lambda: db.execute("SELECT count() FROM {db}.errors FINAL")[0][0] == len(bad)), 30,
                   what="an errors row per malformed message")
    n, uniq, ids = _stored(db)
    # Each Kafka record written once: the mailer's 100 retries are records of their own (raw rows),
    # folded by the table's dedup key (FINAL).
    assert (n, uniq) == (len(valid) + len(retried), len(valid))
    assert _count(db) == len(valid)
    assert ids == {e.event_id for e in valid}
    reasons = sorted(r[0] for r in db.execute("SELECT reason FROM {db}.errors FINAL"))
    assert reasons == sorted(r for _, r in bad)
    dlq = _read_all(cfg, cfg.kafka.topic_dlq, len(bad))
    assert len(dlq) == len(bad)
    expected = {m: r for m, r in bad}
    got = {rec.value: dict(rec.headers)["mailaudit.reason"].decode() for rec in dlq}
    assert got == expected


# --- (c) slow ClickHouse: backpressure --------------------------------------------------------------

class _Sampler:
    """Samples the consumer's in-memory state from the outside while it runs."""

    def __init__(self, consumer, period_s: float = 0.02):
        self.c = consumer
        self.period_s = period_s
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            c = self.c
            self.samples.append({
                "t": time.monotonic(), "batch": c.batch.count,
                "unwritten": c.stats.consumed - c.stats.inserted - c.stats.rejected,
                "consumed": c.stats.consumed, "failures": c.stats.write_failures,
                "paused": set(c.consumer.paused()), "assigned": set(c.consumer.assignment()),
            })
            time.sleep(self.period_s)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(5)

    def between(self, t0: float, t1: float) -> list[dict]:
        return [s for s in self.samples if t0 <= s["t"] <= t1]


def test_slow_and_stalled_clickhouse_backpressure_bounded_memory_then_exactly_once(make_cfg, stack):
    cfg = make_cfg()
    cfg.ingest.batch_size = 500
    direct = _setup(cfg)
    # Everything is in Kafka before the consumer starts: it *could* read it all at once, so a bounded
    # in-memory figure below is backpressure, not a slow producer. (12000: even a consumer reading
    # max_poll_records = 5000 per poll has not read them all by the stall.)
    events = [make_event(i, service=SERVICES[i % 8]) for i in range(12000)]
    _publish(cfg, events)
    bound = cfg.ingest.batch_size
    with FaultProxy(stack.clickhouse_port) as proxy:
        cfg.clickhouse.url = f"clickhouse://default:@127.0.0.1:{proxy.port}/{direct.name}"
        proxy.delay_s = 0.05                                  # slow: every chunk waits 50 ms
        ct = ConsumerThread(cfg)
        with ct as consumer, _Sampler(consumer) as sampler:
            try:
                wait_until(_alive(ct, lambda: consumer.stats.batches >= 1), 60, what="a slow batch")
                assert _count(direct) < len(events)

                # Stalled: the link stops moving bytes; the next write hangs in the middle.
                proxy.stall()
                wait_until(_alive(ct, lambda: consumer.batch.ready()), 30, what="a batch ready to write")
                time.sleep(0.5)                               # it is now blocked inside the write
                t_stall = time.monotonic()
                stored_at_stall = _count(direct)
                consumed_at_stall = consumer.stats.consumed
                time.sleep(3.0)
                t_stall_end = time.monotonic()
                assert _count(direct) == stored_at_stall
                assert consumer.stats.consumed == consumed_at_stall, "the consumer kept reading during the stall"
                assert consumed_at_stall < len(events)

                # Down: connections cut and refused; the write fails and is retried, partitions paused.
                proxy.cut(refuse=True)
                proxy.resume()
                failures = consumer.stats.write_failures
                wait_until(_alive(ct, lambda: consumer.stats.write_failures >= failures + 3), 30,
                           what="failed writes while ClickHouse is unreachable")
                t_down = time.monotonic()
                time.sleep(1.5)
                t_down_end = time.monotonic()
                assert consumer.stats.consumed == consumed_at_stall
            finally:
                proxy.heal()
            wait_until(_alive(ct, lambda: _count(direct) == len(events)), 120, what="every event after the faults")
    samples = sampler.samples
    assert len(samples) > 100
    stalled = sampler.between(t_stall, t_stall_end)
    assert stalled and len({s["consumed"] for s in stalled}) == 1
    down = sampler.between(t_down, t_down_end)
    assert down and all(s["assigned"] and s["paused"] == s["assigned"] for s in down), \
        "partitions were not paused while the write was being retried"
    assert len({s["consumed"] for s in down}) == 1
    n, uniq, ids = _stored(direct)
    # A write cut mid-flight may have landed before the consumer saw it fail: at most one batch of raw
    # duplicates, none after FINAL.
    assert uniq == len(events) and n - uniq <= cfg.ingest.batch_size, (n, uniq)
    assert _count(direct) == len(events)
    assert ids == {e.event_id for e in events}
    # Memory: never more than one batch being decoded plus one being written (issue 16's overlap).
    assert max(s["batch"] for s in samples) <= bound
    worst = max(s["unwritten"] for s in samples)
    assert worst <= 2 * bound, f"the consumer held {worst} unwritten records (batch_size {bound})"


# --- (d) detector: ClickHouse sink down -------------------------------------------------------------

def _backtest_alert_ids(cfg, events) -> set[str]:
    engine = DetectionEngine(cfg.detect, clock=None)
    ids = set()
    for e in events:
        ids.update(a.alert_id for a in engine.process(e))
    ids.update(a.alert_id for a in engine.flush())
    return ids


def _ch_alert_ids(db) -> set[str]:
    return {r[0] for r in db.execute("SELECT toString(alert_id) FROM {db}.alerts FINAL")}


def test_detector_keeps_alerts_in_outbox_while_clickhouse_is_down_none_lost(make_cfg, stack):
    cfg = make_cfg()
    direct = _setup(cfg)
    sim = Simulator(seed=11, rate=10.0)
    events = list(sim.events(200, incident=["concatenated_to", "run_together", "bcc_left", "cc_leak"],
                             incident_at_s=40))
    first_ms, last_ms = events[0].sent_at_ms, events[-1].sent_at_ms
    expected = _backtest_alert_ids(cfg, events)
    assert len(expected) >= 6, expected
    # A wall clock pinned to the first event keeps the live detector's idle watermark from running
    # ahead of the recorded traffic (it would mark it late); moving it past the end later closes every
    # window and resolves every incident, as the backtest's end of input does.
    now = [first_ms]

    def clock() -> int:
        return now[0]

    def detector():
        d = DetectConsumer(cfg, clock=clock)
        for w in d.workers:
            w.max_s = 1.0                  # retry often, so the test sees the recovery quickly
        t = threading.Thread(target=d.run, daemon=True)
        t.start()
        return d, t

    def stop(d, t):
        d.stop_event.set()
        t.join(30)
        assert not t.is_alive()

    with FaultProxy(stack.clickhouse_port) as proxy:
        cfg.clickhouse.url = f"clickhouse://default:@127.0.0.1:{proxy.port}/{direct.name}"
        proxy.cut(refuse=True)                                 # ClickHouse unreachable from the start
        _publish(cfg, events)
        d, t = detector()
        try:
            wait_until(lambda: d.stats.events == len(events), 90, what="every event read by the detector")
            ch_worker = next(w for w in d.workers if w.sink.name == "clickhouse")
            kafka_worker = next(w for w in d.workers if w.sink.name == "kafka")
            wait_until(lambda: ch_worker.failures >= 2, 30, what="failed ClickHouse deliveries")
            # One sink down holds back neither detection nor the other sink.
            assert kafka_worker.drain(30)
            assert d.outbox.backlog("clickhouse") > 0
            raised_before_restart = d.stats.alerts
            assert raised_before_restart > 0
        finally:
            stop(d, t)
        assert _ch_alert_ids(direct) == set()

        # The detector restarts while ClickHouse is still down: the undelivered alerts are on disk.
        d, t = detector()
        try:
            wait_until(lambda: d.consumer.assignment(), 30, what="the restarted detector's assignment")
            now[0] = last_ms + 10 * 86_400_000             # end of input: settle, close, resolve
            wait_until(lambda: d.stats.alerts > 0, 30, what="end-of-input alerts")
            time.sleep(0.5)
            assert _ch_alert_ids(direct) == set()
            proxy.heal()
            wait_until(lambda: _ch_alert_ids(direct) == expected, 60, what="every alert in ClickHouse")
            assert d.drain_sinks(30)
        finally:
            stop(d, t)
    rows = direct.execute("SELECT toString(alert_id) FROM {db}.alerts")
    assert {r[0] for r in rows} == expected
    kafka_ids = {json.loads(r.value)["alert_id"] for r in _read_all(cfg, cfg.kafka.topic_alerts, len(expected))}
    assert kafka_ids == expected
