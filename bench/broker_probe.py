"""Does the broker's fetch cost grow with the partition's log? Produce-one → receive, by log size.

The latency bench's transport baseline (``bench/echo.py``) drifts upward over a run at 5,000
events/s. This probe says why without any consumer group or detector in the way: one partition is
filled in steps of ``step`` messages of the bench's event size, and at each size ``probes`` single
messages are timed from send to receipt by a consumer reading the partition's tail. Apache Kafka finds a fetch offset
through its offset index, so the figure stays flat there; a broker that scans its log per fetch
shows it rising with the size.

``python -m mailaudit.bench.broker_probe [steps] [step]`` (default 10 steps of 100,000 messages,
~2 minutes here) prints one JSON object.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import uuid

from kafka import TopicPartition
from kafka.admin import NewTopic

from mailaudit.bench.workdir import work_dir
from mailaudit.config import Config
from mailaudit.ingest.kafka_io import make_admin, make_consumer, make_producer
from mailaudit.stack import LocalStack

PAYLOAD_BYTES = 850          # about one encoded simulator event


def _probe(prod, cons, tp: TopicPartition, n: int) -> list[float]:
    """Each probe: one message sent, timed until the tail-reading consumer has it (send → receipt, ms)."""
    cons.seek_to_end(tp)
    cons.poll(timeout_ms=200)        # resolves the end now: a lazy seek would land after the first probe
    ms = []
    for _ in range(n):
        marker = f"probe-{uuid.uuid4().hex}".encode()
        t = time.perf_counter()
        prod.send(tp.topic, value=marker)
        prod.flush()
        got = False
        while not got and time.perf_counter() - t < 10:
            for recs in cons.poll(timeout_ms=50).values():
                got = got or any(r.value == marker for r in recs)
        ms.append(1000 * (time.perf_counter() - t) if got else float("inf"))
    return ms


def broker_probe(steps: int = 10, step: int = 100_000, probes: int = 20, info=None) -> dict:
    """``info``: the servers to probe (a ``StackInfo``); by default a local stack of its own."""
    stack, discard = None, (lambda: None)
    if info is None:
        state, discard = work_dir(None, "mailaudit-probe-")
        stack = LocalStack(state / "stack", tied=True)
        info = stack.up()
    try:
        cfg = Config()
        cfg.kafka.bootstrap = info.kafka_bootstrap
        topic = f"probe-{uuid.uuid4().hex[:8]}"
        make_admin(cfg.kafka).create_topics([NewTopic(topic, 1, 1)])
        prod = make_producer(cfg.kafka)
        cons = make_consumer(cfg.kafka, None)
        tp = TopicPartition(topic, 0)
        cons.assign([tp])
        payload = b"x" * PAYLOAD_BYTES
        sizes = []
        in_log = 0
        for i in range(steps + 1):
            ms = _probe(prod, cons, tp, probes)
            in_log += probes
            sizes.append({"log_messages": in_log, "median_ms": round(statistics.median(ms), 1),
                          "max_ms": round(max(ms), 1)})
            if i < steps:
                for _ in range(step):
                    prod.send(topic, value=payload)
                prod.flush()
                in_log += step
        prod.close()
        cons.close()
        return {"broker": "local stack" if stack else info.kafka_bootstrap, "payload_bytes": PAYLOAD_BYTES,
                "by_log_size": sizes}
    finally:
        if stack is not None:
            stack.down()
        discard()


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    print(json.dumps(broker_probe(*args), indent=2))
