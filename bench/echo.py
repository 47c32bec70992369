"""The latency bench's transport baseline: its reader with no detection in it.

``mailaudit bench latency --baseline`` runs this process where it would run ``mailaudit detect``. It
joins the detector's consumer group with the detector's consumer settings, and for each leak copy
(the bench's marker in the Message-ID) publishes an ``open`` record to the alert topic at once, the
way the detector's Kafka sink would. The watcher times it exactly as it times the detector, so
what this measures is the floor under any detector on the same broker, client and machine: publish,
broker, fetch, produce, fetch again. The detector's own share is what it adds to this.

Why it exists: on this project's test broker (tansu, in-memory storage) a fetch costs more as the
partition's log grows (``bench/broker_probe.py``), so at 5,000 events/s the transport's own latency
grows over a run (p99 ~0.6 s after 3 minutes here). Apache Kafka's fetch does not grow that way;
without this baseline the latency figure could not say which part is the detector's. It must read
exactly as the detector reads (``make_detect_consumer``): with kafka-python's default 500 ms fetch
wait instead, it had a p99 of 1.4-2.5 s and made the detector look faster than the transport.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time

from mailaudit.config import load_config
from mailaudit.detect.consumer import make_detect_consumer
from mailaudit.ingest.kafka_io import make_producer

LEAK_MARK = b'"message_id":"<leak'      # bench.latency._leak's Message-ID, as the wire encoding writes it


def _burn(cpu_s: float) -> None:
    """Spend ``cpu_s`` of this thread's CPU (not wall time: a descheduled spin would burn less)."""
    end = time.thread_time() + cpu_s
    while time.thread_time() < end:
        pass


def run(cfg, stop: threading.Event, burn_us: float = 0.0) -> int:
    """Echo leak copies until ``stop``; returns how many were echoed. ``burn_us``: CPU to spend per
    record before echoing (a diagnostic: does the detector's CPU alone explain its extra latency?)."""
    consumer = make_detect_consumer(cfg, [cfg.kafka.topic_events])
    producer = make_producer(cfg.kafka)
    echoed = 0
    try:
        while not stop.is_set():
            out = []
            for recs in consumer.poll(timeout_ms=100, max_records=cfg.kafka.max_poll_records).values():
                if burn_us:
                    _burn(len(recs) * burn_us / 1e6)
                for r in recs:
                    if r.value and LEAK_MARK in r.value:
                        ev = json.loads(r.value)
                        out.append({"status": "open", "kind": "transport_echo", "service": ev["service"],
                                    "trigger_event_id": ev["event_id"], "incident_id": ev["event_id"]})
            for a in out:
                producer.send(cfg.kafka.topic_alerts, key=a["incident_id"].encode(),
                              value=json.dumps(a, separators=(",", ":")).encode())
            if out:
                producer.flush(timeout=30)
                echoed += len(out)
    finally:
        producer.close()
        consumer.close()
    return echoed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mailaudit.bench.echo", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="the TOML config the latency bench wrote for this run")
    p.add_argument("--burn-us", type=float, default=0.0, help="CPU microseconds to spend per record (diagnostic)")
    args = p.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    run(load_config(args.config), stop, args.burn_us)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
