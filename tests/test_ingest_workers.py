"""Ingest with worker processes (``ingest.workers``, ingest/pool.py): the same guarantees as the
in-process consumer — valid events once, malformed ones in the DLQ and the errors table, nothing lost
while ClickHouse is down or when a worker process dies, offsets committed only after the write —
with several batches in flight and committed in order."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from helpers import ConsumerThread, cli, make_event, wait_until, write_config
from test_ingest_e2e import MALFORMED, _committed, _count, _publish, _raw, _read_topic, _setup, max_uncommitted

pytestmark = pytest.mark.servers


def test_workers_store_valid_once_and_dead_letter_malformed(make_cfg):
    cfg = make_cfg(ingest__workers=2, ingest__batch_size=60)
    db = _setup(cfg)
    events = [make_event(i, service=f"svc{i % 5}") for i in range(600)]
    _publish(cfg, events, [m for m, _ in MALFORMED])
    with ConsumerThread(cfg) as consumer:
        assert consumer.pool is not None and consumer._max_inflight == 4     # 2 per worker
        wait_until(lambda: _count(db) == 600, 90, what="600 events in ClickHouse")
        wait_until(lambda: db.execute("SELECT count() FROM {db}.errors FINAL")[0][0] == len(MALFORMED), 30,
                   what="errors rows")
        wait_until(lambda: _committed(cfg) == 600 + len(MALFORMED), 30, what="every offset committed")
        worker_pids = list(consumer.pool._pool._processes)
    # A raw batch may run over by one poll of at most batch_size records: at most twice the size.
    assert consumer.stats.batches >= (600 + len(MALFORMED)) // (2 * 60), "the batches were not cut by size"
    assert consumer.stats.inserted == 600 and consumer.stats.rejected == len(MALFORMED)
    assert _raw(db) == (600, 600), "a valid event was written twice"
    assert {str(r[0]) for r in db.execute("SELECT event_id FROM {db}.events FINAL")} == {e.event_id for e in events}
    # The search index is written by the workers too.
    assert db.execute("SELECT uniqExact(event_id) FROM {db}.events_by_address")[0][0] == 600
    assert sorted(r[0] for r in db.execute("SELECT reason FROM {db}.errors FINAL")) == sorted(r for _, r in MALFORMED)
    dlq = _read_topic(cfg, cfg.kafka.topic_dlq, len(MALFORMED))
    assert sorted(r.value for r in dlq) == sorted(m for m, _ in MALFORMED)
    # Workers run in their own processes, and stop with the consumer.
    assert len(worker_pids) == 2 and os.getpid() not in worker_pids
    time.sleep(1.0)
    for pid in worker_pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_worker_killed_mid_stream_is_replaced_and_nothing_is_lost(make_cfg):
    cfg = make_cfg(ingest__workers=2, ingest__batch_size=100)
    db = _setup(cfg)
    n = 3000
    events = [make_event(i, service=f"svc{i % 8}") for i in range(n)]
    with ConsumerThread(cfg) as consumer:
        _publish(cfg, events[:300])
        wait_until(lambda: _count(db) >= 100, 60, what="first batches")
        first = list(consumer.pool._pool._processes)
        os.kill(first[0], signal.SIGKILL)
        _publish(cfg, events[300:])
        wait_until(lambda: _count(db) == n, 90, what=f"{n} events after the worker died")
        wait_until(lambda: _committed(cfg) == n, 30, what="every offset committed")
        replaced = list(consumer.pool._pool._processes)
    assert first[0] not in replaced and len(replaced) == 2
    raw, distinct = _raw(db)
    assert distinct == n
    # A batch the dead worker had stored but not reported is written again: at most the batches in flight.
    assert 0 <= raw - n <= max_uncommitted(cfg, cfg.ingest.workers)


# ClickHouse down under a consumer with workers: test_ingest_e2e.py, test_clickhouse_down_under_the_consumer_loses_nothing[workers].


def test_consume_cli_with_workers_sigkilled_then_restarted_exactly_once(make_cfg, tmp_path):
    """`mailaudit consume --workers 2` as deployed: the main process is killed; its workers must not
    outlive it, and the restarted consumer completes the log with no loss."""
    cfg = make_cfg(ingest__batch_size=200)
    db = _setup(cfg)
    path = write_config(cfg, tmp_path / "c.toml")
    n = 4000
    events = [make_event(i, service=f"svc{i % 8}") for i in range(n)]
    _publish(cfg, events[:1000])
    p = cli(["consume", "--workers", "2"], path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _count(db) > 0, 90, what="first batch")
        children = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
        _publish(cfg, events[1000:])
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    assert len(children) >= 2, "no worker processes under `consume --workers 2`"
    wait_until(lambda: not any(os.path.exists(f"/proc/{c}") and open(f"/proc/{c}/stat").read().split()[2] != "Z"
                               for c in children), 20, what="workers gone with their consumer")
    p2 = cli(["consume", "--workers", "2"], path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: _count(db) == n, 120, what=f"{n} events after restart")
    finally:
        p2.send_signal(signal.SIGTERM)
        assert p2.wait(60) == 0
    raw, distinct = _raw(db)
    assert distinct == n
    assert 0 <= raw - n <= max_uncommitted(cfg, 2)


def test_workers_setting_from_env_and_file_and_refused_when_negative(tmp_path):
    from mailaudit.config import ConfigError, load_config

    assert load_config(env={}).ingest.workers == 0
    assert load_config(env={"MAILAUDIT_INGEST_WORKERS": "3"}).ingest.workers == 3
    f = tmp_path / "c.toml"
    f.write_text("[ingest]\nworkers = 2\n")
    assert load_config(f, env={}).ingest.workers == 2
    with pytest.raises(ConfigError, match="ingest.workers must be 0"):
        load_config(env={"MAILAUDIT_INGEST_WORKERS": "-1"})


def test_workers_do_not_rerun_the_parents_main_script(make_cfg, tmp_path, monkeypatch):
    """A process whose ``__main__`` is a script without a main guard (here one that would write a
    marker file) starts its ingest workers without running that script again."""
    import sys
    import types

    from mailaudit.ingest.consumer import IngestConsumer

    marker = tmp_path / "ran"
    script = tmp_path / "embedding_app.py"
    script.write_text(f"open({str(marker)!r}, 'a').write('x')\n")
    fake = types.ModuleType("__main__")
    fake.__file__ = str(script)
    fake.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", fake)
    cfg = make_cfg(ingest__workers=1)
    _setup(cfg)
    c = IngestConsumer(cfg)
    try:
        assert c.pool is not None and len(c.pool._pool._processes) == 1
    finally:
        c.close()
    assert sys.modules["__main__"] is fake
    assert not marker.exists(), "a worker ran the parent's __main__ script"


def _spawned_children() -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(os.getpid()), "-f", "spawn_main"], capture_output=True, text=True)
    return set(map(int, out.stdout.split()))


def test_batches_in_flight_on_a_dead_worker_fail_and_the_pool_is_replaced(make_cfg):
    """Two batches are in the pool when its worker is killed: both fail (the consumer retries them),
    the pool is replaced, no worker of the dead pool stays behind, and the new pool stores."""
    import threading

    from mailaudit.ingest.pool import BuildPool, WorkerWriteFailed

    cfg = make_cfg()
    _setup(cfg)
    pool = BuildPool(cfg, False, 1)
    try:
        old = list(pool._pool._processes)
        n = 60000
        records = [(cfg.kafka.topic_events, 0, list(range(n)), [0] * n, [b"k"] * n,
                    [make_event(i).encode() for i in range(n)])]       # one RawBatch segment
        results: list = []

        def one():
            try:
                results.append(pool.run(records))
            except WorkerWriteFailed as e:
                results.append(e)

        threads = [threading.Thread(target=one) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.5)                    # both submitted; the first is being decoded (~2 s each)
        os.kill(old[0], signal.SIGKILL)
        for t in threads:
            t.join(120)
        assert len(results) == 2 and all(isinstance(r, WorkerWriteFailed) for r in results), results
        new = list(pool._pool._processes)
        assert len(new) == 1 and new[0] not in old
        wait_until(lambda: _spawned_children() == set(new), 20, what="only the new pool's worker alive")
        t, p, offs, ts, keys, values = records[0]
        assert pool.run([(t, p, offs[:100], ts[:100], keys[:100], values[:100])])[0] == 100   # the new pool works
    finally:
        pool.close()


def test_worker_batch_runs_without_cyclic_gc_and_restores_it(make_cfg, monkeypatch):
    """A worker holds the collector off while it builds and sends a batch (everything is alive until
    the insert returns) and must hand it back afterwards, on failure too, or a long-running worker
    would never collect garbage cycles at all. Run in this process against the real server."""
    import gc

    from mailaudit.ingest import pool, writer

    cfg = make_cfg()
    db = _setup(cfg)
    values = [make_event(i).encode() for i in range(50)] + [b"{"]
    records = [("t", 0, list(range(51)), [0] * 51, [None] * 51, values)]     # one RawBatch segment
    during = []
    real_insert = writer.insert_events

    def insert(db_, rows):
        during.append(gc.isenabled())
        return real_insert(db_, rows)

    monkeypatch.setattr(writer, "insert_events", insert)
    monkeypatch.setattr(pool, "_worker", pool._Worker(cfg, db.capabilities.datetime64))
    n, rejected = pool._build_and_insert(records)
    assert (n, [r.reason for r in rejected]) == (50, ["invalid_json"])
    assert during == [False], "the collector was on while the batch was sent"
    assert gc.isenabled(), "the collector stayed off after the batch"
    assert _count(db) == 50
    pool._worker.db = type(db)(make_cfg(clickhouse__url="clickhouse://default:@127.0.0.1:1/x").clickhouse)
    with pytest.raises(pool.WorkerWriteFailed):
        pool._build_and_insert(records)
    assert during == [False, False] and gc.isenabled(), "a failed batch left the collector off"


def test_worker_batch_is_freed_before_the_collector_is_back(make_cfg, monkeypatch):
    """The rows of a batch must be gone when the collector is re-enabled: the allocations of a batch
    have made a collection due, and a batch still referenced would be scanned whole by it."""
    import gc
    import weakref

    from mailaudit.ingest import pool, writer

    cfg = make_cfg()
    db = _setup(cfg)
    values = [make_event(i).encode() for i in range(20)]
    rows_ref, alive_at_enable = [], []
    real_insert, real_enable = writer.insert_events, gc.enable

    def insert(db_, rows):
        rows_ref.append(weakref.ref(rows))
        return real_insert(db_, rows)

    def enable():
        alive_at_enable.append(bool(rows_ref) and rows_ref[-1]() is not None)
        real_enable()

    monkeypatch.setattr(writer, "insert_events", insert)
    monkeypatch.setattr(gc, "enable", enable)
    monkeypatch.setattr(pool, "_worker", pool._Worker(cfg, db.capabilities.datetime64))
    assert pool._build_and_insert([("t", 0, list(range(20)), [0] * 20, [None] * 20, values)])[0] == 20
    assert alive_at_enable == [False], "the batch's rows were still referenced when the collector came back"


def test_raw_batch_keeps_records_by_partition_run_with_offsets():
    """The loop hands a worker columns per partition run; the commit offsets and the size-or-age
    readiness must still count every record, in whatever mix of partitions a poll returns."""
    from collections import namedtuple

    from mailaudit.config import Config
    from mailaudit.ingest.pool import RawBatch

    Rec = namedtuple("Rec", "topic partition offset timestamp key value")
    cfg = Config()
    cfg.ingest.batch_size = 6
    b = RawBatch(cfg)
    b.submit_many([Rec("t", 0, 10, 1, b"a", b"x"), Rec("t", 0, 11, 2, None, b"y")])
    b.submit_many([Rec("t", 1, 5, 3, b"c", b"z"), Rec("t", 0, 12, 4, b"d", None), Rec("u", 0, 7, 5, b"e", b"w")])
    assert b.segments == [
        ("t", 0, [10, 11], [1, 2], [b"a", None], [b"x", b"y"]),
        ("t", 1, [5], [3], [b"c"], [b"z"]),
        ("t", 0, [12], [4], [b"d"], [None]),
        ("u", 0, [7], [5], [b"e"], [b"w"]),
    ]
    assert len(b) == 5 and not b.ready()
    assert b.commit_offsets() == {("t", 0): 13, ("t", 1): 6, ("u", 0): 8}
    assert b.first_offsets == {("t", 0): 10, ("t", 1): 5, ("u", 0): 7}
    b.submit_many(iter([Rec("t", 1, 6, 6, None, b"v")]))        # any iterable
    assert len(b) == 6 and b.ready() and b.commit_offsets()[("t", 1)] == 7
