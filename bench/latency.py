"""Publish → alert-in-sink latency of the live detector at a steady rate.

A steady simulator stream (no daily rhythm) is published at ``rate`` events/s, paced in 10 ms ticks,
for ``duration_s``; every ``leak_every_s`` one leaking copy of a *new* campaign is slipped in (a
concatenated To: it must alert on that very copy), so each run yields many independent samples.
The detector runs as its own process (``mailaudit detect``), exactly as deployed; a watcher reads
``mail.alerts`` (the Kafka sink) and stamps each ``open`` alert's arrival. Latency = arrival time -
the time the trigger event was handed to the producer. Only the detector runs (no ingest consumer),
so the figure is detection's own; both share the machine's 2 cores with the publisher.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from kafka import TopicPartition

from mailaudit import tomlw
from mailaudit.config import Config
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.kafka_io import make_consumer, make_producer
from mailaudit.ingest.schema import migrate
from mailaudit.ingest.simulator import Simulator
from mailaudit.ingest.topics import create_topics
from mailaudit.ingest.wire import Event
from mailaudit.stack import LocalStack


def _leak(i: int, now_ms: int) -> Event:
    victims = [f"victim{i}.{j}@example.org" for j in range(40)]
    return Event(event_id=str(uuid.uuid4()), sent_at_ms=now_ms, service="newsletter",
                 message_id=f"<leak{i}.{uuid.uuid4().hex[:8]}@mailer.example.com>",
                 from_="News <news@shop.example>", to=", ".join(victims), envelope_to=[victims[0]],
                 campaign=f"bench-leak-{i}", template="weekly")


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _one_rate(info, state: Path, rate: float, duration_s: float, leak_every_s: float) -> dict:
    uid = uuid.uuid4().hex[:8]
    cfg = Config()
    cfg.kafka.bootstrap = info.kafka_bootstrap
    for name in ("topic_events", "topic_dlq", "topic_alerts", "topic_control"):
        setattr(cfg.kafka, name, f"lat{uid}." + getattr(cfg.kafka, name))
    cfg.kafka.detect_group = f"lat{uid}.detect"
    cfg.kafka.session_timeout_ms = 6000
    cfg.kafka.heartbeat_interval_ms = 1000
    cfg.clickhouse.url = f"clickhouse://default:@127.0.0.1:{info.clickhouse_port}/lat_{uid}"
    cfg.privacy.hash_key = uuid.uuid4().hex
    cfg.state_dir = str(state / f"run-{uid}")
    create_topics(cfg.kafka)
    migrate(Database(cfg.clickhouse))
    path = state / f"lat-{uid}.toml"
    path.write_text(tomlw.dumps(dataclasses.asdict(cfg)))

    det = subprocess.Popen([sys.executable, "-m", "mailaudit", "--config", str(path), "detect", "--log-level", "WARNING"],
                           stdout=subprocess.DEVNULL, stderr=open(state / f"detect-{uid}.log", "wb"))
    arrivals: dict[str, float] = {}
    stop = threading.Event()

    def watch():
        c = make_consumer(cfg.kafka, None, fetch_max_wait_ms=20)
        c.assign([TopicPartition(cfg.kafka.topic_alerts, 0)])
        while not stop.is_set():
            for recs in c.poll(timeout_ms=50).values():
                t = time.time()
                for r in recs:
                    a = json.loads(r.value)
                    if a["status"] == "open":
                        arrivals.setdefault(a["trigger_event_id"], t)
        c.close()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    producer = make_producer(cfg.kafka, linger_ms=2)
    sent: dict[str, float] = {}
    try:
        # Warm-up: the detector's group join; wait until a first leak comes back.
        warm = _leak(-1, int(time.time() * 1000))
        deadline = time.time() + 60
        while warm.event_id not in arrivals and time.time() < deadline:
            producer.send(cfg.kafka.topic_events, key=b"newsletter", value=warm.encode())
            producer.flush()
            time.sleep(1.0)
            warm = _leak(-1, int(time.time() * 1000)) if warm.event_id not in arrivals else warm
        # Pre-encode the stream (event time = its planned send time) so pacing costs little.
        start_ms = int(time.time() * 1000) + 2000
        sim = Simulator(seed=21, rate=rate, rhythm=False, burst=1.0, start_ms=start_ms)
        planned = []
        for e in sim.events(duration_s):
            planned.append((e.sent_at_ms, e.service.encode(), e.encode()))
        while time.time() * 1000 < start_ms:
            time.sleep(0.005)
        t0 = start_ms / 1000.0
        next_leak = t0 + 1.0
        leaks = 0
        published = 0
        for sent_ms, key, value in planned:
            wait = sent_ms / 1000.0 - time.time()
            if wait > 0.002:
                time.sleep(wait)
            producer.send(cfg.kafka.topic_events, key=key, value=value)
            published += 1
            if time.time() >= next_leak:
                leak = _leak(leaks, int(time.time() * 1000))
                sent[leak.event_id] = time.time()
                producer.send(cfg.kafka.topic_events, key=b"newsletter", value=leak.encode())
                leaks += 1
                next_leak += leak_every_s
        elapsed = time.time() - t0
        producer.flush()
        deadline = time.time() + 30
        while time.time() < deadline and not all(k in arrivals for k in sent):
            time.sleep(0.1)
    finally:
        stop.set()
        watcher.join(5)
        producer.close()
        det.terminate()
        try:
            det.wait(30)
        except subprocess.TimeoutExpired:
            det.kill()
    lat = [arrivals[k] - t for k, t in sent.items() if k in arrivals]
    return {
        "rate_target": rate,
        "rate_achieved": published / elapsed,
        "leaks": len(sent),
        "alerted": len(lat),
        "p50_ms": 1000 * _pct(lat, 0.5) if lat else None,
        "p99_ms": 1000 * _pct(lat, 0.99) if lat else None,
        "max_ms": 1000 * max(lat) if lat else None,
    }


def bench_latency(rates=(1000, 2000, 5000, 8000), duration_s: float = 60.0, leak_every_s: float = 0.5, runs: int = 1,
                  state_dir: str | None = None, plot: str | None = None) -> dict:
    """Latency per offered rate; ``plot``: write p50/p99 vs rate as a PNG there."""
    state = Path(state_dir or tempfile.mkdtemp(prefix="mailaudit-lat-"))
    stack = LocalStack(state / "stack")
    info = stack.up()
    results = []
    try:
        for rate in rates:
            per = [_one_rate(info, state, float(rate), duration_s, leak_every_s) for _ in range(runs)]
            med = {k: statistics.median(r[k] for r in per if r[k] is not None)
                   for k in ("rate_achieved", "p50_ms", "p99_ms", "max_ms") if any(r[k] is not None for r in per)}
            results.append({"rate_target": rate, **med, "leaks": sum(r["leaks"] for r in per),
                            "alerted": sum(r["alerted"] for r in per), "runs": per})
    finally:
        stack.down()
    out = {"duration_s": duration_s, "leak_every_s": leak_every_s, "by_rate": results}
    ok = [r["rate_target"] for r in results if r.get("p99_ms") is not None and r["p99_ms"] < 1000
          and r.get("rate_achieved", 0) >= 0.95 * r["rate_target"]]
    out["highest_rate_with_p99_under_1s"] = max(ok) if ok else None
    if plot:
        from mailaudit.bench.plot import line_plot

        line_plot(plot, {q: [(r["rate_achieved"], r[f"{q}_ms"]) for r in results if r.get(f"{q}_ms") is not None]
                         for q in ("p50", "p99")},
                  "publish -> alert in mail.alerts latency (ms) vs events/s, detector on 2 shared cores",
                  "events/s published", "ms", hline=(1000.0, "p99 target 1 s"))
        out["plot"] = plot
    return out


if __name__ == "__main__":
    print(json.dumps(bench_latency(), indent=2))
