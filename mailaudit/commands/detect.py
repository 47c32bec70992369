"""`mailaudit detect`: the detection consumer (its own group) → alerts to ClickHouse, Kafka, webhook."""

from __future__ import annotations

import logging

HELP = "run the detection consumer: mail.headers → alerts (ClickHouse, mail.alerts, webhook), containment"


def configure(p):
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this long")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    p.add_argument("--metrics-addr", default="127.0.0.1", help="address for /metrics (default loopback)")
    p.add_argument("--checkpoint-interval", type=float, default=10.0,
                   help="seconds between per-partition checkpoints (bounds the re-read after a crash; default 10)")


def run(args, cfg) -> int:
    from mailaudit.detect.consumer import DetectConsumer

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    d = DetectConsumer(cfg, commit_interval_s=args.checkpoint_interval)
    if args.metrics_port is not None:
        from mailaudit.ingest.metrics import serve

        serve(d.metrics.registry, args.metrics_port, args.metrics_addr)
    d.install_signal_handlers()
    s = d.run(max_seconds=args.max_seconds)
    logging.getLogger("mailaudit.detect").info("stopped: events=%d alerts=%d holds=%d", s.events, s.alerts, s.holds)
    return 0
