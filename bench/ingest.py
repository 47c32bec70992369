"""Ingest throughput of one consumer process, next to the raw limit measured in the same run.

The raw limit is what the two libraries do with no mailaudit code in between, on the same messages
and the same rows: a bare kafka-python consume of the topic (through a consumer group, committing
every ``batch_size`` records, as the consumer does), and a bare clickhouse-driver columnar insert of
the very rows the consumer writes into tables of the same structure (the same migrations, so the
same materialized view fires, and the address index rows are inserted too). Every side runs on one clock: from the first record received (for
the insert: the first insert sent) to the last commit (the last insert acknowledged).

Each side is timed on a quiet server: before it starts, the bench waits until ClickHouse has no merge
left running from the side before (``quiet_server``; the waits are in each run's output).

The consumer decodes batch N+1 while batch N is being inserted, so its ceiling is the slower of the
two sides: the ratio is end-to-end events/s over ``min(bare consume, bare insert)``. The machine is
shared and noisy: every run is listed with the load average around it, and the figures are medians.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import threading
import time
import uuid
from pathlib import Path

from kafka import TopicPartition

from mailaudit.bench.workdir import work_dir
from mailaudit.config import Config
from mailaudit.ingest.batch import Batch
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.consumer import GC_THRESHOLDS
from mailaudit.ingest.kafka_io import make_consumer, make_producer
from mailaudit.ingest.pool import paused_gc
from mailaudit.ingest.privacy import AddressHasher
from mailaudit.ingest.schema import migrate
from mailaudit.ingest.simulator import Simulator
from mailaudit.ingest.topics import create_topics
from mailaudit.ingest.writer import insert_events
from mailaudit.stack import LocalStack


def _bench_cfg(info, uid: str, partitions: int = 4) -> Config:
    cfg = Config()
    cfg.kafka.bootstrap = info.kafka_bootstrap
    cfg.kafka.topic_events = f"bench{uid}.mail.headers"
    cfg.kafka.topic_dlq = f"bench{uid}.mail.headers.dlq"
    cfg.kafka.topic_alerts = f"bench{uid}.mail.alerts"
    cfg.kafka.topic_control = f"bench{uid}.mail.control"
    cfg.kafka.ingest_group = f"bench{uid}.ingest"
    cfg.kafka.partitions = partitions
    cfg.kafka.session_timeout_ms = 6000
    cfg.kafka.heartbeat_interval_ms = 1000
    cfg.clickhouse.url = f"clickhouse://default:@127.0.0.1:{info.clickhouse_port}/bench_{uid}"
    cfg.privacy.hash_key = uuid.uuid4().hex
    return cfg


def _events(n: int, seed: int) -> list[bytes]:
    sim = Simulator(seed=seed, rate=2000.0)
    out = []
    for e in sim.events(n / 2000.0 * 1.5):
        out.append((e.service.encode(), e.encode()))
        if len(out) >= n:
            break
    return out


def _publish(cfg: Config, msgs) -> None:
    p = make_producer(cfg.kafka, linger_ms=20, batch_size=256 * 1024)
    for key, value in msgs:
        p.send(cfg.kafka.topic_events, key=key, value=value)
    p.flush(120)
    p.close()


def quiet_server(cfg: Config, timeout_s: float = 120.0) -> float:
    """Wait until ClickHouse has no merge running (twice in a row, 0.5 s apart); seconds waited.

    Every side that writes leaves the server merging its parts for tens of seconds afterwards (200,000
    rows arrive as 40 parts per table). The sides run one after another, so without this each one was
    timed while the previous one's merges took a share of the same two cores: the bare insert after a
    consume that writes nothing, the consumer after the bare insert and the in-process consumer."""
    db = Database(cfg.clickhouse)
    t0 = time.monotonic()
    quiet = 0
    try:
        while quiet < 2 and time.monotonic() - t0 < timeout_s:
            busy = db.client.execute("SELECT count() FROM system.merges")[0][0]
            quiet = quiet + 1 if busy == 0 else 0
            if quiet < 2:
                time.sleep(0.5)
    finally:
        db.disconnect()
    return time.monotonic() - t0


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages (the machine is shared: every figure carries them)."""
    return [float(x) for x in os.getloadavg()]


def raw_consume(cfg: Config, n: int, batch_size: int) -> float:
    """msgs/s of a bare kafka-python consume through a consumer group, committing every
    ``batch_size`` records: from the first record received to the last commit."""
    c = make_consumer(cfg.kafka, cfg.kafka.ingest_group + ".bare", [cfg.kafka.topic_events],
                      max_poll_records=cfg.kafka.max_poll_records)
    old_gc = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)     # as `mailaudit consume` runs its loop
    try:
        return _raw_consume(c, n, batch_size, cfg)
    finally:
        gc.set_threshold(*old_gc)
        c.close(autocommit=False)


def _raw_consume(c, n: int, batch_size: int, cfg: Config) -> float:
    got = since_commit = 0
    t0 = t_end = None
    deadline = time.monotonic() + 300
    while got < n and time.monotonic() < deadline:
        recs = c.poll(timeout_ms=1000, max_records=min(cfg.kafka.max_poll_records, batch_size - since_commit))
        if recs and t0 is None:
            t0 = time.perf_counter()
        for rs in recs.values():
            got += len(rs)
            since_commit += len(rs)
        if since_commit >= batch_size or (got >= n and since_commit):
            c.commit()
            t_end = time.perf_counter()
            since_commit = 0
    return got / (t_end - t0) if t0 is not None and t_end and t_end > t0 else 0.0


def _bare_table_db(cfg: Config) -> Database:
    """A second database with the very same migrations (events, its materialized view, the address index)."""
    bare = Config()
    bare.clickhouse.url = cfg.clickhouse.url.rsplit("/", 1)[0] + "/" + Database(cfg.clickhouse).name + "_bare"
    db = Database(bare.clickhouse)
    migrate(db)
    return db


def raw_insert(cfg: Config, msgs, batch_size: int, before_timer=None) -> float:
    """rows/s of bare columnar inserts of the very rows the consumer writes (built beforehand) into a
    table of the same structure: from the first insert sent to the last one acknowledged.
    ``before_timer``: called once the rows are built, right before the clock starts."""
    db = _bare_table_db(cfg)
    hasher = AddressHasher(cfg.require_hash_key())
    batches = []
    for i in range(0, len(msgs), batch_size):
        b = Batch(cfg, hasher, datetime64=db.capabilities.datetime64)
        for j, (key, value) in enumerate(msgs[i:i + batch_size]):
            b.submit(cfg.kafka.topic_events, 0, i + j, 0, key, value)
        b.rows.columns()                 # built beforehand: the timed part is the insert alone
        b.rows.index_columns()
        batches.append(b.rows)
    if before_timer is not None:
        before_timer()
    t0 = time.perf_counter()
    for rows in batches:
        with paused_gc():                # as an ingest worker inserts (its collector is off: ingest.pool)
            insert_events(db, rows)      # events, then the address index: what the consumer writes
    dt = time.perf_counter() - t0
    db.client.execute(f"DROP DATABASE {db.name}")
    return len(msgs) / dt


def _variant(cfg: Config, suffix: str) -> Config:
    """The same topic read by another group into another database (with the same migrations): a
    second end-to-end run over the very same records."""
    import copy

    out = copy.deepcopy(cfg)
    out.kafka.ingest_group = cfg.kafka.ingest_group + suffix
    out.clickhouse.url = cfg.clickhouse.url + suffix
    migrate(Database(out.clickhouse))
    return out


_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid) -> tuple[str, float]:
    """(command name, user + system CPU seconds so far) of a process, from /proc; OSError once it is gone."""
    text = Path(f"/proc/{pid}/stat").read_text()
    comm = text[text.index("(") + 1:text.rindex(")")]
    f = text.rsplit(")", 1)[1].split()
    return comm, (int(f[11]) + int(f[12])) / _TCK


def _cpu_snapshot(consumer) -> dict:
    """CPU seconds so far: the machine's busy/total jiffies, and per role: this process (the consumer's
    loop; the bench's own polling is negligible), its worker processes, ClickHouse, the broker."""
    out = {"consumer": proc_cpu(str(os.getpid()))[1], "workers": 0.0, "clickhouse": 0.0, "broker": 0.0}
    pool = getattr(consumer, "pool", None)
    if pool is not None:
        for pid in pool.pids():
            try:
                out["workers"] += proc_cpu(str(pid))[1]
            except (OSError, ValueError):
                pass
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                comm, cpu = proc_cpu(pid)
            except (OSError, ValueError):
                continue
            if comm.startswith("clickhouse"):
                out["clickhouse"] += cpu
            elif comm.startswith("tansu"):
                out["broker"] += cpu
    out["_total"], out["_idle"] = machine_jiffies()
    return out


def machine_jiffies() -> tuple[int, int]:
    """(all, idle + iowait) jiffies of the machine so far, from /proc/stat: how busy the cores were
    over an interval, i.e. whether a figure was measured with a core to spare."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(f), f[3] + f[4]


def _cpu_per_event(a: dict, b: dict, n: int) -> dict:
    """µs of CPU per event by role over the timed interval, and how busy the machine's cores were."""
    out = {f"cpu_us_per_event_{k}": 1e6 * (b[k] - a[k]) / n for k in a if not k.startswith("_") and n}
    total = b["_total"] - a["_total"]
    out["cpu_busy_pct"] = 100.0 * (1 - (b["_idle"] - a["_idle"]) / total) if total else None
    return out


def end_to_end(cfg: Config, n: int) -> dict:
    """One IngestConsumer (through its consumer group) until every row is in ClickHouse; with
    ``cfg.ingest.workers`` its worker processes (spawned, warmed up, before the clock starts)."""
    from mailaudit.ingest.consumer import IngestConsumer

    db = Database(cfg.clickhouse)
    consumer = IngestConsumer(cfg)
    th = threading.Thread(target=consumer.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 600
    cpu0 = cpu1 = None
    while consumer.stats.inserted + consumer.stats.rejected < n and time.monotonic() < deadline:
        if cpu0 is None and consumer.stats.first_record_at is not None:
            cpu0 = _cpu_snapshot(consumer)
        time.sleep(0.05)
    if cpu0 is not None:
        cpu1 = _cpu_snapshot(consumer)       # before the workers stop: their CPU is still readable
    consumer.stop_event.set()
    th.join(60)
    s = consumer.stats
    dt = (s.last_commit_at or time.monotonic()) - (s.first_record_at or time.monotonic())
    stored = db.execute("SELECT count() FROM {db}.events")[0][0]
    lat = sorted(s.batch_seconds)
    cpu = _cpu_per_event(cpu0, cpu1, s.inserted) if cpu0 and cpu1 else {}
    return {
        "events_per_s": s.inserted / dt if dt > 0 else 0.0,
        "stored": stored,
        **cpu,
        "batches": s.batches,
        "batch_write_p50_ms": 1000 * lat[len(lat) // 2] if lat else None,
        "batch_write_p99_ms": 1000 * lat[int(len(lat) * 0.99)] if lat else None,
    }


def bytes_per_event(cfg: Config) -> float:
    db = Database(cfg.clickhouse)
    db.execute("OPTIMIZE TABLE {db}.events FINAL")
    b, rows = db.execute(
        "SELECT sum(bytes_on_disk), sum(rows) FROM system.parts WHERE database = %(d)s AND table = 'events' AND active",
        {"d": db.name})[0]
    return b / rows if rows else 0.0


def bytes_per_event_modern(msgs, hash_key: str) -> float:
    """The same rows in chdb (ClickHouse 26.x) with the modern DDL: codecs, LowCardinality."""
    from mailaudit.bench.chdb_client import chdb_database

    db = chdb_database("bench_modern")
    migrate(db)
    cfg = Config()
    cfg.privacy.hash_key = hash_key
    hasher = AddressHasher(cfg.require_hash_key())
    for i in range(0, len(msgs), 5000):
        b = Batch(cfg, hasher, datetime64=True)
        for j, (key, value) in enumerate(msgs[i:i + 5000]):
            b.submit("t", 0, i + j, 0, key, value)
        db.insert("events", b.rows.columns())
    db.execute("OPTIMIZE TABLE {db}.events FINAL")
    b, rows = db.execute("SELECT sum(bytes_on_disk), sum(rows) FROM system.parts "
                         "WHERE database = 'bench_modern' AND table = 'events' AND active")[0]
    return b / rows if rows else 0.0


def scaling(info, msgs, processes: int, batch_size: int) -> float:
    """events/s of ``processes`` `mailaudit consume` processes sharing 4 partitions (one group): from
    the first rows stored to the last, counting only what was stored in that time (a run that hits
    the deadline is divided by what it did, not by what it was given)."""
    import dataclasses
    import subprocess
    import sys

    from mailaudit import tomlw

    cfg = _bench_cfg(info, uuid.uuid4().hex[:8])
    cfg.ingest.batch_size = batch_size
    create_topics(cfg.kafka)
    db = Database(cfg.clickhouse)
    migrate(db)
    _publish(cfg, msgs)
    cfg_dir, discard_cfg = work_dir(None, "mailaudit-bench-cfg-")
    path = cfg_dir / "c.toml"
    path.write_text(tomlw.dumps(dataclasses.asdict(cfg)))
    path.chmod(0o600)                    # it holds the hash key
    procs = [subprocess.Popen([sys.executable, "-m", "mailaudit", "--config", str(path), "consume", "--log-level", "WARNING"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(processes)]
    t_first = t_last = None
    n_first = n_last = 0
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            n = db.execute("SELECT count() FROM {db}.events")[0][0]
            now = time.monotonic()
            if n and t_first is None:
                t_first, n_first = now, n      # group joined, first batch in: start the clock here
            if n > n_last:
                t_last, n_last = now, n
            if n >= len(msgs):
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        discard_cfg()
    return (n_last - n_first) / (t_last - t_first) if t_first and t_last and t_last > t_first else 0.0


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def bench_ingest(n: int = 50_000, runs: int = 3, state_dir: str | None = None, batch_size: int = 5000,
                 info=None, scaling_runs: int | None = None, workers: int = 2) -> dict:
    """``info``: run on these servers (a ``StackInfo``) instead of starting a local stack.
    ``workers``: the headline end-to-end figure is one consumer with this many worker processes
    (``ingest.workers``); the in-process consumer (``workers = 0``) is measured beside it in every run."""
    stack = None
    discard = lambda: None     # noqa: E731
    if info is None:
        state, discard = work_dir(state_dir, "mailaudit-bench-")
        stack = LocalStack(state / "stack", tied=True)
        info = stack.up()
    per_run = []
    scale_runs: dict[str, list] = {"1_process": [], "2_process": []}
    try:
        msgs = _events(n, seed=7)
        for _ in range(runs if scaling_runs is None else scaling_runs):
            for k in (1, 2):
                load = loadavg()
                scale_runs[f"{k}_process"].append({"events_per_s": scaling(info, msgs, k, batch_size),
                                                   "loadavg_before": load, "loadavg_after": loadavg()})
        for r in range(runs):
            cfg = _bench_cfg(info, uuid.uuid4().hex[:8])
            cfg.ingest.batch_size = batch_size
            create_topics(cfg.kafka)
            migrate(Database(cfg.clickhouse))
            _publish(cfg, msgs)
            load = loadavg()
            waits = [quiet_server(cfg)]
            consume = raw_consume(cfg, len(msgs), batch_size)
            insert = raw_insert(cfg, msgs, batch_size, before_timer=lambda: waits.append(quiet_server(cfg)))
            waits.append(quiet_server(cfg))
            e2e_in = end_to_end(cfg, len(msgs))
            e2e = e2e_in
            if workers:
                wcfg = _variant(cfg, "_w")
                wcfg.ingest.workers = workers
                waits.append(quiet_server(cfg))
                e2e = end_to_end(wcfg, len(msgs))
            ceiling = min(consume, insert)
            per_run.append({
                "events_per_s": e2e["events_per_s"],
                "events_per_s_in_process": e2e_in["events_per_s"],
                **{k: v for k, v in e2e.items() if k.startswith("cpu_")},
                "ratio_in_process": e2e_in["events_per_s"] / ceiling if ceiling else None,
                "raw_consume_msgs_per_s": consume,
                "raw_insert_rows_per_s": insert,
                "raw_limit_events_per_s": ceiling,
                "ratio": e2e["events_per_s"] / ceiling if ceiling else None,
                "ratio_vs_sequential_limit": e2e["events_per_s"] * (1.0 / consume + 1.0 / insert) if consume and insert else None,
                "stored": e2e["stored"],
                "batch_write_p50_ms": e2e["batch_write_p50_ms"],
                "batch_write_p99_ms": e2e["batch_write_p99_ms"],
                "bytes_per_event_on_disk_18_16": bytes_per_event(cfg),
                "loadavg_before": load,
                "loadavg_after": loadavg(),
                "quiet_server_waits_s": [round(w, 1) for w in waits],
            })
    finally:
        if stack is not None:
            stack.down()
        discard()
    keys = [k for k in per_run[0] if isinstance(per_run[0][k], (int, float))]
    result = {k: _median(r[k] for r in per_run) for k in keys}
    result["bytes_per_event_on_disk_modern_chdb"] = bytes_per_event_modern(msgs, uuid.uuid4().hex)
    result["scaling_events_per_s"] = {k: _median(r["events_per_s"] for r in v) for k, v in scale_runs.items()}
    result["scaling_runs"] = scale_runs
    result["services"] = len({k for k, _ in msgs})
    result.update({"events": len(msgs), "runs": runs, "batch_size": batch_size, "workers": workers,
                   "raw_limit_definition": "min(bare consume, bare insert): decode and insert overlap, so the slower "
                                           "side is the ceiling; every side timed from the first record received "
                                           "to the last commit, on the same table structure, each started once "
                                           "ClickHouse has no merge left running from the side before",
                   "per_run": per_run})
    return result


if __name__ == "__main__":
    print(json.dumps(bench_ingest(), indent=2))
