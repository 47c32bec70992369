"""Exposure rows raised from state a replica restored (a copy it never read itself, so not in its
envelope cache) keep their partition, and a checkpoint never trips over a record without one.

Found by the suite (session 7): after a handover, a group-wait decision on restored state emitted
exposure records with ``"p": None`` (the partition was looked up by the service of the cached
envelope, absent there) and the next checkpoint's ``_undelivered`` raised TypeError on the poll loop,
which stops `mailaudit detect`."""

from __future__ import annotations

import uuid

import pytest

from helpers import make_event
from mailaudit.detect.consumer import DetectConsumer
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.parsed import parse_event
from mailaudit.ingest.schema import migrate
from mailaudit.ingest.topics import create_topics
from mailaudit.ingest.wire import Event

T0 = 1_800_000_000_000


def _mail(ms: int, to: str, envelope: list[str]) -> Event:
    return make_event(service="calendar", to=to, envelope=envelope, event_id=str(uuid.uuid4()), sent_at_ms=ms,
                      message_id=f"<{uuid.uuid4().hex}@cal.example.com>", from_="Cal <cal@shop.example>",
                      campaign="invites")


@pytest.mark.servers
def test_exposures_from_restored_state_keep_their_partition_and_checkpoint(make_cfg):
    cfg = make_cfg()
    create_topics(cfg.kafka)
    migrate(Database(cfg.clickhouse))
    d = DetectConsumer(cfg)
    try:
        tp = (cfg.kafka.topic_events, 2)
        d.engine.select(tp)
        for i in range(30):                                   # a history for the service
            u = f"user{i}@gmail.com"
            d.engine.process(e := _mail(T0 + 1000 * i, u, [u]), parse_event(e))
        a, b, c = "amy@gmail.com", "bob@yahoo.com", "cat@outlook.com"
        leak = _mail(T0 + 31_000, f"{a}, {b}, {c}", [a])      # two strangers: decided after the group wait
        assert d._process(leak.encode()) == []
        # A replica that restored this state never read that copy: its envelope cache is empty.
        d._envelopes.clear()
        alerts = d.engine.advance(T0 + 31_000 + 60_000)
        assert alerts, "the group wait's decision"
        d._emit(alerts)
        recs = [r for r in d.outbox.iter_all() if r["type"] == "exposure"]
        assert recs and all(tuple(r["p"]) == tp for r in recs)
        d._positions[tp] = 31
        undelivered = d._undelivered()                        # what a checkpoint hands over
        assert sum(1 for r in undelivered.get(tp, []) if r["type"] == "exposure") == len(recs)
        # and a record without a partition (an older replica's outbox) is left out, not fatal
        d.outbox.append([{"type": "exposure", "row": recs[0]["row"], "p": None}])
        assert d._undelivered().keys() == undelivered.keys()
    finally:                                                  # its sinks were never started: no d.close()
        d.outbox.close()
        d.consumer.close(autocommit=False)
        d.producer.close(timeout=5)
