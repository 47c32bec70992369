"""Two `mailaudit detect` replicas in one group on 4 partitions; one is SIGKILLed mid-stream.

The survivor must take the dead replica's partitions over from their ClickHouse checkpoints (no shared
volume: each replica has its own state dir), and the alerts must be exactly those of the single-process
backtest of the same input: the same set of ids, none lost, none duplicated, every incident's final
counts right.
"""

from __future__ import annotations

import copy
import io
import json
import re
import signal
import subprocess
import time
from collections import Counter

import pytest

from helpers import cli, wait_until, write_config
from mailaudit.detect.backtest import run_backtest
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.kafka_io import make_producer
from mailaudit.ingest.privacy import AddressHasher
from mailaudit.ingest.schema import migrate
from mailaudit.ingest.simulator import Simulator
from mailaudit.ingest.topics import create_topics
from test_faults import _read_all

pytestmark = pytest.mark.servers

_RESTORED = re.compile(r"partition (\S+)/(\d+): restored state at position (\d+)")


def _publish(cfg, events) -> dict[int, int]:
    """Publish keyed by service (as the SDK does); returns the end offset of each partition."""
    p = make_producer(cfg.kafka)
    futures = [p.send(cfg.kafka.topic_events, key=e.service.encode(), value=e.encode()) for e in events]
    p.flush(120)
    p.close()
    ends: Counter = Counter()
    for f in futures:
        ends[f.get(10).partition] += 1
    return dict(ends)


def _expected(cfg, events):
    """The single-process backtest of the same input: alerts, and each incident's last state."""
    out = io.StringIO()
    hasher = AddressHasher(cfg.require_hash_key(), cfg.privacy.hash_key_id)
    run_backtest((e.encode() for e in events), cfg.detect, out, io.StringIO(), hasher=hasher)
    alerts = [json.loads(line) for line in out.getvalue().splitlines()]
    last = {}
    for a in alerts:
        last[a["incident_id"]] = (a["status"], a["copies"], a["exposed"])
    return {a["alert_id"] for a in alerts}, last


def test_survivor_takes_over_a_killed_replica_alerts_equal_the_backtest(make_cfg, tmp_path):
    cfg = make_cfg()
    cfg.kafka.partitions = 4
    cfg.kafka.max_poll_records = 200        # small polls: the replicas are mid-stream for a while
    create_topics(cfg.kafka)
    db = Database(cfg.clickhouse)
    migrate(db)
    events = list(Simulator(seed=21, rate=40.0).events(
        1800, incident=["concatenated_to", "cc_leak", "bcc_left", "run_together"], incident_at_s=300))
    expected_ids, expected_incidents = _expected(cfg, events)
    assert len(expected_ids) >= 8 and len(expected_incidents) >= 4
    ends = _publish(cfg, events)
    assert len(ends) == 4, f"services did not spread over the 4 partitions: {ends}"

    procs, logs = [], []
    for i in range(2):
        c = copy.deepcopy(cfg)
        c.state_dir = str(tmp_path / f"replica{i}")                     # no shared volume
        path = write_config(c, tmp_path / f"replica{i}.toml")
        log = open(tmp_path / f"replica{i}.log", "w+")
        logs.append(log)
        procs.append(cli(["detect", "--checkpoint-interval", "0.5", "--log-level", "INFO"], path,
                         stdout=log, stderr=subprocess.STDOUT))
    try:
        def victim():
            for p in procs:
                if p.poll() is not None:
                    continue
                rows = db.execute(
                    "SELECT partition, position FROM {db}.detect_checkpoints FINAL WHERE writer LIKE %(w)s",
                    {"w": f"%:{p.pid}"})
                if len(rows) == 2 and any(0 < pos < ends[part] for part, pos in rows):
                    return p.pid
            return None

        pid = wait_until(victim, 120, interval=0.1, what="a replica with a mid-stream checkpoint")
        dead = next(p for p in procs if p.pid == pid)
        survivor = next(p for p in procs if p.pid != pid)
        dead.send_signal(signal.SIGKILL)
        dead.wait(10)
        # Its checkpoints as the survivor will find them (the furthest per partition).
        taken = {p: pos for p, pos, w in db.execute(
            "SELECT partition, position, writer FROM {db}.detect_checkpoints FINAL") if w.endswith(f":{pid}")}
        assert len(taken) == 2 and any(pos < ends[p] for p, pos in taken.items()), (taken, ends)

        def alert_ids():
            return {r[0] for r in db.execute("SELECT toString(alert_id) FROM {db}.alerts FINAL")}

        slog = logs[[p.pid for p in procs].index(survivor.pid)]

        def restored():
            slog.flush()
            return {(int(p), int(pos)) for t, p, pos in _RESTORED.findall(open(slog.name).read())
                    if t == cfg.kafka.topic_events}

        def survivor_done():
            assert survivor.poll() is None, "the survivor died"
            return dict(db.execute("SELECT partition, position FROM {db}.detect_checkpoints FINAL")) == ends

        # The survivor restores each of the dead replica's partitions at the dead one's checkpoint ...
        wait_until(lambda: set(taken.items()) <= restored(), 60, what="the survivor restoring the dead one's partitions")
        # ... and reads every partition to its end (the checkpoints reach every end offset).
        wait_until(survivor_done, 150, what="the survivor at the end of every partition")
        wait_until(lambda: alert_ids() >= expected_ids, 30, what="every backtest alert")
        time.sleep(2)                                                   # anything extra would show now
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        for log in logs:
            log.close()

    got = alert_ids()
    assert got == expected_ids, (f"lost {sorted(expected_ids - got)[:5]}, extra {sorted(got - expected_ids)[:5]}")
    n, distinct = db.execute("SELECT count(), uniqExact(alert_id) FROM {db}.alerts FINAL")[0]
    assert n == distinct == len(expected_ids)
    incidents = {r[0]: (r[1], r[2], r[3]) for r in db.execute(
        "SELECT toString(incident_id), status, copies, exposed FROM {db}.incidents FINAL")}
    assert incidents == expected_incidents
    kafka_ids = {json.loads(r.value)["alert_id"] for r in _read_all(cfg, cfg.kafka.topic_alerts, len(expected_ids))}
    assert kafka_ids == expected_ids


class _Webhook:
    """A loopback webhook receiver that refuses (503) until told to accept, and records alert ids."""

    def __init__(self):
        import http.server
        import threading

        owner = self
        self.accept = False
        self.ids: list[str] = []

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if not owner.accept:
                    self.send_response(503)
                else:
                    owner.ids.append(json.loads(body)["alert_id"])
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_undelivered_alerts_are_handed_over_with_the_checkpoint(make_cfg, tmp_path):
    """A replica whose webhook is down leaves; the next owner of its partitions delivers what it had
    not delivered, to that sink only, from the checkpoint (its own disk is not shared)."""
    import threading

    from mailaudit.detect.consumer import DetectConsumer

    hook = _Webhook()
    cfg = make_cfg()
    cfg.webhook.url = hook.url
    create_topics(cfg.kafka)
    db = Database(cfg.clickhouse)
    migrate(db)
    events = list(Simulator(seed=5, rate=20.0).events(300, incident=["bcc_left", "concatenated_to"], incident_at_s=100))
    expected_ids, _ = _expected(cfg, events)
    assert len(expected_ids) >= 4
    ends = _publish(cfg, events)

    def run(state_dir):
        c = copy.deepcopy(cfg)
        c.state_dir = str(state_dir)
        d = DetectConsumer(c, commit_interval_s=0.3)
        for w in d.workers:
            w.max_s = 0.5
        t = threading.Thread(target=d.run, daemon=True)
        t.start()
        return d, t

    try:
        a, ta = run(tmp_path / "a")
        wait_until(lambda: a.stats.events == len(events) and a.stats.alerts >= len(expected_ids), 90,
                   what="replica A read everything and raised the alerts")
        hooked = next(w for w in a.workers if w.sink.name == "webhook")
        wait_until(lambda: hooked.failures >= 1, 30, what="the webhook refusing")
        assert all(w.drain(30) for w in a.workers if w.sink.name != "webhook")
        a.stop_event.set()                                   # A leaves; its webhook backlog stays on its disk
        ta.join(60)
        assert not ta.is_alive()
        assert hook.ids == []
        hook.accept = True
        b, tb = run(tmp_path / "b")                           # another host: an empty state dir
        try:
            wait_until(lambda: set(hook.ids) >= expected_ids, 60, what="the handed-over alerts at the webhook")
            # Nothing was re-read: B restored every partition at its end and delivered from the checkpoint.
            assert {k[1]: pos for k, pos in b.restored.items()} == ends
            assert b.stats.events == 0
        finally:
            b.stop_event.set()
            tb.join(60)
    finally:
        hook.close()
    assert set(hook.ids) == expected_ids
    # The handed-over records named only the sink that still needed them: Kafka got each alert once.
    kafka_ids = [json.loads(r.value)["alert_id"] for r in _read_all(cfg, cfg.kafka.topic_alerts, len(expected_ids) + 1,
                                                                     timeout_s=5)]
    assert sorted(kafka_ids) == sorted(expected_ids)


def test_committed_offset_without_a_checkpoint_starts_there_not_from_the_start(make_cfg):
    """An upgrade from the file checkpoint (offsets committed, no checkpoint row): start at the committed
    offsets with empty state, never replay the retained days (that would re-send old holds)."""
    import threading

    from kafka import TopicPartition as TP
    from kafka.structs import OffsetAndMetadata

    from mailaudit.detect.consumer import DetectConsumer
    from mailaudit.ingest.kafka_io import make_consumer

    cfg = make_cfg()
    create_topics(cfg.kafka)
    migrate(Database(cfg.clickhouse))
    events = list(Simulator(seed=6, rate=10.0).events(120))
    ends = _publish(cfg, events)
    committed = {p: n // 2 for p, n in ends.items()}
    c = make_consumer(cfg.kafka, cfg.kafka.detect_group)
    c.assign([TP(cfg.kafka.topic_events, p) for p in committed])
    c.commit({TP(cfg.kafka.topic_events, p): OffsetAndMetadata(o, "", -1) for p, o in committed.items()})
    c.close()
    d = DetectConsumer(cfg, commit_interval_s=0.5)
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    try:
        rest = sum(ends.values()) - sum(committed.values())
        wait_until(lambda: d.stats.events >= rest and len(d.restored) == len(ends), 60, what="the rest of each partition")
        time.sleep(1.0)
        assert d.stats.events == rest
        assert set(d.restored.values()) == {-2}
    finally:
        d.stop_event.set()
        t.join(30)
