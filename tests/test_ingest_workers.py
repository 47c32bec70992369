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
        assert consumer.pool is not None and consumer._max_inflight == 6     # 3 per worker
        wait_until(lambda: _count(db) == 600, 90, what="600 events in ClickHouse")
        wait_until(lambda: db.execute("SELECT count() FROM {db}.errors FINAL")[0][0] == len(MALFORMED), 30,
                   what="errors rows")
        wait_until(lambda: _committed(cfg) == 600 + len(MALFORMED), 30, what="every offset committed")
        worker_pids = consumer.pool.pids()
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
        first = consumer.pool.pids()
        os.kill(first[0], signal.SIGKILL)
        _publish(cfg, events[300:])
        wait_until(lambda: _count(db) == n, 90, what=f"{n} events after the worker died")
        wait_until(lambda: _committed(cfg) == n, 30, what="every offset committed")
        replaced = consumer.pool.pids()
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
        assert c.pool is not None and len(c.pool.pids()) == 1
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
        old = pool.pids()
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
        new = pool.pids()
        assert len(new) == 1 and new[0] not in old
        wait_until(lambda: _spawned_children() == set(new), 20, what="only the new pool's worker alive")
        t, p, offs, ts, keys, values = records[0]
        assert pool.run([(t, p, offs[:100], ts[:100], keys[:100], values[:100])])[0] == 100   # the new pool works
    finally:
        pool.close()


def _loop_in_thread(pool_mod, w, collect_every=16):
    """A worker's loop (``WorkerLoop``) run on a thread of this process with real pipes, as a worker
    process runs it; returns (send a task, receive a reply, stop)."""
    import multiprocessing
    import threading

    task_r, task_w = multiprocessing.Pipe(duplex=False)
    res_r, res_w = multiprocessing.Pipe(duplex=False)
    loop = pool_mod.WorkerLoop(w, task_r, res_w, collect_every=collect_every)
    t = threading.Thread(target=loop.run, daemon=True)
    t.start()

    def recv(timeout=30):
        assert res_r.poll(timeout), "no reply from the worker loop"
        return res_r.recv()

    def stop():
        task_w.close()
        t.join(30)
        assert not t.is_alive(), "the worker loop did not end when its task pipe closed"

    return task_w.send, recv, stop


def _segments(values, topic="t"):
    n = len(values)
    return [(topic, 0, list(range(n)), [0] * n, [None] * n, values)]      # one RawBatch segment


def test_worker_decodes_the_next_batch_while_one_is_inserted_and_never_a_third(make_cfg, monkeypatch):
    """The overlap the pool exists for, and its bound: batch 2 is decoded while batch 1's insert is
    still waiting on ClickHouse, but batch 3 is not decoded until that insert returned (at most two
    batches of rows in a worker). Replies carry each batch's rows and rejects, against the real server."""
    import threading

    from mailaudit.ingest import pool, writer

    cfg = make_cfg()
    db = _setup(cfg)
    release = threading.Event()
    inserting, built = [], []
    real_insert, real_build = writer.insert_events, pool.build

    def insert(db_, rows):
        inserting.append(len(rows))
        if len(inserting) == 1:
            assert release.wait(30)
        return real_insert(db_, rows)

    def build(w, segments):
        b = real_build(w, segments)
        built.append(len(b.rows))
        return b

    monkeypatch.setattr(writer, "insert_events", insert)
    monkeypatch.setattr(pool, "build", build)
    send, recv, stop = _loop_in_thread(pool, pool._Worker(cfg, db.capabilities.datetime64))
    try:
        send((1, _segments([make_event(i).encode() for i in range(10)] + [b"{"])))
        send((2, _segments([make_event(i).encode() for i in range(10, 30)])))
        send((3, _segments([make_event(i).encode() for i in range(30, 60)])))
        wait_until(lambda: built == [10, 20], 30, what="batch 2 decoded during batch 1's insert")
        time.sleep(0.5)
        assert built == [10, 20] and inserting == [10], "a third batch was decoded while one was being inserted"
        release.set()
        replies = {}
        for _ in range(3):
            seq, ok, payload = recv()
            replies[seq] = (ok, payload[0], [r.reason for r in payload[1]])
    finally:
        release.set()
        stop()
    assert replies == {1: (True, 10, ["invalid_json"]), 2: (True, 20, []), 3: (True, 30, [])}
    assert built == [10, 20, 30] and inserting == [10, 20, 30]
    assert _count(db) == 60


def test_worker_frees_a_batch_before_replying_and_collects_cycles_periodically_and_after_failure(make_cfg, monkeypatch):
    """A worker runs with the cyclic collector off (with two batches overlapping, one is always alive
    and any collection would scan it whole); so garbage cycles must still be collected: every
    ``collect_every`` batches and after a failed insert. And the rows of a batch are gone when the
    loop hears of it, so a worker never holds more than the batch being decoded plus one."""
    import gc
    import weakref

    from mailaudit.ingest import pool, writer

    cfg = make_cfg()
    db = _setup(cfg)
    rows_refs, collected = [], []
    real_insert, real_collect = writer.insert_events, gc.collect

    def insert(db_, rows):
        rows_refs.append(weakref.ref(rows))
        return real_insert(db_, rows)

    monkeypatch.setattr(writer, "insert_events", insert)
    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(len(rows_refs)) or real_collect(*a))
    w = pool._Worker(cfg, db.capabilities.datetime64)
    send, recv, stop = _loop_in_thread(pool, w, collect_every=3)
    try:
        for seq in range(1, 5):
            send((seq, _segments([make_event(seq * 100 + i).encode() for i in range(5)])))
            got, ok, payload = recv()
            assert (got, ok, payload[0]) == (seq, True, 5)
            assert rows_refs[-1]() is None, "the batch's rows were still alive when its reply was sent"
        assert collected == [3], "no periodic collection (every 3 batches)"
        w.db = type(db)(make_cfg(clickhouse__url="clickhouse://default:@127.0.0.1:1/x").clickhouse)
        send((5, _segments([make_event(999).encode()])))
        got, ok, message = recv()
        assert (got, ok) == (5, False) and "Error" in message
        assert collected == [3, 5], "no collection after a failed insert"
    finally:
        stop()
    assert _count(db) == 20


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
