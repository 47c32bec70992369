"""Where the live detector's time goes at a steady rate (issue 16: profile before optimising).

A publisher process sends simulator traffic at ``rate`` events/s for ``duration_s``; the detector
(``DetectConsumer``, the code `mailaudit detect` runs) polls in this process's main thread under
cProfile. The report splits the loop's wall time into its stages, as cumulative time of the
functions that implement them: Kafka fetch (``poll``, record parsing in kafka-python included),
decode, header parsing, address hashing, the engine (rules, state), the outbox append, the checkpoint
and offset commit, and the "caught up?" probe that lets the wall clock advance the watermark.
cProfile inflates Python-heavy stages by a similar factor, so the shares are what to read.
"""

from __future__ import annotations

import cProfile
import dataclasses
import json
import os
import pstats
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from mailaudit import tomlw
from mailaudit.bench.workdir import work_dir
from mailaudit.config import Config
from mailaudit.ingest.clickhouse import Database
from mailaudit.ingest.schema import migrate
from mailaudit.ingest.topics import create_topics
from mailaudit.stack import LocalStack

# Stage -> functions whose cumulative time is that stage, as (file suffix, function name).
STAGES = {
    "kafka_fetch": [("kafka/consumer/group.py", "poll")],
    "decode": [("ingest/wire.py", "decode_event")],
    "parse": [("ingest/parsed.py", "parse_event")],
    "hash": [("ingest/privacy.py", "hash")],
    "engine": [("detect/engine.py", "process"), ("detect/engine.py", "advance")],
    "outbox": [("detect/consumer.py", "_emit")],
    # on the loop: the snapshot, and the offset commit once the checkpoint thread stored it
    "checkpoint_commit": [("detect/consumer.py", "_start_checkpoint"), ("detect/consumer.py", "_finish_checkpoint")],
    "caught_up_probe": [("detect/consumer.py", "_caught_up")],
}

_PUBLISH = r"""
import sys, time
from mailaudit.config import Config
from mailaudit.ingest.kafka_io import make_producer
from mailaudit.ingest.simulator import Simulator
bootstrap, topic, rate, duration = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
cfg = Config(); cfg.kafka.bootstrap = bootstrap
# Start after the encoding (1.5x the first second's, timed): a start already past makes the pacing
# below send the overdue seconds at once, a burst well over the offered rate.
t_cal = time.time()
for e in Simulator(seed=5, rate=rate, rhythm=False, burst=1.0, start_ms=0).events(min(1.0, duration)):
    e.encode()
start_ms = int(time.time() * 1000) + 1000 + int(1500 * (time.time() - t_cal) / min(1.0, duration) * duration)
planned = [(e.sent_at_ms, e.service.encode(), e.encode())
           for e in Simulator(seed=5, rate=rate, rhythm=False, burst=1.0, start_ms=start_ms).events(duration)]
p = make_producer(cfg.kafka, linger_ms=2)
for ms, k, v in planned:
    w = ms / 1000.0 - time.time()
    if w > 0.002:
        time.sleep(w)
    p.send(topic, key=k, value=v)
p.flush(); p.close()
print(len(planned))
"""


def _stage_seconds(stats: pstats.Stats) -> dict[str, float]:
    out = {k: 0.0 for k in STAGES}
    for (path, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
        for stage, fns in STAGES.items():
            if any(path.endswith(suffix) and name == fn for suffix, fn in fns):
                out[stage] += ct
    return out


def profile_detector(info, rate: float = 5000.0, duration_s: float = 30.0, state: Path | None = None) -> dict:
    state = state or Path(tempfile.mkdtemp(prefix="mailaudit-prof-"))
    uid = uuid.uuid4().hex[:8]
    cfg = Config()
    cfg.kafka.bootstrap = info.kafka_bootstrap
    for name in ("topic_events", "topic_dlq", "topic_alerts", "topic_control"):
        setattr(cfg.kafka, name, f"prof{uid}." + getattr(cfg.kafka, name))
    cfg.kafka.detect_group = f"prof{uid}.detect"
    cfg.clickhouse.url = f"clickhouse://default:@127.0.0.1:{info.clickhouse_port}/prof_{uid}"
    cfg.privacy.hash_key = uuid.uuid4().hex
    cfg.state_dir = str(state / f"run-{uid}")
    create_topics(cfg.kafka)
    migrate(Database(cfg.clickhouse))

    from mailaudit.detect.consumer import DetectConsumer

    det = DetectConsumer(cfg)
    det.consumer.subscribe([cfg.kafka.topic_events])
    det.start_sinks()
    while not det.consumer.assignment():           # join the group before the traffic starts
        det.consumer.poll(timeout_ms=100)
    pub = subprocess.Popen([sys.executable, "-c", _PUBLISH, cfg.kafka.bootstrap, cfg.kafka.topic_events,
                            str(rate), str(duration_s)], stdout=subprocess.PIPE, text=True)
    load_before = [float(x) for x in os.getloadavg()]
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    prof.enable()
    try:
        while pub.poll() is None or det.stats.events < _published(pub):
            det.poll_once()
            if time.perf_counter() - t0 > duration_s + 120:
                break
    finally:
        prof.disable()
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    det.stop_event.set()
    det.close()
    stats = pstats.Stats(prof)
    stages = _stage_seconds(stats)
    loop = sum(ct for (p, _l, n), (_a, _b, _c, ct, _d) in stats.stats.items()
               if p.endswith("detect/consumer.py") and n == "poll_once")
    return {
        "rate": rate, "duration_s": duration_s, "events": det.stats.events, "wall_s": wall,
        "process_cpu_s": cpu, "loop_s": loop,
        "stage_s": stages, "stage_share_of_loop": {k: v / loop for k, v in stages.items()} if loop else {},
        "stage_us_per_event": {k: 1e6 * v / max(1, det.stats.events) for k, v in stages.items()},
        "loadavg_before": load_before, "loadavg_after": [float(x) for x in os.getloadavg()],
    }


_published_n: dict[int, int] = {}


def _published(pub: subprocess.Popen) -> int:
    """Events the publisher sent (known once it exited; until then: unbounded)."""
    if pub.pid not in _published_n:
        if pub.poll() is None:
            return 1 << 62
        _published_n[pub.pid] = int(pub.stdout.read().strip() or 0)
    return _published_n[pub.pid]


def bench_detect_profile(rate: float = 5000.0, duration_s: float = 30.0, info=None, state_dir: str | None = None) -> dict:
    state, discard = work_dir(state_dir, "mailaudit-prof-")
    stack = None
    if info is None:
        stack = LocalStack(state / "stack", tied=True)
        info = stack.up()
    try:
        return profile_detector(info, rate, duration_s, state)
    finally:
        if stack is not None:
            stack.down()
        discard()


def gc_pauses(duration_s: float = 150.0, thresholds: tuple[int, int, int] | None = None, rate: float = 5000.0,
              checkpoint_every_s: float = 10.0) -> dict:
    """The cyclic collector's pauses, by generation, while the latency bench's stream (its simulator seed,
    a leak every 0.5 s) goes through the four partitions' engines in-process, the clock following event
    time, with the consumer's envelope cache and a checkpoint snapshot (``state_dict`` + JSON) every
    ``checkpoint_every_s`` of event time. No servers: what the live detector's collector does with this
    state, without the machine's other processes. ``thresholds``: the detector's own by default."""
    import collections
    import gc
    import heapq
    from kafka.partitioner.default import murmur2

    from mailaudit.bench.latency import _leak
    from mailaudit.detect.consumer import GC_THRESHOLDS, _ENVELOPE_CACHE
    from mailaudit.detect.engine import DetectionEngine
    from mailaudit.detect.partitions import PartitionedEngine
    from mailaudit.ingest.parsed import parse_event
    from mailaudit.ingest.privacy import AddressHasher
    from mailaudit.ingest.simulator import Simulator

    cfg = Config()
    hasher = AddressHasher(uuid.uuid4().hex * 2, "k1")
    now = [0]
    eng = PartitionedEngine(lambda: DetectionEngine(cfg.detect, clock=lambda: now[0], hasher=hasher))
    start = 1_800_000_000_000
    stream = heapq.merge(Simulator(seed=21, rate=rate, rhythm=False, burst=1.0, start_ms=start).events(duration_s),
                         [_leak(i, start + 1000 + 500 * i) for i in range(int(duration_s * 2) - 2)],
                         key=lambda e: e.sent_at_ms)
    envelopes: collections.OrderedDict = collections.OrderedDict()
    pauses: list[tuple[float, int, float]] = []          # (event-time s, generation, seconds)
    t_gc = [0.0]

    def on_gc(phase, info):
        if phase == "start":
            t_gc[0] = time.perf_counter()
        else:
            pauses.append(((now[0] - start) / 1000, info["generation"], time.perf_counter() - t_gc[0]))

    old = gc.get_threshold()
    gc.set_threshold(*(thresholds or GC_THRESHOLDS))
    gc.callbacks.append(on_gc)
    loop = collections.defaultdict(float)
    snaps = []
    next_adv, next_ck = start + 1000, start + int(checkpoint_every_s * 1000)
    try:
        for e in stream:
            now[0] = e.sent_at_ms
            t0 = time.perf_counter()
            ps = parse_event(e)
            if ps.strangers or ps.has_bcc or ps.run_together:      # as DetectConsumer._process
                envelopes[e.event_id] = (e.service, e.campaign or "", tuple([hasher.hash(a) for a in ps.envelope]))
                if len(envelopes) > _ENVELOPE_CACHE:
                    envelopes.popitem(last=False)
            eng.select(("t", (murmur2(e.service.encode()) & 0x7fffffff) % cfg.kafka.partitions))
            eng.process(e, ps)
            eng.take_exposures()
            if e.sent_at_ms >= next_adv:
                next_adv += 1000
                eng.advance(e.sent_at_ms - int(cfg.detect.lateness_s * 1000))
            loop[int((e.sent_at_ms - start) // 10_000)] += time.perf_counter() - t0
            if e.sent_at_ms >= next_ck:
                next_ck += int(checkpoint_every_s * 1000)
                t1 = time.perf_counter()
                docs = [eng.state_dict(tp) for tp in list(eng.engines)]
                t2 = time.perf_counter()
                size = sum(len(json.dumps(d, separators=(",", ":"))) for d in docs)
                snaps.append({"at_s": (e.sent_at_ms - start) / 1000, "state_dict_ms": round(1000 * (t2 - t1)),
                              "json_ms": round(1000 * (time.perf_counter() - t2)), "bytes": size})
                del docs
    finally:
        gc.callbacks.remove(on_gc)
        gc.set_threshold(*old)
    t = time.perf_counter()
    gc.collect()                                         # what one full collection of this state costs
    full_ms = 1000 * (time.perf_counter() - t)
    tracked = len(gc.get_objects())
    by_gen = {}
    for g in sorted({p[1] for p in pauses}):
        ms = sorted(1000 * p[2] for p in pauses if p[1] == g)
        by_gen[g] = {"n": len(ms), "total_ms": round(sum(ms)), "median_ms": round(ms[len(ms) // 2], 1),
                     "max_ms": round(ms[-1], 1)}
    return {"thresholds": list(thresholds or GC_THRESHOLDS), "duration_s": duration_s, "gc_by_generation": by_gen,
            "gen1_pauses_ms": [(round(t), round(1000 * d)) for t, g, d in pauses if g == 1],
            "loop_s_per_10s": [round(loop[w], 2) for w in sorted(loop)], "checkpoints": snaps[-3:],
            "full_collection_at_end_ms": round(full_ms), "tracked_objects_at_end": tracked}


if __name__ == "__main__":
    # python -m mailaudit.bench.detect_profile gc [duration_s] [t0,t1,t2]: the in-process GC diagnostic
    if sys.argv[1:2] == ["gc"]:
        print(json.dumps(gc_pauses(float(sys.argv[2]) if len(sys.argv) > 2 else 150.0,
                                   tuple(int(x) for x in sys.argv[3].split(",")) if len(sys.argv) > 3 else None), indent=2))
    else:
        print(json.dumps(bench_detect_profile(), indent=2))
