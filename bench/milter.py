"""Per-message overhead of the milter: the time its callbacks take for one message.

The milter's callbacks are driven in-process in libmilter's order (envfrom, each envrcpt, each header,
body chunks, eom) through pymilter's test context, with the real ``Auditor``: inline policy (header
parse + disclosure signals + hold lookup) and the real ``Publisher`` enqueue, with a live broker
draining it in the background (``kafka=True``, a local stack) so the producer thread competes for the
GIL as it does in production. What is left out is the socket round trip to the MTA, which libmilter
does in C and which the ``noreply`` callbacks avoid for everything but end-of-message.

Two figures per message: ``wall`` (the harness's clock around all callbacks of the message) and
``self`` (what the milter's own accounting records, the figure its /metrics reports). The mix is
realistic: mostly one-recipient transactional mail, one-To newsletter copies, group threads, a few
long visible lists and leaking copies.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
import uuid
from io import BytesIO
from pathlib import Path

import Milter
from Milter.testctx import TestCtx

from mailaudit.adapters.auditor import Auditor
from mailaudit.adapters.config import MilterConfig
from mailaudit.adapters.milter import make_milter_class
from mailaudit.config import Config


class Ctx(TestCtx):
    """pymilter's test context, plus quarantine (which it does not implement)."""

    def __init__(self):
        super().__init__(logfile=None)
        self.quarantined: list[str] = []

    def quarantine(self, reason):
        self.quarantined.append(reason)


KINDS = ("transactional", "newsletter", "group", "leak")


def kind_of(msg) -> str:
    mail_from, rcpts, headers, _ = msg
    if mail_from.startswith("billing"):
        return "transactional"
    if mail_from.startswith("ops"):
        return "group"
    return "leak" if len(dict(headers)["To"]) > 200 else "newsletter"


def message(rng: random.Random, i: int) -> tuple[str, list[str], list[tuple[str, str]], bytes]:
    """(MAIL FROM, RCPT TOs, header fields, body) of one message of the mix."""
    r = rng.random()
    body = b"Hello,\r\n" + b"x" * rng.randint(500, 20000) + b"\r\n"
    mid = f"<{uuid.UUID(int=rng.getrandbits(128))}@shop.example>"
    base = [("Received", "from app1 (app1 [10.0.0.5]) by mx.shop.example"), ("Message-ID", mid),
            ("Date", "Mon, 2 Nov 2026 07:30:00 +0000"), ("MIME-Version", "1.0"),
            ("Content-Type", "text/plain; charset=utf-8"), ("Subject", f"Message {i}")]
    if r < 0.70:                                     # transactional
        rcpt = f"user{i}@example.com"
        return "billing@shop.example", [rcpt], base + [("From", "Shop <billing@shop.example>"),
                                                        ("To", f"User {i} <{rcpt}>")], body
    if r < 0.90:                                     # one-To newsletter copy
        rcpt = f"reader{i}@example.org"
        return "news@shop.example", [rcpt], base + [("From", "News <news@shop.example>"), ("To", rcpt),
                                                     ("X-Mailaudit-Service", "newsletter"),
                                                     ("X-Mailaudit-Campaign", "nl-42")], body
    if r < 0.995:                                    # group thread, everyone a recipient
        rcpts = [f"team{j}@corp{j % 3}.example" for j in range(rng.randint(2, 8))]
        return "ops@shop.example", rcpts, base + [("From", "ops@shop.example"), ("To", ", ".join(rcpts[:-1])),
                                                   ("Cc", rcpts[-1])], body
    n = rng.choice((60, 200, 1000))                  # a leaking copy: every customer in To
    to = ", ".join(f"Customer {j} <customer{j}@d{j % 50}.example>" for j in range(n))
    return "news@shop.example", ["customer0@d0.example"], base + [("From", "news@shop.example"), ("To", to),
                                                                  ("X-Mailaudit-Service", "newsletter")], body


class _Msg(dict):
    """Stands in for the parsed message TestCtx edits on chgheader (we feed fields, not a file)."""

    def __delitem__(self, key):
        self.pop(key, None)


def drive(ctx: Ctx, mail_from: str, rcpts: list[str], headers: list[tuple[str, str]], body: bytes) -> int:
    """One message through the callbacks in libmilter's order; returns the eom result."""
    ctx._body = None
    ctx._msg = _Msg()
    ctx._envfrom(f"<{mail_from}>")
    for r in rcpts:
        ctx._envrcpt(f"<{r}>")
    for name, value in headers:
        ctx._priv.header_bytes(name, value.encode())
    ctx._eoh()
    for k in range(0, len(body), 65535):
        ctx._priv.body(body[k:k + 65535])
    ctx._body = BytesIO()
    ctx._stage = Milter.M_EOM
    rc = ctx._priv.eom()
    ctx._stage = None
    return rc


def _q(data: list[float], q: float) -> float:
    s = sorted(data)
    return s[min(len(s) - 1, int(q * len(s)))]


def _measure(auditor: Auditor, n: int, runs: int, rate: float, seed: int) -> dict:
    lat = auditor.latency["message_overhead"]
    walls: list[float] = []
    selfs: list[float] = []
    by_kind: dict[str, list[float]] = {k: [] for k in KINDS}
    quarantined = 0
    for run in range(runs):
        rng = random.Random(seed + run)
        msgs = [message(rng, i) for i in range(n)]
        ctx = Ctx()
        ctx._connect()
        for m in msgs[: min(200, n)]:                  # warm-up: imports, caches
            drive(ctx, *m)
        before = len(lat._samples)
        start = time.perf_counter()
        for k, m in enumerate(msgs):
            if rate:
                delay = start + k / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            t = time.perf_counter()
            drive(ctx, *m)
            ms = (time.perf_counter() - t) * 1000
            walls.append(ms)
            by_kind[kind_of(m)].append(ms)
        selfs += list(lat._samples)[before:]
        quarantined += len(ctx.quarantined)
    return {
        "messages": len(walls),
        "wall_p50_ms": round(_q(walls, 0.5), 4),
        "wall_p99_ms": round(_q(walls, 0.99), 4),
        "wall_max_ms": round(max(walls), 4),
        "wall_mean_ms": round(statistics.fmean(walls), 4),
        "self_p50_ms": round(_q(selfs, 0.5), 4),
        "self_p99_ms": round(_q(selfs, 0.99), 4),
        "by_kind": {k: {"n": len(v), "p50_ms": round(_q(v, 0.5), 4), "p99_ms": round(_q(v, 0.99), 4)}
                    for k, v in by_kind.items() if v},
        "quarantined": quarantined,
    }


def bench_milter(n: int = 5000, runs: int = 1, kafka: bool = True, mode: str = "enforce", seed: int = 7,
                 switch_interval_ms: float | None = None, rates: tuple[float, ...] = (500.0, 0.0)) -> dict:
    """Overhead per message in ms (p50/p99/max, wall and self-accounted), ``n`` messages x ``runs`` per
    offered rate. ``rates``: messages/s (0: saturated, as fast as the loop goes; on 2 cores shared with
    the broker this measures contention with the producer thread more than the milter).
    ``switch_interval_ms``: the GIL switch interval to run with (default: what the milter command sets).
    The headline ``p99_ms`` is the first rate's."""
    import sys

    from mailaudit.adapters.milter import GIL_SWITCH_INTERVAL_S

    if isinstance(rates, (int, float)):
        rates = (float(rates),)
    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S if switch_interval_ms is None else switch_interval_ms / 1000)
    cfg = Config()
    stack = None
    tmp = None
    auditor = None
    results: dict[str, dict] = {}
    try:
        if kafka:
            from mailaudit.ingest.topics import create_topics
            from mailaudit.stack import LocalStack

            tmp = tempfile.TemporaryDirectory(prefix="mailaudit-bench-milter-")
            stack = LocalStack(Path(tmp.name) / "stack", tied=True)
            stack.up()
            uid = uuid.uuid4().hex[:8]
            cfg.kafka.bootstrap = stack.info().kafka_bootstrap
            cfg.kafka.topic_events = f"bench{uid}.mail.headers"
            cfg.kafka.topic_control = f"bench{uid}.mail.control"
            create_topics(cfg.kafka)
        mcfg = MilterConfig(stats_interval_s=0, buffer_max=max(10000, n * runs * len(rates) * 2))
        mcfg.policy.mode = mode
        if kafka:
            auditor = Auditor(cfg, mcfg, name="bench")
            auditor.guard.wait_ready(30)
        else:
            from mailaudit.ingest.publisher import HoldState, Publisher

            class _Guard:
                ready = True
                state = HoldState()

                def is_held(self, s, c=None):
                    return self.state.is_held(s, c)

                def holds(self):
                    return []

                def close(self, timeout=0):
                    pass

            # A publisher whose broker is unreachable still does the whole enqueue (encode + buffer).
            cfg.kafka.bootstrap = "127.0.0.1:1"
            auditor = Auditor(cfg, mcfg, guard=_Guard(), name="bench",
                              publisher=Publisher(cfg.kafka, "bench", max_buffer=mcfg.buffer_max, max_block_ms=0,
                                                  on_full="drop", connect_timeout_ms=100))
        Milter.factory = make_milter_class(auditor, mcfg)
        for rate in rates:
            results[f"{rate:g}/s" if rate else "saturated"] = _measure(auditor, n, runs, rate, seed)
            if kafka:
                auditor.publisher.flush(60)
        stats = auditor.publisher.stats()
    finally:
        if auditor is not None:
            auditor.close(10 if kafka else 0.2)
        if stack is not None:
            stack.down()
        if tmp is not None:
            tmp.cleanup()
        sys.setswitchinterval(old_switch)
    head = next(iter(results.values()))
    return {
        "mode": mode,
        "kafka": kafka,
        "switch_interval_ms": (GIL_SWITCH_INTERVAL_S * 1000 if switch_interval_ms is None else switch_interval_ms),
        "p50_ms": head["wall_p50_ms"],
        "p99_ms": head["wall_p99_ms"],
        "target_p99_ms": 5.0,
        "meets_target": head["wall_p99_ms"] < 5.0,
        "published": stats["published"],
        "rates": results,
    }


if __name__ == "__main__":
    import json
    import sys

    kw = {}
    for a in sys.argv[1:]:
        k, v = a.split("=")
        kw[k] = tuple(float(x) for x in v.split(",")) if k == "rates" else (float(v) if "." in v else int(v))
    print(json.dumps(bench_milter(**kw), indent=2))
