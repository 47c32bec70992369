"""`mailaudit consume`: Kafka → ClickHouse, at-least-once into an idempotent table.

The loop: poll → ``Batch.submit`` → when the batch is ready (size or age), its write
(``BatchWriter.write``) starts on a background thread while the loop decodes the next batch → once
that write returned, the batch's offsets are committed. In-process, at most one write is in flight: a
full next batch waits for it, so memory is bounded at two batches (one being written, one being
decoded). With ``ingest.workers`` (ingest/pool.py) the loop keeps only the raw records of the batch in
hand and hands each batch to a worker process, which decodes one batch while it inserts the one before:
at most 3 x ``workers`` batches handed over (two held by each worker, one more per worker waiting as
raw bytes) plus the batch in hand. Either way batches are committed in order: a batch that finished
early waits for the older ones. Offsets are committed only after the write returned, so a crash at any
point re-delivers an uncommitted batch and the ReplacingMergeTree collapses the repeats.

While ClickHouse (or the DLQ topic) is down the write is retried with exponential backoff; the
assigned partitions are paused meanwhile and ``poll`` keeps the group membership alive, so nothing is
read that cannot be written. On SIGTERM/Ctrl-C the write in flight is awaited and the batch in hand
gets one more write attempt; if either fails, both are abandoned uncommitted (the next owner of the
partitions reads them again).
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from mailaudit.config import Config
from mailaudit.ingest.batch import Batch
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.kafka_io import make_consumer, make_producer
from mailaudit.ingest.metrics import IngestMetrics, update_lag
from mailaudit.ingest.pool import BuildPool, RawBatch
from mailaudit.ingest.privacy import AddressHasher
from mailaudit.ingest.writer import BatchWriter

log = logging.getLogger("mailaudit.ingest")

# Each event allocates dozens of short-lived containers; with CPython's default generation-0
# threshold (700) the cyclic collector runs every few events and keeps re-scanning the batch in
# hand. A larger threshold cut ingest CPU per event by ~10 % in-process (27 vs 30 µs); the rows
# themselves hold no reference cycles, so memory is unchanged.
GC_THRESHOLDS = (50_000, 20, 100)


@dataclass
class ConsumerStats:
    consumed: int = 0
    inserted: int = 0
    rejected: int = 0
    batches: int = 0
    write_failures: int = 0
    commits: int = 0
    first_record_at: float | None = None   # monotonic time of the first record polled
    last_commit_at: float | None = None    # monotonic time of the latest commit
    batch_seconds: list[float] = field(default_factory=list)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, owner: "IngestConsumer"):
        self.owner = owner

    def on_partitions_revoked(self, revoked):
        self.owner._on_revoked(revoked)

    def on_partitions_assigned(self, assigned):
        log.info("assigned %s", sorted((tp.topic, tp.partition) for tp in assigned))


class IngestConsumer:
    def __init__(self, cfg: Config, db: Database | None = None, consumer=None, producer=None,
                 stop_event: threading.Event | None = None, metrics: IngestMetrics | None = None):
        self.cfg = cfg
        self.metrics = metrics or IngestMetrics()
        self._lag_at = 0.0
        self.db = db or Database(cfg.clickhouse)
        self.hasher = AddressHasher(cfg.require_hash_key(), cfg.privacy.hash_key_id)
        self.consumer = consumer or make_consumer(cfg.kafka, cfg.kafka.ingest_group)
        # The DLQ producer must take the largest DLQ copy (dlq_max_bytes) plus headers and framing.
        self.producer = producer or make_producer(cfg.kafka, max_request_size=max(1_048_576, cfg.ingest.dlq_max_bytes + 65_536))
        self.stop_event = stop_event or threading.Event()
        self.stats = ConsumerStats()
        self._datetime64 = self._server_has_datetime64()
        # ingest.workers > 0: decode + insert in worker processes (ingest/pool.py); the loop only polls,
        # orders and commits.
        self.pool = BuildPool(cfg, self._datetime64, cfg.ingest.workers) if cfg.ingest.workers > 0 else None
        self.writer = BatchWriter(cfg, self.db, self.producer, self.pool)
        self.batch = self._new_batch()
        self._retrying = False
        self._abandon = False
        # Writes in flight, oldest first: (batch, future, started). In-process, one at a time (one
        # writer thread, so writes never overlap). With workers, committed in order: two per worker
        # (one being inserted, one being decoded: ingest/pool.py) and one more per worker waiting, as
        # raw bytes, for a place. Without that one, a worker done with both its batches would idle
        # while the loop waits for the oldest batch, on the other worker, to be committed.
        self._max_inflight = (BuildPool.PER_WORKER + 1) * cfg.ingest.workers if cfg.ingest.workers > 0 else 1
        self._pool = ThreadPoolExecutor(max_workers=self._max_inflight, thread_name_prefix="ingest-write")
        self._inflight: deque[tuple[Batch | RawBatch, Future, float]] = deque()

    def _new_batch(self) -> Batch | RawBatch:
        if self.pool is not None:
            return RawBatch(self.cfg)
        return Batch(self.cfg, self.hasher, datetime64=self._datetime64)

    def _server_has_datetime64(self) -> bool:
        """How ``sent_at`` is stored decides the raw time unit; wait for the server if it is down."""
        delay = self.cfg.ingest.retry_initial_s
        while True:
            try:
                return self.db.capabilities.datetime64
            except Exception as e:  # noqa: BLE001 - ClickHouse not up yet: retry, never crash
                log.warning("ClickHouse not reachable (%s); retrying in %.1fs", e, delay)
                self.db.disconnect()
                if self.stop_event.wait(delay):
                    return False
                delay = min(delay * 2, self.cfg.ingest.retry_max_s)

    # -- lifecycle ---------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        def stop(signum, frame):
            log.info("signal %s: finishing the current batch and stopping", signum)
            self.stop_event.set()
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def run(self, max_seconds: float | None = None) -> ConsumerStats:
        gc.set_threshold(*GC_THRESHOLDS)       # process-wide: `mailaudit consume` owns its process
        self.consumer.subscribe([self.cfg.kafka.topic_events], listener=_Rebalance(self))
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        try:
            while not self.stop_event.is_set():
                if deadline is not None and time.monotonic() > deadline:
                    break
                self.poll_once()
            # Finish: await the write in flight, then one more attempt at the batch in hand; never a
            # commit without a write.
            if self._settle(block=True, retry=False) and len(self.batch) and not self._abandon:
                self._flush(retry=False)
        finally:
            self.close()
        return self.stats

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self.pool is not None:
            self.pool.close()
        try:
            self.consumer.close(autocommit=False)
        except Exception:  # noqa: BLE001
            log.exception("closing consumer")
        try:
            self.producer.close(timeout=5)
        except Exception:  # noqa: BLE001
            log.exception("closing producer")

    # -- the loop ----------------------------------------------------------------------------
    def poll_once(self, timeout_ms: int = 200) -> None:
        # Never read more than fits in the batch: memory stays bounded at one batch. A raw batch (workers)
        # holds only bytes, and always polls for a whole batch, so it may reach twice the batch size:
        # kafka-python sends the next fetch only once its buffer is drained, and polls for a few records
        # at a time leave it waiting on the broker (500-record polls read 8.6k msgs/s here, 5,000-record
        # polls 171k).
        if self.pool is not None:
            room = min(self.cfg.kafka.max_poll_records, self.cfg.ingest.batch_size)
        else:
            room = max(1, min(self.cfg.kafka.max_poll_records, self.cfg.ingest.batch_size - len(self.batch)))
        records = self.consumer.poll(timeout_ms=timeout_ms, max_records=room)
        if self._abandon:
            self._abandon = False
            # Partitions were revoked: the write in flight finishes (its commit keeps only the
            # partitions still ours); the batch in hand is dropped uncommitted.
            if self._settle(block=True, retry=False) and len(self.batch):
                self._abandon_batches([self.batch])
        for recs in records.values():
            if self.stats.first_record_at is None:
                self.stats.first_record_at = time.monotonic()
            self.batch.submit_many(recs)
            self.stats.consumed += len(recs)
            self.metrics.events_in.inc(len(recs))
        self._settle(block=False, retry=True)
        if self.batch.ready() and self._settle(block=True, retry=True, keep=self._max_inflight - 1):
            self._start_write()
        if time.monotonic() - self._lag_at > 5.0:
            self._lag_at = time.monotonic()
            update_lag(self.metrics.lag, self.consumer)

    def _start_write(self) -> None:
        """Hand the batch in hand to the writer thread and start a new one."""
        batch, t0 = self.batch, time.monotonic()
        self._inflight.append((batch, self._pool.submit(self._write_and_count, batch, t0), t0))
        self.batch = self._new_batch()

    def _settle(self, block: bool, retry: bool, keep: int = 0) -> bool:
        """Finish writes in flight, oldest first, until at most ``keep`` remain: commit each that
        succeeded; when one failed, retry it here (partitions paused, as ``_flush``) or, without
        ``retry``, abandon it together with every later batch. ``block=False`` only takes the writes
        already done. False when the batches were abandoned."""
        while self._inflight:
            batch, fut, t0 = self._inflight[0]
            if not fut.done() and (not block or len(self._inflight) <= keep):
                return True
            try:
                fut.result()
                error = None
            except Exception as e:  # noqa: BLE001 - judged by the retry loop below
                error = e
            self._inflight.popleft()
            if error is not None and not self._write_retrying(batch, t0, retry, error):
                later = [b for b, _, _ in self._inflight]
                self._inflight.clear()        # still running ones finish on their own, uncommitted
                self._abandon_batches([batch, *later, self.batch])
                return False
            self._commit(batch)
        return True

    def _flush(self, retry: bool) -> bool:
        """Write the batch in hand on this thread (the last one, at shutdown) and commit it."""
        batch = self.batch
        t0 = time.monotonic()
        self._abandon = False
        if not self._write_retrying(batch, t0, retry):
            self._abandon_batches([batch])
            return False
        self._commit(batch)
        self.batch = self._new_batch()
        return True

    def _write_retrying(self, batch: Batch, t0: float, retry: bool, error: Exception | None = None) -> bool:
        """Write ``batch`` until it succeeds (``error``: the first attempt already failed so). False when
        it must be abandoned: no ``retry``, stopping, or partitions revoked meanwhile."""
        delay = self.cfg.ingest.retry_initial_s
        paused = False
        try:
            while True:
                try:
                    if error is not None:
                        e, error = error, None
                        raise e
                    self._write_and_count(batch, t0)
                    break
                except Exception as e:  # noqa: BLE001 - any write failure is retried, never fatal
                    self.stats.write_failures += 1
                    self.metrics.write_failures.inc()
                    log.warning("write of %d records failed (%s: %s); retrying in %.1fs",
                                len(batch), type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "", delay)
                    self.db.disconnect()
                    if not retry or self.stop_event.is_set() or self._abandon:
                        self._abandon = False
                        return False
                    if not paused:
                        assigned = self.consumer.assignment()
                        if assigned:
                            self.consumer.pause(*assigned)
                        paused = True
                    self._sleep_polling(delay)
                    if self._abandon:
                        self._abandon = False
                        return False
                    delay = min(delay * 2, self.cfg.ingest.retry_max_s)
        finally:
            if paused:
                assigned = self.consumer.assignment()
                if assigned:
                    self.consumer.resume(*assigned)
        return True

    def _write_and_count(self, batch: Batch, t0: float) -> None:
        """Write the batch (on the writer thread, or on the loop's when retrying) and count it as
        written; its offsets are committed afterwards, by the loop."""
        self.writer.write(batch)
        self.stats.inserted += batch.row_count()
        self.stats.rejected += len(batch.rejected)
        self.stats.batches += 1
        self.stats.batch_seconds.append(time.monotonic() - t0)
        m = self.metrics
        m.inserted.inc(batch.row_count())
        for r in batch.rejected:
            m.dlq.labels(r.reason).inc()
        m.batch_seconds.observe(time.monotonic() - t0)
        m.batch_size.observe(len(batch))
        if len(self.stats.batch_seconds) > 1000:
            del self.stats.batch_seconds[:500]

    def _abandon_batches(self, batches: list[Batch]) -> None:
        """Drop unwritten batches without committing them. Partitions we still own are rewound to the
        earliest first offset among them, since our fetch position is already past those records."""
        log.warning("abandoning %d uncommitted records (they will be read again)", sum(len(b) for b in batches))
        first: dict[tuple[str, int], int] = {}
        for b in batches:
            for tp, off in b.first_offsets.items():
                first[tp] = min(off, first.get(tp, off))
        assigned = self.consumer.assignment()
        for (t, p), off in first.items():
            tp = TopicPartition(t, p)
            if tp in assigned:
                self.consumer.seek(tp, off)
        self.batch = self._new_batch()

    def _sleep_polling(self, seconds: float) -> None:
        """Wait while keeping group membership alive (partitions are paused: poll returns nothing)."""
        self._retrying = True
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end and not self.stop_event.is_set():
                recs = self.consumer.poll(timeout_ms=min(100, max(1, int((end - time.monotonic()) * 1000))))
                # Paused partitions return nothing; a partition newly assigned during the wait can:
                # rewind it and pause it too, so the batch in hand stays the only unwritten data.
                for tp, rs in recs.items():
                    if rs:
                        self.consumer.seek(tp, rs[0].offset)
                self.consumer.pause(*self.consumer.assignment())
        finally:
            self._retrying = False

    def _commit(self, batch: Batch) -> None:
        offsets = batch.commit_offsets()
        if not offsets:
            return
        assigned = self.consumer.assignment()
        to_commit = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                     for (t, p), o in offsets.items() if TopicPartition(t, p) in assigned}
        if to_commit:
            try:
                self.consumer.commit(to_commit)
            except KafkaError as e:
                # The rows are stored; only the bookmark failed (e.g. the group moved on). The
                # records will be read again by whoever owns the partitions and collapse on event_id.
                log.warning("offset commit after a successful write failed (%s); records will be re-read", e)
                return
            self.stats.commits += 1
            self.stats.last_commit_at = time.monotonic()

    def _on_revoked(self, revoked) -> None:
        """Partitions were revoked or lost. This may run on kafka-python's IO thread, where nothing may
        block (no write, no commit), so it only marks the batch in hand: the loop abandons it
        uncommitted and the partitions' next owner reads those records again (ReplacingMergeTree
        collapses any repeat)."""
        if len(self.batch) or self._inflight:
            self._abandon = True
