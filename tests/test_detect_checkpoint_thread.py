"""The detector's checkpoints are stored by a thread of their own, off the poll loop (issue 16).

What must still hold, against the real servers: the loop keeps reading while a checkpoint is being
stored; the snapshot is the state at its position (later events do not leak into it); an offset is
committed only once ClickHouse holds the checkpoint it promises; a checkpoint being stored when the
partitions are revoked (another replica joins) or when the detector stops is stored before the hand-over,
so the next owner restores it rather than the one before.
"""

from __future__ import annotations

import copy
import json
import threading
import time

import pytest

from helpers import wait_until
from mailaudit.detect.consumer import DetectConsumer
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.schema import migrate
from mailaudit.ingest.simulator import Simulator
from mailaudit.ingest.topics import create_topics
from test_detect_replicas import _publish

pytestmark = pytest.mark.servers


class _Gate:
    """Holds a consumer's checkpoint store in ``save`` while closed (once ``armed``)."""

    def __init__(self, d: DetectConsumer):
        self.armed = threading.Event()
        self.open = threading.Event()
        self.entered = threading.Event()
        self.held: list = []            # (snapshot positions, the snapshot's JSON as the thread got it)
        self._save = d.store.save
        d.store.save = self.save

    def save(self, cps):
        if self.armed.is_set() and not self.open.is_set():
            self.held.append(({(c.topic, c.partition): c.position for c in cps},
                              {(c.topic, c.partition): _state_json(c) for c in cps}))
            self.entered.set()
            assert self.open.wait(120)
        return self._save(cps)


def _state_json(c) -> str:
    """A checkpoint's state as the thread hands it to the store: encoded by the child, or a document."""
    from mailaudit.detect import state as st
    return json.dumps(st.loads(c.state_wire) if c.state_wire is not None else c.state, sort_keys=True)


def _stored(db: Database, group: str) -> dict[int, int]:
    return dict(db.execute("SELECT partition, max(position) FROM {db}.detect_checkpoints "
                           "WHERE group_id = %(g)s GROUP BY partition", {"g": group}))


def _run(cfg, state_dir, interval=0.3):
    c = copy.deepcopy(cfg)
    c.state_dir = str(state_dir)
    d = DetectConsumer(c, commit_interval_s=interval)
    return d


@pytest.mark.parametrize("fork", [True, False], ids=["child", "thread"])
def test_loop_reads_on_while_a_checkpoint_is_stored_and_commits_only_after_it(make_cfg, tmp_path, fork):
    """Both ways of encoding a checkpoint: in a forked child (the default) and on the checkpoint thread
    (``detect.checkpoint_fork = false``)."""
    cfg = make_cfg()
    cfg.detect.checkpoint_fork = fork
    create_topics(cfg.kafka)
    db = Database(cfg.clickhouse)
    migrate(db)
    events = list(Simulator(seed=8, rate=20.0).events(300, incident=["concatenated_to"], incident_at_s=200))
    half = len(events) // 2
    first = _publish(cfg, events[:half])
    d = _run(cfg, tmp_path / "a")
    gate = _Gate(d)
    committed: dict[int, int] = {}
    commits = []
    commit = d.consumer.commit

    def checked_commit(offsets):
        # Every offset committed must already be backed by a checkpoint row in ClickHouse.
        stored = _stored(db, cfg.kafka.detect_group)
        for tp, om in offsets.items():
            assert stored.get(tp.partition, -1) >= om.offset, (tp, om.offset, stored)
        out = commit(offsets)
        committed.update({tp.partition: om.offset for tp, om in offsets.items()})
        commits.append({tp.partition: om.offset for tp, om in offsets.items()})
        return out

    d.consumer.commit = checked_commit
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    try:
        wait_until(lambda: d.stats.events == half and committed == first, 90,
                   what="the first half read, checkpointed and committed")
        d.commit_interval_s = 3600               # from here on, checkpoints only when the test says
        mid = _publish(cfg, events[half:half + 20])
        mid = {p: first.get(p, 0) + mid.get(p, 0) for p in set(first) | set(mid)}
        wait_until(lambda: d.stats.events == half + 20, 60, what="20 more events read")
        gate.armed.set()
        d._last_commit = 0.0                     # the periodic checkpoint, now
        assert gate.entered.wait(60), "no checkpoint started"
        n_commits = len(commits)
        rest = _publish(cfg, events[half + 20:])
        ends = {p: mid.get(p, 0) + rest.get(p, 0) for p in set(mid) | set(rest)}
        # The store is held: the loop still reads everything (it does not wait for the store) ...
        wait_until(lambda: d.stats.events == len(events), 60, what="the rest read while the store is held")
        # ... and commits nothing meanwhile, and starts no second checkpoint.
        assert len(commits) == n_commits and len(gate.held) == 1
        positions, snapshot = gate.held[0]
        got = {k[1]: p for k, p in positions.items()}
        assert all(mid[p] == o for p, o in got.items()) and set(got) >= {p for p in mid if mid[p] != first.get(p)}
        gate.open.set()
        # The held checkpoint's offsets are committed once it is stored (checked_commit checks the row).
        wait_until(lambda: len(commits) > n_commits, 30, what="the held checkpoint's commit")
        assert commits[n_commits] == {k[1]: p for k, p in positions.items()}
    finally:
        gate.open.set()
        d.stop_event.set()
        t.join(60)
    assert not t.is_alive()
    assert committed == ends                     # the stop's last checkpoint, committed after it was stored
    # The snapshot stored is the state at its position: the events read while it was held are not in it.
    rows = db.execute("SELECT partition, position, state FROM {db}.detect_checkpoints WHERE group_id = %(g)s",
                      {"g": cfg.kafka.detect_group})
    from mailaudit.detect import state as st
    for key, pos in positions.items():
        got = [json.dumps(st.loads(s), sort_keys=True) for p, ps, s in rows if p == key[1] and ps == pos]
        assert got and all(g == snapshot[key] for g in got), key
        assert pos < ends[key[1]] or rest.get(key[1], 0) == 0


def test_a_checkpoint_being_stored_is_handed_over_on_revoke(make_cfg, tmp_path):
    """A second replica joins while A's checkpoint at the partitions' ends is held in the store: the
    partitions B takes must be restored at those ends, not at A's earlier checkpoint."""
    cfg = make_cfg()
    create_topics(cfg.kafka)
    db = Database(cfg.clickhouse)
    migrate(db)
    events = list(Simulator(seed=9, rate=20.0).events(240))
    half = len(events) // 2
    first = _publish(cfg, events[:half])
    a = _run(cfg, tmp_path / "a")
    gate = _Gate(a)
    ta = threading.Thread(target=a.run, daemon=True)
    ta.start()
    b = tb = None
    try:
        wait_until(lambda: a.stats.events == half and _stored(db, cfg.kafka.detect_group) == first, 90,
                   what="A's checkpoints of the first half")
        a.commit_interval_s = 3600
        second = _publish(cfg, events[half:])
        ends = {p: first.get(p, 0) + second.get(p, 0) for p in set(first) | set(second)}
        wait_until(lambda: a.stats.events == len(events), 60, what="A read the second half")
        gate.armed.set()
        a._last_commit = 0.0
        assert gate.entered.wait(60)
        positions, _ = gate.held[0]
        got = {k[1]: p for k, p in positions.items()}
        assert all(ends[p] == o for p, o in got.items()) and set(got) >= {p for p in ends if ends[p] != first.get(p)}
        assert _stored(db, cfg.kafka.detect_group) == first            # ClickHouse still has the older ones
        b = _run(cfg, tmp_path / "b")
        tb = threading.Thread(target=b.run, daemon=True)
        tb.start()
        # A's revocation waits for its checkpoint: the group cannot hand the partitions over before.
        threading.Timer(5.0, gate.open.set).start()
        wait_until(lambda: b.restored, 90, what="B's partitions restored")
        assert gate.open.is_set(), "B restored a partition before A's held checkpoint was stored"
        assert b.restored == {k: ends[k[1]] for k in b.restored}     # at the ends, not at the first half
        time.sleep(1.0)
        assert b.stats.events == 0                                   # nothing re-read
    finally:
        gate.open.set()
        a.stop_event.set()
        if b is not None:
            b.stop_event.set()
        ta.join(60)
        if tb is not None:
            tb.join(60)


def test_stop_stores_the_checkpoint_in_flight(make_cfg, tmp_path):
    cfg = make_cfg()
    create_topics(cfg.kafka)
    db = Database(cfg.clickhouse)
    migrate(db)
    events = list(Simulator(seed=10, rate=20.0).events(120))
    ends = _publish(cfg, events)
    d = _run(cfg, tmp_path / "a", interval=600)
    gate = _Gate(d)
    gate.armed.set()
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    try:
        wait_until(lambda: d.stats.events == len(events), 90, what="everything read")
        d._last_commit = 0.0                     # the periodic checkpoint, now
        assert gate.entered.wait(30)
        d.stop_event.set()
        t.join(2)
        assert t.is_alive()                      # stopping waits for the checkpoint being stored
        gate.open.set()
        t.join(60)
        assert not t.is_alive()
    finally:
        gate.open.set()
        d.stop_event.set()
    assert _stored(db, cfg.kafka.detect_group) == ends


def test_checkpoints_are_spaced_by_their_own_cost(make_cfg, tmp_path):
    """A checkpoint stores the whole state, so its cost grows with it; the next one waits at least
    ``_CHECKPOINT_DUTY`` times the last one's cost (loop snapshot + the thread's CPU), however short
    the configured interval, so checkpointing cannot take over the cores the loop and broker need."""
    from mailaudit.detect import consumer as dc

    cfg = make_cfg()
    create_topics(cfg.kafka)
    migrate(Database(cfg.clickhouse))
    events = list(Simulator(seed=9, rate=50.0).events(600))
    d = _run(cfg, tmp_path / "a", interval=0.02)
    save, starts, costs = d.store.save, [], []

    def dear_save(cps):                        # 40 ms of the thread's CPU on top of the real store
        if not d.stop_event.is_set():              # not the last one, forced by the stop
            starts.append(time.monotonic())
        t = time.thread_time()
        while time.thread_time() - t < 0.04:
            pass
        return save(cps)

    d.store.save = dear_save
    finish = d._finish_checkpoint

    def noted_finish(wait):
        finish(wait)
        costs.append(d._checkpoint_cost_s)

    d._finish_checkpoint = noted_finish
    t = threading.Thread(target=d.run, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 90
        for i in range(0, len(events), 50):          # new positions keep coming: a checkpoint is always due
            if len(starts) >= 4 or time.monotonic() > deadline:
                break
            _publish(cfg, events[i:i + 50])
            time.sleep(0.1)
        assert len(starts) >= 4, starts
    finally:
        d.stop_event.set()
        t.join(60)
    assert min(c for c in costs if c) >= 0.04
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # each gap is at least 20 x ~0.04 s, where the configured 0.02 s would give a few tens of ms
    assert min(gaps) >= max(0.5, dc._CHECKPOINT_DUTY * 0.04 * 0.9), gaps
    # and the operator sees what they cost (docs/operations.md: detector state size)
    reg = d.metrics.registry
    assert reg.get_sample_value("mailaudit_detect_checkpoint_seconds_count") >= len(starts)
    assert reg.get_sample_value("mailaudit_detect_checkpoint_seconds_sum") >= 0.04 * len(starts)
