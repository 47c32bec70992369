"""`mailaudit detect`: the detection consumer, its own consumer group on ``mail.headers``.

Detection never waits on storage and storage never waits on detection: this group reads the same
events as the ingest group, runs the pure ``DetectionEngine`` on event time, and appends what it
produces (alerts, exposure rows, hold commands) to a local outbox that sink workers deliver to
ClickHouse, ``mail.alerts`` and the webhook at their own pace.

Replicas and restarts (one consumer group, any number of ``detect`` processes): state is per partition
(``detect.partitions``: one engine per partition; a service lives on one partition). Every
``commit_interval_s`` (10 s: alerts never wait for it, it only bounds how much is re-read after a crash)
each partition's engine state, read position and not-yet-delivered outbox records are checkpointed
together into ClickHouse (``detect.checkpoints``, versioned non-pickle state; a local copy too), then the
offsets are committed. The poll loop only forks a child that encodes the state (``detect.checkpoint_child``)
and a thread of its own stores it (encoding and storing on the loop paused alert processing for 0.2-0.5 s
every 10 s at 5,000 events/s). A replica that is assigned a partition pauses it, restores the furthest
checkpoint, re-queues the handed-over outbox records, seeks to the checkpoint's position and only then
resumes it; a revoked partition's state is dropped. Alert ids are deterministic, so what is produced
twice around a crash or a rebalance carries the same ids and collapses in the sinks.

Live sources: once a second, when the consumer is caught up, the engine's watermark is advanced to
``now - lateness`` for every service, so a quiet service still closes its windows and resolves its
incidents while others are busy.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.structs import OffsetAndMetadata

from mailaudit.config import Config
from mailaudit.detect.checkpoints import Checkpoint, CheckpointStore
from mailaudit.detect import checkpoint_child
from mailaudit.detect import state as st
from mailaudit.detect.containment import ContainmentPolicy
from mailaudit.detect.engine import DetectionEngine
from mailaudit.detect.outbox import Outbox
from mailaudit.detect.partitions import PartitionedEngine
from mailaudit.detect.sinks import ClickHouseSink, KafkaSink, SinkWorker, WebhookSink
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.kafka_io import make_consumer, make_producer
from mailaudit.ingest.metrics import DetectMetrics, update_lag
from mailaudit.ingest.parsed import parse_event
from mailaudit.ingest.privacy import AddressHasher
from mailaudit.ingest.wire import MalformedEvent, decode_event

log = logging.getLogger("mailaudit.detect")

# The cyclic collector's thresholds for `mailaudit detect` (process-wide: the command owns its process).
# Why not the ingest consumer's (50_000, 20, 100): CPython
# 3.11 starts a generation-0 collection when allocations minus deallocations pass the first number,
# but the engine's state turns over (sibling entries expire as fast as new ones come), so deaths of
# old objects cancel births and the young generation grows far past it. Measured in-process on the
# latency bench's stream at 5,000 events/s (bench/README.md, "Detection latency", session 5): at
# 50,000, generation-0 collections found 60,000-120,000 objects and paused 20-90 ms, generation-1
# ones (every ~80 s) 220-300 ms; at 5,000, 2-13 ms and 8-35 ms, for ~0.5 % more of a core in the
# collector. The third number keeps full collections at one per ~2,000 generation-0 ones (~10 min
# here); with the engine's long-lived state in tuples the collector no longer scans (engine._sib_entry),
# a full one measured 120-150 ms in-process after 150 s of that stream.
GC_THRESHOLDS = (5_000, 20, 100)

_ENVELOPE_CACHE = 200_000
_EMIT_EVERY = 250          # records between looks for alerts to emit within one poll's batch


def wall_ms() -> int:
    return int(time.time() * 1000)


def make_detect_consumer(cfg: Config, topics=()):
    """The detector's Kafka consumer: its group, and a short ``fetch_max_wait_ms`` (a fetch that finds
    no new data otherwise waits kafka-python's 500 ms, which alone set a p99 of 1.8 s at 5,000/s).
    The latency bench's transport baseline (``bench/echo.py``) reads through this too."""
    return make_consumer(cfg.kafka, cfg.kafka.detect_group, topics, fetch_max_wait_ms=cfg.kafka.fetch_max_wait_ms)


@dataclass
class DetectStats:
    events: int = 0
    malformed: int = 0
    alerts: int = 0
    holds: int = 0
    exposure_rows: int = 0
    commits: int = 0


# A checkpoint stores the whole state, so its cost grows with it (measured live at 5,000 events/s after
# 2-3 minutes: 0.16-0.26 s of snapshot on the poll loop + 0.37-0.46 s of CPU on its thread; forked, the
# same work is the child's CPU, counted here too), and it is paid on the cores the loop (and, on small
# hosts, the broker) needs. The next checkpoint starts no
# sooner than this many times the last one's cost after it, so checkpointing takes at most
# ~1/_CHECKPOINT_DUTY of a core whatever the state's size. The price is the replay after a crash: up
# to that much longer (re-sent alerts carry deterministic ids and collapse downstream).
_CHECKPOINT_DUTY = 20

# How long a revocation waits for a checkpoint being stored (it is normally well under a second;
# past this the next owner restores the one before it, which is consistent too).
_REVOKE_WAIT_S = 10.0


class _Flight:
    """A checkpoint being stored by its thread: the snapshot, then what the store did with it."""

    def __init__(self, cps: list[Checkpoint], keys: set[tuple[str, int]], child=None):
        self.cps = cps
        self.keys = keys
        self.child = child          # detect.checkpoint_child.ChildEncoding, encoding the states, or None
        self.thread: threading.Thread | None = None
        self.saved: list[Checkpoint] = []
        self.shared = False
        self.error: BaseException | None = None
        self.snapshot_s = 0.0       # the poll loop's part: the snapshot (or the fork), the outbox read-back
        self.cpu_s = 0.0            # the thread's CPU (encoding, zlib, the local file, the insert) + the child's

    def run(self, store: CheckpointStore) -> None:
        t = time.thread_time()
        try:
            if self.child is not None:
                results = self.child.result()
                self.cps = [cp for cp in self.cps if _encoded(cp, results)]
            self.saved, self.shared = store.save(self.cps)
        except BaseException as e:  # noqa: BLE001 - re-raised on the poll loop
            self.error = e
        finally:
            self.cpu_s = time.thread_time() - t + (self.child.cpu_s if self.child is not None else 0.0)

    @property
    def cost_s(self) -> float:
        return self.snapshot_s + self.cpu_s


def _encoded(cp: Checkpoint, results: dict) -> bool:
    """Take a partition's wire text from the checkpoint child's results; False (logged) if it has none
    (the partition's previous checkpoint stays valid, and the partition is retried next time)."""
    got = results.get((cp.topic, cp.partition))
    if isinstance(got, str):
        cp.state_wire = got
        return True
    log.error("partition %s/%d not checkpointed: %s", cp.topic, cp.partition, got)
    return False


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner: "DetectConsumer"):
        self.owner = owner

    # Both run on kafka-python's IO thread, where nothing may block: they only note the change (and
    # pause what must be restored first); the poll loop does the work at its next turn.
    def on_partitions_revoked(self, revoked):
        self.owner._on_revoked(revoked)

    def on_partitions_assigned(self, assigned):
        self.owner._on_assigned(assigned)


class DetectConsumer:
    def __init__(self, cfg: Config, consumer=None, producer=None, db: Database | None = None,
                 stop_event: threading.Event | None = None, commit_interval_s: float = 10.0, clock=wall_ms,
                 metrics: DetectMetrics | None = None):
        self.cfg = cfg
        self.metrics = metrics or DetectMetrics()
        self._metrics_at = 0.0
        self._reported_failures: dict[str, int] = {}
        self.clock = clock
        self.hasher = AddressHasher(cfg.require_hash_key(), cfg.privacy.hash_key_id)
        DetectionEngine(cfg.detect, clock=clock, hasher=self.hasher)   # config errors at start, not on assignment
        self.engine = PartitionedEngine(lambda: DetectionEngine(cfg.detect, clock=clock, hasher=self.hasher))
        self.policy = ContainmentPolicy(cfg.detect.containment)
        group = cfg.kafka.detect_group
        base = Path(cfg.detect.checkpoint_dir) if cfg.detect.checkpoint_dir else Path(cfg.state_dir) / "detect"
        self.dir = base / "".join(c if c.isalnum() or c in "-._" else "_" for c in group)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)      # checkpoints and outbox hold hashes: owner-only (issue 14)
        self.consumer = consumer or make_detect_consumer(cfg)
        self.producer = producer or make_producer(cfg.kafka)
        self.db = db or Database(cfg.clickhouse)
        sinks = [ClickHouseSink(self.db), KafkaSink(cfg, self.producer)]
        if cfg.webhook.url:
            sinks.append(WebhookSink(cfg.webhook))
        self.outbox = Outbox(self.dir / "outbox", [s.name for s in sinks])
        self.workers = [SinkWorker(self.outbox, s, delivery_delay=self.metrics.delivery_delay.labels(s.name))
                        for s in sinks]
        self.stop_event = stop_event or threading.Event()
        self.commit_interval_s = commit_interval_s
        self._checkpoint_cost_s = 0.0                     # the last checkpoint's (see _CHECKPOINT_DUTY)
        self.stats = DetectStats()
        # Its own connection: a ClickHouse client is not thread-safe and the sink thread uses self.db.
        self.store = CheckpointStore(Database(cfg.clickhouse), group, self.dir)
        self._positions: dict[tuple[str, int], int] = {}
        self._checkpoint_positions: dict[tuple[str, int], int] = {}
        self._dirty: set[tuple[str, int]] = set()         # emitted records since its last checkpoint
        self._last_commit = time.monotonic()
        self._flight: _Flight | None = None               # the checkpoint being stored (at most one)
        self._advanced_at = 0.0
        self._rebalance_lock = threading.Lock()
        self._to_restore: set[tuple[str, int]] = set()
        self._revoked_tps: set[tuple[str, int]] = set()
        self.restored: dict[tuple[str, int], int] = {}    # partition -> position restored at (tests, logs)
        # Copies that may leak: event_id -> (service, campaign, envelope hashes), to say "to whom".
        self._envelopes: OrderedDict[str, tuple[str, str, tuple[str, ...]]] = OrderedDict()

    # -- checkpoint and rebalance ---------------------------------------------------------------
    def _on_revoked(self, revoked) -> None:
        with self._rebalance_lock:
            self._revoked_tps.update((tp.topic, tp.partition) for tp in revoked)
        # A checkpoint being stored is finished before the partitions go: the next owner then finds it.
        # (Only the store's write is waited for, which never touches the consumer; its offsets are not
        # committed for partitions we are giving up.)
        flight = self._flight
        if flight is not None:
            flight.thread.join(_REVOKE_WAIT_S)

    def _on_assigned(self, assigned) -> None:
        assigned = list(assigned)
        if assigned:
            self.consumer.pause(*assigned)              # nothing is read before its state is restored
        with self._rebalance_lock:
            self._to_restore.update((tp.topic, tp.partition) for tp in assigned)

    def _rebalance(self) -> None:
        """Apply what the listener noted: drop revoked partitions, restore newly assigned ones."""
        self._finish_checkpoint(wait=True)    # its store connection is ours again; no commit for revoked
        with self._rebalance_lock:
            revoked, self._revoked_tps = self._revoked_tps, set()
            restore, self._to_restore = self._to_restore, set()
        for key in revoked - restore:
            self.engine.drop(key)
            self._positions.pop(key, None)
            self._checkpoint_positions.pop(key, None)
            self._dirty.discard(key)
        for key in sorted(restore):
            self._restore(key, kept=key in self.engine.engines and key in revoked)

    def _restore(self, key: tuple[str, int], kept: bool) -> None:
        tp = TopicPartition(*key)
        cp, _ = self.store.load(*key)
        ours = self._positions.get(key) if kept else None
        if ours is not None and (cp is None or cp.position <= ours):
            # An eager rebalance revoked and gave back a partition we never lost: keep the live state,
            # but the fetcher restarts from the committed offset, so seek back to where we are.
            self.consumer.seek(tp, ours)
        elif cp is not None:
            try:
                self.engine.load(key, cp.state)
            except Exception as e:  # noqa: BLE001 - a bad checkpoint means a cold partition, not a crash
                log.error("partition %s/%d: unusable checkpoint (%s); replaying it from the start", *key, e)
                self._cold(key, tp)
            else:
                if cp.outbox:
                    self.outbox.append(cp.outbox)   # the previous owner's undelivered records (ids dedupe)
                self._positions[key] = self._checkpoint_positions[key] = cp.position
                self.consumer.seek(tp, cp.position)
                self.restored[key] = cp.position
                log.info("partition %s/%d: restored state at position %d (%d handed-over records, by %s)",
                         key[0], key[1], cp.position, len(cp.outbox), cp.writer)
        else:
            self._cold(key, tp)
        self.consumer.resume(tp)

    def _cold(self, key: tuple[str, int], tp: TopicPartition) -> None:
        """No usable checkpoint. A new group (no committed offset) reads the partition from its start,
        so the state matches the input. A committed offset without a checkpoint (an upgrade from the
        file checkpoint, a lost ClickHouse table) starts there with empty state: replaying days of
        retained traffic would re-send old holds for campaigns operators have since released."""
        self.engine.drop(key)
        self._positions.pop(key, None)
        self._checkpoint_positions.pop(key, None)
        try:
            committed = self.consumer.committed(tp)
        except Exception:  # noqa: BLE001 - unknown: the safe side for state is the start
            committed = None
        if committed is None:
            self.consumer.seek_to_beginning(tp)
            self.restored[key] = -1
        else:
            log.warning("partition %s/%d: no checkpoint, starting with empty state at committed offset %d",
                        key[0], key[1], committed)
            self.consumer.seek(tp, committed)
            self.restored[key] = -2

    def _undelivered(self) -> dict[tuple[str, int], list[dict]]:
        """Outbox records some sink has not delivered yet, by partition (they go into the checkpoint)."""
        by_rec: dict[str, tuple[dict, list[str]]] = {}
        for w in self.workers:
            pos = self.outbox.cursor(w.sink.name)
            while True:
                recs, nxt = self.outbox.read(pos, 5000)
                for r in recs:
                    # A record without a partition (an alert of a service no engine holds any more) is
                    # not handed over: its sinks still deliver it from this outbox.
                    if r.get("p") is None or w.sink.name not in r.get("only", (w.sink.name,)):
                        continue
                    k = json.dumps(r, sort_keys=True)
                    entry = by_rec.get(k)
                    if entry is None:
                        by_rec[k] = (r, [w.sink.name])
                    else:
                        entry[1].append(w.sink.name)
                if not recs or nxt == pos:
                    break
                pos = nxt
        out: dict[tuple[str, int], list[dict]] = {}
        for r, sinks in by_rec.values():
            r = dict(r, only=sorted(sinks))
            out.setdefault((r["p"][0], int(r["p"][1])), []).append(r)
        return out

    def checkpoint_interval_s(self) -> float:
        """``commit_interval_s``, stretched so that checkpoints cost at most ~1/_CHECKPOINT_DUTY."""
        return max(self.commit_interval_s, _CHECKPOINT_DUTY * self._checkpoint_cost_s)

    def checkpoint_and_commit(self, force: bool = False) -> None:
        """Each changed partition's (``force``: every partition's) state + position + undelivered
        records to the store, then the offsets to Kafka; done when it returns (clean stop, tests)."""
        self._finish_checkpoint(wait=True)
        self._start_checkpoint(force)
        self._finish_checkpoint(wait=True)

    def _start_checkpoint(self, force: bool = False) -> None:
        """Snapshot on the poll loop, encode in a forked child, store on a thread of its own.

        The snapshot is what must be consistent: each partition's position, its engine state and its
        undelivered outbox records, all taken here between two events. By default the state is taken by
        forking (``detect.checkpoint_child``): the child holds a copy-on-write image of it and encodes
        it on another core while the loop goes on, so the loop pays only for the fork. Encoding on a
        thread of this process held the interpreter lock for as long as it took (measured at 5,000
        events/s: 0.16-0.30 s on the loop and 0.35-0.63 s on the thread every 10-17 s, the periodic
        spikes of the alert latency). With ``detect.checkpoint_fork = false``, or where the system
        cannot fork, ``state_dict`` builds the state's document here (new containers all the way down,
        so nothing the loop does next can change it) and the thread encodes it. The outbox records are
        read back from disk either way. The offsets are committed by the loop (the
        consumer is not thread-safe) once the thread is done and ClickHouse took the checkpoints
        (``_finish_checkpoint``)."""
        t0 = self._last_commit = time.monotonic()
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        with self._rebalance_lock:
            pending = self._to_restore | self._revoked_tps
        todo = [k for k, pos in sorted(self._positions.items())
                if k in assigned and k not in pending
                and (force or pos != self._checkpoint_positions.get(k) or k in self._dirty)]
        if not todo:
            return
        undelivered = self._undelivered()
        child = None
        if self.cfg.detect.checkpoint_fork:
            max_bytes = self.store.max_bytes
            child = checkpoint_child.start(
                lambda k: st.dumps(self.engine.state_dict(k), max_bytes=max_bytes), todo)
        cps = []
        for k in todo:
            try:
                cps.append(Checkpoint(k[0], k[1], self._positions[k],
                                      None if child is not None else self.engine.state_dict(k),
                                      undelivered.get(k, [])))
            except Exception:  # noqa: BLE001 - the previous checkpoint stays valid: never crash on it
                log.exception("partition %s/%d: state not checkpointed", *k)
        # Records emitted from here on are not in this snapshot: they mark their partition again.
        self._dirty.difference_update(todo)
        flight = _Flight(cps, set(todo), child)
        flight.snapshot_s = time.monotonic() - t0
        flight.thread = threading.Thread(target=flight.run, args=(self.store,), name="detect-checkpoint",
                                         daemon=True)
        self._flight = flight
        flight.thread.start()

    def _finish_checkpoint(self, wait: bool) -> None:
        """Once the checkpoint thread is done: note what was stored, commit its offsets."""
        flight = self._flight
        if flight is None or (not wait and flight.thread.is_alive()):
            return
        flight.thread.join()
        self._flight = None
        self._checkpoint_cost_s = flight.cost_s
        self.metrics.checkpoint_seconds.observe(flight.cost_s)
        interval = self.checkpoint_interval_s()
        # Said at INFO only once it stretches the interval (then at most every ~10 s).
        log.log(logging.INFO if interval > self.commit_interval_s else logging.DEBUG,
                "checkpoint of %d partition(s): %.3f s on the loop + %.3f s CPU on its thread; next in >= %.1f s",
                len(flight.cps), flight.snapshot_s, flight.cpu_s, interval)
        if flight.error is not None:
            self._dirty.update(flight.keys)
            raise flight.error                       # as when it ran on the loop (e.g. a full disk)
        stored = {(cp.topic, cp.partition) for cp in flight.saved} if flight.shared else set()
        self._dirty.update(flight.keys - stored)    # else written locally only: retried next time
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        with self._rebalance_lock:
            pending = self._to_restore | self._revoked_tps
        offsets = {}
        for cp in flight.saved if flight.shared else ():
            key = (cp.topic, cp.partition)
            if key not in self._positions:
                continue                             # dropped (revoked) while it was being stored
            self._checkpoint_positions[key] = cp.position
            # Offsets only for checkpoints every replica can read (a committed offset promises a
            # checkpoint), and only for partitions still ours: a rebalance may have come in between.
            if key in assigned and key not in pending:
                offsets[TopicPartition(*key)] = OffsetAndMetadata(cp.position, "", -1)
        if offsets:
            try:
                self.consumer.commit(offsets)
                self.stats.commits += 1
            except Exception as e:  # noqa: BLE001 - the checkpoint holds the truth; retry next time
                log.warning("offset commit failed: %s", e)

    # -- run -------------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def stop(signum, frame):
            self.stop_event.set()
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def start_sinks(self) -> None:
        for w in self.workers:
            if not w.thread.is_alive():
                w.start()

    def run(self, max_seconds: float | None = None) -> DetectStats:
        # The engine keeps a large, long-lived object graph: at CPython's default thresholds
        # (700, 10, 10) its older generations re-scan all of it every few seconds; see GC_THRESHOLDS.
        gc.set_threshold(*GC_THRESHOLDS)
        self.consumer.subscribe([self.cfg.kafka.topic_events], listener=_Listener(self))
        self.start_sinks()
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        try:
            while not self.stop_event.is_set() and (deadline is None or time.monotonic() < deadline):
                self.poll_once()
            # A clean stop: deliver what can be delivered, then hand over only what is still pending.
            self.drain_sinks(5.0)
            self.checkpoint_and_commit(force=True)
        finally:
            self.close()
        return self.stats

    def poll_once(self, timeout_ms: int = 100) -> None:
        max_records = self.cfg.kafka.max_poll_records
        if self._to_restore or self._revoked_tps:
            self._rebalance()
        records = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        read_at = time.monotonic()
        if records:
            self._observe_read_delay(records)
        alerts = []
        n = 0
        for tp, recs in records.items():
            if (tp.topic, tp.partition) in self._to_restore:
                continue                         # assigned during this poll: restored first, re-read after
            self.engine.select((tp.topic, tp.partition))
            for i, r in enumerate(recs, 1):
                alerts.extend(self._process(r.value))
                # A poll after a pause returns up to max_poll_records (5,000: ~0.2 s of work); an alert
                # found early in it goes out then, not after the rest.
                if alerts and not i % _EMIT_EVERY:
                    self._emit(alerts, read_at)
                    alerts = []
            n += len(recs)
            self._positions[(tp.topic, tp.partition)] = recs[-1].offset + 1
        if alerts:
            self._emit(alerts, read_at)
            alerts = []
        # Live sources: once we have read everything there is (no lag on any assigned partition),
        # no event older than now - lateness is still to come. While catching up on a backlog the
        # wall clock says nothing about what is unread, so the watermark moves with the events.
        if n < max_records and time.monotonic() - self._advanced_at >= 1.0:
            self._advanced_at = time.monotonic()
            if self._caught_up():
                # Raised by the clock, after an event-time wait: no read to time them from.
                alerts = self.engine.advance(self.clock() - int(self.cfg.detect.lateness_s * 1000))
        self._emit(alerts)
        if self._to_restore or self._revoked_tps:
            self._rebalance()
        if self._flight is not None:
            self._finish_checkpoint(wait=False)
        if self._flight is None and time.monotonic() - self._last_commit >= self.checkpoint_interval_s():
            self._start_checkpoint()
        if time.monotonic() - self._metrics_at > 5.0:
            self._metrics_at = time.monotonic()
            self._refresh_gauges()

    def _refresh_gauges(self) -> None:
        update_lag(self.metrics.lag, self.consumer)      # from the last fetch's high watermark: no request
        for w in self.workers:
            self.metrics.outbox_backlog.labels(w.sink.name).set(self.outbox.backlog(w.sink.name))
            new = w.failures - self._reported_failures.get(w.sink.name, 0)
            if new:
                self.metrics.sink_failures.labels(w.sink.name).inc(new)
                self._reported_failures[w.sink.name] = w.failures

    def _ends(self) -> dict | None:
        """Each assigned partition's end offset as of its last fetch response (kafka-python's
        ``highwater``: no request), or None while one is unknown (no fetch yet, e.g. being restored).
        It was ``end_offsets``, a broker round trip on the poll loop: 40-50 ms every second at
        5,000 events/s on this machine. Right after a poll the last fetch is at most one fetch old,
        which is all the difference from asking the broker (whose answer is as old by the time it
        is used)."""
        assigned = list(self.consumer.assignment())
        if not assigned:
            return None
        ends = {}
        for tp in assigned:
            hw = self.consumer.highwater(tp)
            if hw is None:
                return None
            ends[tp] = hw
        return ends

    def _caught_up(self) -> bool:
        try:
            ends = self._ends()
            return ends is not None and all(self.consumer.position(tp) >= end for tp, end in ends.items())
        except Exception:  # noqa: BLE001 - unknown lag: do not advance on the wall clock
            return False

    def _process(self, value: bytes | None) -> list:
        try:
            event = decode_event(value or b"")
        except MalformedEvent:
            self.stats.malformed += 1        # ingest dead-letters it; detection just skips it
            self.metrics.malformed.inc()
            return []
        self.stats.events += 1
        self.metrics.events.inc()
        parsed = parse_event(event)
        if parsed.strangers or parsed.has_bcc or parsed.run_together:
            # A tuple of strings (not a list): the cache holds up to 200,000 of these for minutes, and
            # only a tuple of atomic values is dropped from the cyclic GC's scans (see engine._sib_entry).
            self._envelopes[event.event_id] = (event.service, event.campaign or event.template or "",
                                               tuple([self.hasher.hash(a) for a in parsed.envelope]))
            if len(self._envelopes) > _ENVELOPE_CACHE:
                self._envelopes.popitem(last=False)
        return self.engine.process(event, parsed)

    def _observe_read_delay(self, records) -> None:
        """Publish -> read of the oldest record of each partition's batch (one observation per batch,
        not per record: ~1.5 µs each at 5,000 events/s). The record's timestamp is the producer's
        CreateTime (or the broker's LogAppendTime on topics set so); records without one are skipped."""
        now_ms = time.time() * 1000
        for recs in records.values():
            ts = getattr(recs[0], "timestamp", None) if recs else None
            if ts is not None and ts > 0:
                self.metrics.read_delay.observe(max(0.0, now_ms - ts) / 1000)

    def _emit(self, alerts, read_at: float | None = None) -> None:
        """Queue alerts (and the exposure rows they bring) for the sinks. ``read_at``: when the poll
        that returned their trigger records came back (``time.monotonic``), for the raise delay."""
        out = []
        for a in alerts:
            control = self.policy.apply(a)
            tp = self.engine.partition_of(a.service)
            out.append({"type": "alert", "alert": a.to_dict(), "p": tp})
            if control:
                control["p"] = tp
            self.metrics.alerts.labels(a.kind, a.severity, a.status).inc()
            if control:
                out.append(control)
                self.stats.holds += 1
                self.metrics.holds.inc()
        self.stats.alerts += len(alerts)
        out.extend(self._exposure_records())
        if out:
            for r in out:
                if r.get("p") is not None:
                    self._dirty.add(tuple(r["p"]))
            self.outbox.append(out)
        if read_at is not None and alerts:
            delay = time.monotonic() - read_at
            for _ in alerts:
                self.metrics.raise_delay.observe(delay)

    def _exposure_records(self) -> list[dict]:
        rows = self.engine.take_exposures_by_partition()
        if not rows:
            return []
        by_copy: dict[tuple[str, str], dict] = {}
        tps: dict[tuple[str, str], tuple[str, int]] = {}
        for tp, r in rows:
            rec = by_copy.get((r.incident_id, r.event_id))
            if rec is None:
                # A copy read before a restore (another replica's) is not in this cache: its service and
                # envelope are then unknown here, but its partition is the engine's that raised the row.
                service, campaign, recipients = self._envelopes.get(r.event_id, ("", "", ()))
                tps[(r.incident_id, r.event_id)] = tp
                rec = by_copy[(r.incident_id, r.event_id)] = {
                    "incident_id": r.incident_id, "event_id": r.event_id, "sent_ms": r.sent_at_ms,
                    "service": service, "campaign": campaign, "key_id": r.key_id,
                    "exposed_hashes": [], "exposed_masked": [], "exposed_domains": [],
                    "recipient_hashes": list(recipients),
                }
            rec["exposed_hashes"].append(r.address_hash)
            rec["exposed_masked"].append(r.address_masked)
            rec["exposed_domains"].append(r.domain)
        self.stats.exposure_rows += len(rows)
        return [{"type": "exposure", "row": rec, "p": tps[key]} for key, rec in by_copy.items()]

    def drain_sinks(self, timeout: float = 30.0) -> bool:
        return all(w.drain(timeout) for w in self.workers)

    def close(self) -> None:
        try:
            self._finish_checkpoint(wait=True)       # a checkpoint being stored lands before we leave
        except Exception:  # noqa: BLE001
            log.exception("storing the last checkpoint")
        for w in self.workers:
            w.drain(5.0)
            w.close()
        self.outbox.close()
        try:
            self.consumer.close(autocommit=False)
        except Exception:  # noqa: BLE001
            log.exception("closing consumer")
        try:
            self.producer.close(timeout=5)
        except Exception:  # noqa: BLE001
            log.exception("closing producer")
