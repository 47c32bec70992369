"""`mailaudit consume`: the ingest consumer (Kafka → ClickHouse)."""

from __future__ import annotations

import logging

HELP = "run the ingest consumer: mail.headers → ClickHouse (commit after write; DLQ for malformed input)"


def configure(p):
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this long (tests, benchmarks)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on this port")
    p.add_argument("--metrics-addr", default="127.0.0.1", help="address for /metrics (default loopback)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes that decode and insert batches (ingest.workers; 0 = in this process)")


def run(args, cfg) -> int:
    from mailaudit.ingest.consumer import IngestConsumer

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.workers is not None:
        if args.workers < 0:
            raise SystemExit("--workers must be 0 or more")
        cfg.ingest.workers = args.workers
    c = IngestConsumer(cfg)
    if args.metrics_port is not None:
        from mailaudit.ingest.metrics import serve

        serve(c.metrics.registry, args.metrics_port, args.metrics_addr)
    c.install_signal_handlers()
    stats = c.run(max_seconds=args.max_seconds)
    logging.getLogger("mailaudit.ingest").info(
        "stopped: consumed=%d inserted=%d rejected=%d batches=%d", stats.consumed, stats.inserted,
        stats.rejected, stats.batches)
    return 0
