"""`mailaudit consume`: Kafka → ClickHouse, at-least-once into an idempotent table.

The loop: poll → ``Batch.submit`` → when the batch is ready (size or age), ``BatchWriter.write`` →
commit the batch's offsets. Offsets are committed only after the write returned, so a crash at any
point re-delivers an uncommitted batch and the ReplacingMergeTree collapses the repeats.

While ClickHouse (or the DLQ topic) is down the write is retried with exponential backoff; the
assigned partitions are paused meanwhile and ``poll`` keeps the group membership alive, so memory
stays bounded at one batch and nothing is read that cannot be written. On SIGTERM/Ctrl-C the current
batch gets one more write attempt; if that fails it is abandoned uncommitted (the next owner of the
partitions reads it again).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from mailaudit.config import Config
from mailaudit.ingest.batch import Batch
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.kafka_io import make_consumer, make_producer
from mailaudit.ingest.metrics import IngestMetrics, update_lag
from mailaudit.ingest.privacy import AddressHasher
from mailaudit.ingest.writer import BatchWriter

log = logging.getLogger("mailaudit.ingest")


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
        self.writer = BatchWriter(cfg, self.db, self.producer)
        self.stop_event = stop_event or threading.Event()
        self.stats = ConsumerStats()
        self._datetime64 = self._server_has_datetime64()
        self.batch = self._new_batch()
        self._retrying = False
        self._abandon = False

    def _new_batch(self) -> Batch:
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
        self.consumer.subscribe([self.cfg.kafka.topic_events], listener=_Rebalance(self))
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        try:
            while not self.stop_event.is_set():
                if deadline is not None and time.monotonic() > deadline:
                    break
                self.poll_once()
            # Finish: one more attempt at the batch in hand, never a commit without a write.
            if len(self.batch) and not self._abandon:
                self._flush(retry=False)
        finally:
            self.close()
        return self.stats

    def close(self) -> None:
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
        # Never read more than fits in the batch: memory stays bounded at one batch.
        room = max(1, min(self.cfg.kafka.max_poll_records, self.cfg.ingest.batch_size - len(self.batch)))
        records = self.consumer.poll(timeout_ms=timeout_ms, max_records=room)
        if self._abandon:
            self._abandon = False
            if len(self.batch):
                self._abandon_batch(self.batch)
        for recs in records.values():
            if self.stats.first_record_at is None:
                self.stats.first_record_at = time.monotonic()
            self.batch.submit_many(recs)
            self.stats.consumed += len(recs)
            self.metrics.events_in.inc(len(recs))
        if self.batch.ready():
            self._flush(retry=True)
        if time.monotonic() - self._lag_at > 5.0:
            self._lag_at = time.monotonic()
            update_lag(self.metrics.lag, self.consumer)

    def _flush(self, retry: bool) -> bool:
        batch = self.batch
        t0 = time.monotonic()
        delay = self.cfg.ingest.retry_initial_s
        self._abandon = False
        paused = False
        try:
            while True:
                try:
                    self.writer.write(batch)
                    break
                except Exception as e:  # noqa: BLE001 - any write failure is retried, never fatal
                    self.stats.write_failures += 1
                    self.metrics.write_failures.inc()
                    log.warning("write of %d records failed (%s: %s); retrying in %.1fs",
                                len(batch), type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "", delay)
                    self.db.disconnect()
                    if not retry or self.stop_event.is_set() or self._abandon:
                        self._abandon_batch(batch)
                        return False
                    if not paused:
                        assigned = self.consumer.assignment()
                        if assigned:
                            self.consumer.pause(*assigned)
                        paused = True
                    self._sleep_polling(delay)
                    if self._abandon:
                        self._abandon_batch(batch)
                        return False
                    delay = min(delay * 2, self.cfg.ingest.retry_max_s)
        finally:
            if paused:
                assigned = self.consumer.assignment()
                if assigned:
                    self.consumer.resume(*assigned)
        self._commit(batch)
        self.stats.inserted += len(batch.rows)
        self.stats.rejected += len(batch.rejected)
        self.stats.batches += 1
        self.stats.batch_seconds.append(time.monotonic() - t0)
        m = self.metrics
        m.inserted.inc(len(batch.rows))
        for r in batch.rejected:
            m.dlq.labels(r.reason).inc()
        m.batch_seconds.observe(time.monotonic() - t0)
        m.batch_size.observe(len(batch))
        if len(self.stats.batch_seconds) > 1000:
            del self.stats.batch_seconds[:500]
        self.batch = self._new_batch()
        return True

    def _abandon_batch(self, batch: Batch) -> None:
        """Drop an unwritten batch without committing it. Partitions we still own are rewound to the
        batch's first offsets, since our fetch position is already past those records."""
        log.warning("abandoning uncommitted batch of %d records (they will be read again)", len(batch))
        assigned = self.consumer.assignment()
        for (t, p), first in batch.first_offsets.items():
            tp = TopicPartition(t, p)
            if tp in assigned:
                self.consumer.seek(tp, first)
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
        if len(self.batch):
            self._abandon = True
