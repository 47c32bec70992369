"""Scale-out figures: 1 and 2 `consume` and `detect` processes in one group on 4 partitions.

Backlog throughput: ``n`` events are published first, followed by ``n / 2`` more that are never
waited for, then k processes of one verb start together; each serves Prometheus ``/metrics`` and the
bench scrapes the event counters (detect: ``mailaudit_detect_events_total``, consume:
``mailaudit_ingest_events_inserted_total``). events/s is timed from the first event counted (group
joined) to the first sample counting ``n`` or more, counting only what was done in that time. The
events behind the timed ones keep every batch full up to there: without them a consumer's last,
partial batch waits out ``ingest.batch_time_s`` (1 s) for input that never comes, an idle second
inside the interval of some runs and not others (40,000 events are 8 whole batches for one process;
two processes each end on a remainder). ``busiest_share`` is the share of the events counted that the
busiest process did: one service is one partition, so partitions, and the processes holding them,
are unevenly loaded (the simulator's newsletter service sends over half the mail). CPU per event is
the processes' user+system CPU over the same interval (from /proc), divided
by the events: that is the cost a core pays per event, the figure the multi-host model in
docs/operations.md multiplies out. The per-partition ceiling is 1 / CPU per event of the dearer of
the two verbs (one partition is served by one process of each at a time, and one process uses at
most one core for its Python work). Over the same interval each run also reports the CPU per event of
the stack's ClickHouse and broker (the cost on top of the verb's own, for sizing those servers) and how
busy the machine's cores were (``cpu_busy_pct``): near 100 a second process has no core to run on, so
its events/s say nothing about scaling out.

Alert latency: k detect processes, a steady stream at ``rate`` events/s over 10 services with a
leaking copy of a new campaign every 0.5 s (as bench/latency.py), publish -> ``open`` alert in
``mail.alerts``: p50/p99.

This machine has 2 cores shared with the broker, ClickHouse, the publisher and other users: a second
process cannot add a core that is not there. Every run is listed with the load average around it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from mailaudit import tomlw
from mailaudit.bench.workdir import work_dir
from mailaudit.bench.ingest import _bench_cfg, _events, _publish, machine_jiffies, proc_cpu
from mailaudit.bench.latency import AlertWatcher, _leak, _pct, encoded_stream
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.kafka_io import make_producer
from mailaudit.ingest.schema import migrate
from mailaudit.ingest.topics import create_topics
from mailaudit.stack import LocalStack, free_port

_COUNTER = {"detect": "mailaudit_detect_events_total", "consume": "mailaudit_ingest_events_inserted_total"}


def _cpu_s(pid: int) -> float:
    try:
        return proc_cpu(pid)[1]
    except (OSError, IndexError, ValueError):
        return 0.0


def _sample(procs, info) -> dict:
    """CPU seconds so far of the verb's processes, the stack's ClickHouse and broker; machine jiffies."""
    total, idle = machine_jiffies()
    return {"procs": sum(_cpu_s(p.pid) for p, _ in procs), "clickhouse": _cpu_s(info.clickhouse_pid),
            "broker": _cpu_s(info.kafka_pid), "total": total, "idle": idle}


def interval_cost(a: dict, b: dict, events: float) -> dict:
    """CPU per event over the interval between samples ``a`` and ``b`` (verb processes, ClickHouse,
    broker) and how busy the machine's cores were, in %."""
    if not events:
        return dict.fromkeys(("cpu_us_per_event", "cpu_us_per_event_clickhouse", "cpu_us_per_event_broker",
                              "cpu_busy_pct"))
    per = lambda k: 1e6 * (b[k] - a[k]) / events     # noqa: E731
    total = b["total"] - a["total"]
    return {"cpu_us_per_event": per("procs"), "cpu_us_per_event_clickhouse": per("clickhouse"),
            "cpu_us_per_event_broker": per("broker"),
            "cpu_busy_pct": round(100.0 * (1 - (b["idle"] - a["idle"]) / total), 1) if total else None}


def _scrape(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return 0.0
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _setup(info, state: Path):
    cfg = _bench_cfg(info, uuid.uuid4().hex[:8])
    cfg.kafka.detect_group = cfg.kafka.ingest_group.replace(".ingest", ".detect")
    cfg.state_dir = str(state / f"run-{uuid.uuid4().hex[:8]}")
    create_topics(cfg.kafka)
    migrate(Database(cfg.clickhouse))
    return cfg


def _start(cfg, state: Path, verb: str, k: int) -> list[tuple[subprocess.Popen, int]]:
    out = []
    for i in range(k):
        c = dataclasses.replace(cfg)
        c.state_dir = f"{cfg.state_dir}-{verb}{i}"          # replicas share no volume
        path = state / f"{verb}-{uuid.uuid4().hex[:8]}.toml"
        path.write_text(tomlw.dumps(dataclasses.asdict(c)))
        port = free_port()
        p = subprocess.Popen([sys.executable, "-m", "mailaudit", "--config", str(path), verb, "--log-level", "WARNING",
                              "--metrics-port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out.append((p, port))
    return out


def _stop(procs) -> None:
    for p, _ in procs:
        p.terminate()
    for p, _ in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


def backlog(info, state: Path, msgs, verb: str, k: int, tail=(), timeout_s: float = 300.0,
            batch_time_s: float | None = None) -> dict:
    """``msgs`` timed, ``tail`` published behind them and not waited for (see the module docstring)."""
    cfg = _setup(info, state)
    if batch_time_s is not None:
        cfg.ingest.batch_time_s = batch_time_s
    _publish(cfg, [*msgs, *tail])
    load = [float(x) for x in os.getloadavg()]
    procs = _start(cfg, state, verb, k)
    name = _COUNTER[verb]
    t_first = t_last = None
    n_first = n_last = 0
    cpu_first = cpu_last = None
    per_proc: list[float] = []
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            counts = [_scrape(port, name) for _, port in procs]
            n = sum(counts)
            now = time.monotonic()
            cpu = _sample(procs, info)
            if n and t_first is None:
                t_first, n_first, cpu_first = now, n, cpu
            if n > n_last:
                t_last, n_last, cpu_last, per_proc = now, n, cpu, counts
            if n >= len(msgs):
                break
            time.sleep(0.05)
    finally:
        _stop(procs)
    done = n_last - n_first
    rate = done / (t_last - t_first) if t_first and t_last and t_last > t_first else 0.0
    return {"processes": k, "events_per_s": rate, "events_timed": done, "published": len(msgs) + len(tail),
            "timed_s": t_last - t_first if done else None,
            "busiest_share": round(max(per_proc) / n_last, 3) if n_last else None,
            **interval_cost(cpu_first, cpu_last, done),
            "loadavg_before": load, "loadavg_after": [float(x) for x in os.getloadavg()]}


def alert_latency(info, state: Path, k: int, rate: float, duration_s: float, leak_every_s: float = 0.5) -> dict:
    cfg = _setup(info, state)
    load = [float(x) for x in os.getloadavg()]
    procs = _start(cfg, state, "detect", k)
    watcher = AlertWatcher(cfg.kafka).start()
    arrivals = watcher.arrivals
    producer = make_producer(cfg.kafka, linger_ms=2)
    sent: dict[str, float] = {}
    published = 0
    try:
        # Warm-up until every process has its partitions: a leak on each of several services returns.
        deadline = time.time() + 90
        warm: dict[str, str] = {}
        services = ["newsletter", "billing", "support", "auth", "shipping", "receipts"]
        i = 0
        while time.time() < deadline and not (warm and all(v in arrivals for v in warm.values())):
            for s in services:
                if warm.get(s) not in arrivals:
                    e = dataclasses.replace(_leak(-1 - i, int(time.time() * 1000)), service=s)
                    i += 1
                    warm[s] = e.event_id
                    producer.send(cfg.kafka.topic_events, key=s.encode(), value=e.encode())
            producer.flush()
            time.sleep(1.0)
        start_ms, planned = encoded_stream(22, rate, duration_s, lead_ms=1000)
        late_start_s = round(max(0.0, time.time() - start_ms / 1000.0), 2)
        while time.time() * 1000 < start_ms:
            time.sleep(0.005)
        t0 = start_ms / 1000.0
        next_leak, leaks = t0 + 1.0, 0
        for sent_ms, key, value in planned:
            wait = sent_ms / 1000.0 - time.time()
            if wait > 0.002:
                time.sleep(wait)
            producer.send(cfg.kafka.topic_events, key=key, value=value)
            published += 1
            if time.time() >= next_leak:
                s = services[leaks % len(services)]              # leaks on services of every partition
                e = dataclasses.replace(_leak(leaks, int(time.time() * 1000)), service=s)
                sent[e.event_id] = time.time()
                producer.send(cfg.kafka.topic_events, key=s.encode(), value=e.encode())
                leaks += 1
                next_leak += leak_every_s
        producer.flush()
        elapsed = time.time() - t0
        deadline = time.time() + 30
        while time.time() < deadline and not all(x in arrivals for x in sent):
            time.sleep(0.1)
    finally:
        watcher.stop()
        producer.close()
        _stop(procs)
    lat = [arrivals[x] - t for x, t in sent.items() if x in arrivals]
    return {"processes": k, "rate_target": rate, "rate_achieved": published / elapsed, "leaks": len(sent),
            "late_start_s": late_start_s,
            "alerted": len(lat), "p50_ms": 1000 * _pct(lat, 0.5) if lat else None,
            "p99_ms": 1000 * _pct(lat, 0.99) if lat else None,
            "loadavg_before": load, "loadavg_after": [float(x) for x in os.getloadavg()]}


def _med(rows, key):
    xs = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(xs) if xs else None


def bench_scale(n: int = 40_000, runs: int = 3, rate: float = 2000.0, duration_s: float = 20.0,
                state_dir: str | None = None, info=None) -> dict:
    state, discard = work_dir(state_dir, "mailaudit-scale-")
    stack = None
    if info is None:
        stack = LocalStack(state / "stack", tied=True)
        info = stack.up()
    out: dict = {"events": n, "runs": runs, "partitions": 4}
    try:
        msgs, tail = _events(n, seed=9), _events(n // 2, seed=10)
        out["services"] = len({key for key, _ in msgs})
        for verb in ("consume", "detect"):
            for k in (1, 2):
                rows = [backlog(info, state, msgs, verb, k, tail=tail) for _ in range(runs)]
                out[f"{verb}_{k}"] = {key: _med(rows, key) for key in (
                    "events_per_s", "cpu_us_per_event", "cpu_us_per_event_clickhouse", "cpu_us_per_event_broker",
                    "cpu_busy_pct", "busiest_share")}
                out[f"{verb}_{k}"]["runs"] = rows
        for k in (1, 2):
            rows = [alert_latency(info, state, k, rate, duration_s) for _ in range(runs)]
            out[f"alert_latency_detect_{k}"] = {"rate": rate, "p50_ms": _med(rows, "p50_ms"),
                                                "p99_ms": _med(rows, "p99_ms"), "runs": rows}
    finally:
        if stack is not None:
            stack.down()
        discard()
    cd, cc = out["detect_1"]["cpu_us_per_event"], out["consume_1"]["cpu_us_per_event"]
    if cd and cc:
        out["per_partition_ceiling_msgs_per_s"] = round(1e6 / max(cd, cc))
        out["cores_for_50k_msgs_per_s"] = {"detect": round(50_000 * cd / 1e6, 1), "consume": round(50_000 * cc / 1e6, 1)}
    return out


if __name__ == "__main__":
    print(json.dumps(bench_scale(), indent=2))
