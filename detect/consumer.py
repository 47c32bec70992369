"""`mailaudit detect`: the detection consumer, its own consumer group on ``mail.headers``.

Detection never waits on storage and storage never waits on detection: this group reads the same
events as the ingest group, runs the pure ``DetectionEngine`` on event time, and appends what it
produces (alerts, exposure rows, hold commands) to a local outbox that sink workers deliver to
ClickHouse, ``mail.alerts`` and the webhook at their own pace.

Restart without an alert flood: every ``commit_interval_s`` (10 s: alerts never wait for it, it only
bounds how much is re-read after a crash, and pickling the state costs ~0.1-0.4 s) the engine state and the read positions
are checkpointed together (atomically, in the state dir) and then the offsets are committed. On start
the checkpoint is loaded and each partition it knows is re-read from the checkpoint position, so the
state matches the input exactly; alert ids are deterministic, so the few alerts that may be produced
twice around a crash carry the same ids and collapse in the sinks.

Live sources: once a second, when the consumer is caught up, the engine's watermark is advanced to
``now - lateness`` for every service, so a quiet service still closes its windows and resolves its
incidents while others are busy.
"""

from __future__ import annotations

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
from mailaudit.detect.containment import ContainmentPolicy
from mailaudit.detect.engine import DetectionEngine
from mailaudit.detect.outbox import Outbox
from mailaudit.detect.sinks import ClickHouseSink, KafkaSink, SinkWorker, WebhookSink
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.kafka_io import make_consumer, make_producer
from mailaudit.ingest.metrics import DetectMetrics, update_lag
from mailaudit.ingest.parsed import parse_event
from mailaudit.ingest.privacy import AddressHasher
from mailaudit.ingest.wire import MalformedEvent, decode_event

log = logging.getLogger("mailaudit.detect")

_ENVELOPE_CACHE = 200_000


def wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class DetectStats:
    events: int = 0
    malformed: int = 0
    alerts: int = 0
    holds: int = 0
    exposure_rows: int = 0
    commits: int = 0


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner: "DetectConsumer"):
        self.owner = owner

    def on_partitions_revoked(self, revoked):
        # May run on kafka-python's IO thread, where nothing may block: the loop checkpoints and
        # commits at its next turn; what the next owner re-reads yields the same alert ids.
        self.owner._revoked = True

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
        self.engine = DetectionEngine(cfg.detect, clock=clock, hasher=self.hasher)
        self.policy = ContainmentPolicy(cfg.detect.containment)
        group = cfg.kafka.detect_group
        base = Path(cfg.detect.checkpoint_dir) if cfg.detect.checkpoint_dir else Path(cfg.state_dir) / "detect"
        self.dir = base / "".join(c if c.isalnum() or c in "-._" else "_" for c in group)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.consumer = consumer or make_consumer(cfg.kafka, group, fetch_max_wait_ms=cfg.kafka.fetch_max_wait_ms)
        self.producer = producer or make_producer(cfg.kafka)
        self.db = db or Database(cfg.clickhouse)
        sinks = [ClickHouseSink(self.db), KafkaSink(cfg, self.producer)]
        if cfg.webhook.url:
            sinks.append(WebhookSink(cfg.webhook))
        self.outbox = Outbox(self.dir / "outbox", [s.name for s in sinks])
        self.workers = [SinkWorker(self.outbox, s) for s in sinks]
        self.stop_event = stop_event or threading.Event()
        self.commit_interval_s = commit_interval_s
        self.stats = DetectStats()
        self._positions: dict[tuple[str, int], int] = {}
        self._checkpoint_positions: dict[tuple[str, int], int] = {}
        self._last_commit = time.monotonic()
        self._advanced_at = 0.0
        self._revoked = False
        # Copies that may leak: event_id -> (service, campaign, envelope hashes), to say "to whom".
        self._envelopes: OrderedDict[str, tuple[str, str, list[str]]] = OrderedDict()
        self._load_checkpoint()

    # -- checkpoint ------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoint.json"

    def _load_checkpoint(self) -> None:
        try:
            doc = json.loads(self.checkpoint_path.read_text())
        except (OSError, ValueError):
            return
        try:
            self.engine.load_state(doc["engine"])
        except Exception as e:  # noqa: BLE001 - a bad checkpoint means a cold start, not a crash
            log.warning("ignoring unreadable checkpoint %s: %s", self.checkpoint_path, e)
            return
        self._checkpoint_positions = {(t, int(p)): o for t, p, o in doc.get("positions", [])}
        self._positions = dict(self._checkpoint_positions)
        log.info("resumed from checkpoint at %s", sorted(self._checkpoint_positions.items()))

    def _on_assigned(self, assigned) -> None:
        for tp in assigned:
            pos = self._checkpoint_positions.get((tp.topic, tp.partition))
            if pos is not None:
                self.consumer.seek(tp, pos)

    def checkpoint_and_commit(self) -> None:
        """Engine state + positions to disk (atomically), then the same positions to Kafka."""
        if not self._positions:
            return
        doc = {"engine": self.engine.state_dict(),
               "positions": [[t, p, o] for (t, p), o in sorted(self._positions.items())]}
        tmp = self.checkpoint_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.checkpoint_path)
        self._checkpoint_positions = dict(self._positions)
        assigned = self.consumer.assignment()
        offsets = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in self._positions.items()
                   if TopicPartition(t, p) in assigned}
        if offsets:
            try:
                self.consumer.commit(offsets)
                self.stats.commits += 1
            except Exception as e:  # noqa: BLE001 - the checkpoint holds the truth; retry next time
                log.warning("offset commit failed: %s", e)
        self._last_commit = time.monotonic()

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
        self.consumer.subscribe([self.cfg.kafka.topic_events], listener=_Listener(self))
        self.start_sinks()
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        try:
            while not self.stop_event.is_set() and (deadline is None or time.monotonic() < deadline):
                self.poll_once()
            self.checkpoint_and_commit()
        finally:
            self.close()
        return self.stats

    def poll_once(self, timeout_ms: int = 100) -> None:
        max_records = self.cfg.kafka.max_poll_records
        records = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        alerts = []
        n = 0
        for tp, recs in records.items():
            for r in recs:
                alerts.extend(self._process(r.value))
            n += len(recs)
            self._positions[(tp.topic, tp.partition)] = recs[-1].offset + 1
        # Live sources: once we have read everything there is (no lag on any assigned partition),
        # no event older than now - lateness is still to come. While catching up on a backlog the
        # wall clock says nothing about what is unread, so the watermark moves with the events.
        if n < max_records and time.monotonic() - self._advanced_at >= 1.0:
            self._advanced_at = time.monotonic()
            if self._caught_up():
                alerts.extend(self.engine.advance(self.clock() - int(self.cfg.detect.lateness_s * 1000)))
        self._emit(alerts)
        if self._revoked or time.monotonic() - self._last_commit >= self.commit_interval_s:
            self._revoked = False
            self.checkpoint_and_commit()
        if time.monotonic() - self._metrics_at > 5.0:
            self._metrics_at = time.monotonic()
            self._refresh_gauges()

    def _refresh_gauges(self) -> None:
        update_lag(self.metrics.lag, self.consumer)
        for w in self.workers:
            self.metrics.outbox_backlog.labels(w.sink.name).set(self.outbox.backlog(w.sink.name))
            new = w.failures - self._reported_failures.get(w.sink.name, 0)
            if new:
                self.metrics.sink_failures.labels(w.sink.name).inc(new)
                self._reported_failures[w.sink.name] = w.failures

    def _caught_up(self) -> bool:
        try:
            assigned = list(self.consumer.assignment())
            if not assigned:
                return False
            ends = self.consumer.end_offsets(assigned)
            return all(self.consumer.position(tp) >= ends.get(tp, 0) for tp in assigned)
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
            self._envelopes[event.event_id] = (event.service, event.campaign or event.template or "",
                                               [self.hasher.hash(a) for a in parsed.envelope])
            if len(self._envelopes) > _ENVELOPE_CACHE:
                self._envelopes.popitem(last=False)
        return self.engine.process(event, parsed)

    def _emit(self, alerts) -> None:
        out = []
        for a in alerts:
            control = self.policy.apply(a)
            out.append({"type": "alert", "alert": a.to_dict()})
            self.metrics.alerts.labels(a.kind, a.severity, a.status).inc()
            if control:
                out.append(control)
                self.stats.holds += 1
                self.metrics.holds.inc()
        self.stats.alerts += len(alerts)
        out.extend(self._exposure_records())
        if out:
            self.outbox.append(out)

    def _exposure_records(self) -> list[dict]:
        rows = self.engine.take_exposures()
        if not rows:
            return []
        by_copy: dict[tuple[str, str], dict] = {}
        for r in rows:
            rec = by_copy.get((r.incident_id, r.event_id))
            if rec is None:
                service, campaign, recipients = self._envelopes.get(r.event_id, ("", "", []))
                rec = by_copy[(r.incident_id, r.event_id)] = {
                    "incident_id": r.incident_id, "event_id": r.event_id, "sent_ms": r.sent_at_ms,
                    "service": service, "campaign": campaign, "key_id": r.key_id,
                    "exposed_hashes": [], "exposed_masked": [], "exposed_domains": [],
                    "recipient_hashes": recipients,
                }
            rec["exposed_hashes"].append(r.address_hash)
            rec["exposed_masked"].append(r.address_masked)
            rec["exposed_domains"].append(r.domain)
        self.stats.exposure_rows += len(rows)
        return [{"type": "exposure", "row": rec} for rec in by_copy.values()]

    def drain_sinks(self, timeout: float = 30.0) -> bool:
        return all(w.drain(timeout) for w in self.workers)

    def close(self) -> None:
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
