"""`mailaudit publish FILE.jsonl`: send wire-format events from a file (or stdin) to Kafka, line by line.

Each line goes out byte for byte: validation is the consumer's job (a malformed line must reach the
DLQ with its reason, which is exactly what this verb is useful for testing). The only look inside a
line is for its ``service`` field, to use as the message key as a mailer would.
"""

from __future__ import annotations

from mailaudit.commands import require_topic

import json
import sys
import threading

from mailaudit.cli import UserError

HELP = "publish wire-format events from a JSONL file ('-' for stdin) to Kafka, lines sent as-is"


def configure(p):
    p.add_argument("file", metavar="FILE.jsonl", help="one event per line; '-' reads stdin")
    p.add_argument("--topic", default=None, help="topic (default: kafka.topic_events)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the broker's acknowledgements")


def _key(line: bytes) -> bytes:
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return b""
    service = doc.get("service") if isinstance(doc, dict) else None
    return service.encode("utf-8") if isinstance(service, str) else b""


def run(args, cfg) -> int:
    from kafka.errors import KafkaError

    from mailaudit.ingest.kafka_io import make_producer

    topic = args.topic or cfg.kafka.topic_events
    require_topic(cfg, topic)
    try:
        src = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")
    except OSError as e:
        raise UserError(f"cannot read {args.file}: {e.strerror}") from None
    try:
        from mailaudit.ingest.publisher import MAX_REQUEST_BYTES   # large events too (issue 14, #9)

        producer = make_producer(cfg.kafka, linger_ms=20, batch_size=256 * 1024, bootstrap_timeout_ms=5000,
                                 max_block_ms=int(args.timeout * 1000), max_request_size=MAX_REQUEST_BYTES)
    except KafkaError as e:
        src.close()
        raise UserError(f"cannot reach Kafka at {cfg.kafka.bootstrap} ({e}); start the local stack "
                        "(`mailaudit stack up`) or point MAILAUDIT_KAFKA_BOOTSTRAP at a running server") from None

    lock = threading.Lock()
    counts = {"ok": 0, "failed": 0}
    errors: list[str] = []

    def ok(_):
        with lock:
            counts["ok"] += 1

    def failed(exc):
        with lock:
            counts["failed"] += 1
            if len(errors) < 3:
                errors.append(repr(exc))

    sent = unkeyed = blank = 0
    try:
        for line in src:
            line = line.rstrip(b"\n")
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                blank += 1
                continue
            key = _key(line)
            unkeyed += not key
            try:
                producer.send(topic, key=key, value=line).add_callback(ok).add_errback(failed)
            except KafkaError as e:
                failed(e)
            sent += 1
        try:
            producer.flush(timeout=args.timeout)
        except KafkaError:
            pass                              # what is not acknowledged by now is reported as failed
    finally:
        producer.close(timeout=args.timeout)
        if src is not sys.stdin.buffer:
            src.close()
    pending = sent - counts["ok"] - counts["failed"]
    print(f"publish: {sent} lines to {topic}: {counts['ok']} acknowledged, {counts['failed'] + pending} failed"
          f" ({unkeyed} without a service key, {blank} blank lines skipped)", file=sys.stderr)
    for e in errors:
        print(f"publish: error: {e}", file=sys.stderr)
    return 0 if counts["failed"] + pending == 0 else 1
