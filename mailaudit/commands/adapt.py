"""`mailaudit adapt ses|sendgrid`: email-API events -> wire v1 (file/stdin converter or HTTP receiver)."""

from __future__ import annotations

import json
import logging
import sys

def LOCAL_STACK(args) -> bool:     # noqa: N802 - the CLI's per-verb flag; only these two talk to Kafka
    return bool(args.publish or args.listen)


HELP = "convert Amazon SES / SendGrid events to wire format v1: from a file or stdin, or as an HTTP receiver"


def configure(p):
    p.add_argument("provider", choices=("ses", "sendgrid"))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--in", dest="infile", metavar="FILE",
                     help="provider JSON (one document, or one per line) from FILE, '-' for stdin")
    src.add_argument("--listen", metavar="HOST:PORT", help="run the webhook receiver (POST /)")
    p.add_argument("--publish", action="store_true", help="with --in: publish to Kafka instead of printing JSONL")
    p.add_argument("--service", help="service when the payload names none (default: the provider's name)")
    p.add_argument("--adapt-config", metavar="FILE", help="TOML file holding the [adapt] table (default: --config)")
    p.add_argument("--max-seconds", type=float, default=None, help="with --listen: stop after this long")
    p.add_argument("--log-level", default="INFO")


def _converter(provider: str):
    if provider == "ses":
        from mailaudit.adapters.ses import convert
    else:
        from mailaudit.adapters.sendgrid import convert
    return convert


def read_documents(text: str):
    """One JSON document, or JSON lines (Firehose/S3 exports, saved webhook bodies)."""
    from mailaudit.cli import UserError

    text = text.strip()
    if not text:
        return []
    try:
        return [json.loads(text)]
    except ValueError:
        pass
    docs = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                docs.append(json.loads(line))
            except ValueError as e:
                raise UserError(f"line {n} is not JSON: {e}") from None
    return docs


def run(args, cfg) -> int:
    from mailaudit.adapters.config import load_adapter_config
    from mailaudit.cli import UserError

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    if args.log_level.upper() != "DEBUG":   # kafka-python logs every reconnect; our publisher says it once
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    acfg = getattr(cfg, "adapt", None) or load_adapter_config(
        getattr(args, "adapt_config", None) or getattr(args, "config", None)).adapt
    if args.service:
        acfg.default_service = args.service
    convert = _converter(args.provider)
    if args.listen:
        return _listen(args, cfg, acfg, convert)

    if args.infile == "-":
        text = sys.stdin.read()
    else:
        try:
            with open(args.infile, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise UserError(f"cannot read {args.infile}: {e.strerror}") from None
    events, skipped = [], {}
    for doc in read_documents(text):
        result = convert(doc, acfg)
        events += result.events
        for k, v in result.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
        for note in result.notes:
            print(note, file=sys.stderr)
    if args.publish:
        from mailaudit.ingest.publisher import Publisher

        pub = Publisher(cfg.kafka, service=f"mailaudit-adapt-{args.provider}", max_block_ms=30000)
        for e in events:
            pub.publish_event(e)
        ok = pub.flush(60)
        pub.close()
        if not ok or pub.failed:
            print(f"mailaudit adapt: {pub.failed} event(s) not acknowledged by Kafka ({cfg.kafka.bootstrap})",
                  file=sys.stderr)
            return 1
    else:
        out = sys.stdout
        for e in events:
            out.write(e.encode().decode("utf-8") + "\n")
        out.flush()
    print(f"{len(events)} event(s) {'published' if args.publish else 'converted'}; skipped: "
          f"{json.dumps(skipped, sort_keys=True)}", file=sys.stderr)
    return 0


def _listen(args, cfg, acfg, convert) -> int:
    import signal
    import threading

    from mailaudit.adapters.http_receiver import Receiver
    from mailaudit.cli import UserError
    from mailaudit.ingest.publisher import Publisher

    host = args.listen.rpartition(":")[0].strip("[]")
    if not acfg.secret and host not in ("127.0.0.1", "localhost", "::1"):
        raise UserError("refusing to listen beyond loopback without a shared secret "
                        "(set MAILAUDIT_ADAPT_SECRET or adapt.secret)")
    pub = Publisher(cfg.kafka, service=f"mailaudit-adapt-{args.provider}", max_block_ms=0, on_full="drop")
    from mailaudit.adapters.signatures import receiver_options

    try:
        verify = receiver_options(args.provider, acfg)       # provider signatures (issue 14)
    except ValueError as e:
        pub.close()
        raise UserError(str(e)) from None
    receiver = Receiver(lambda doc: convert(doc, acfg), lambda e: pub.publish_event(e) is not None,
                        secret=acfg.secret, max_body_bytes=acfg.max_body_bytes, timeout_s=acfg.timeout_s,
                        max_concurrent=acfg.max_concurrent, **verify)
    try:
        server = receiver.serve(args.listen)
    except OSError as e:
        pub.close()
        raise UserError(f"cannot listen on {args.listen}: {e.strerror}") from None
    log = logging.getLogger("mailaudit.adapt")
    log.info("%s receiver on http://%s/ (secret %s)", args.provider, args.listen,
             "required" if acfg.secret else "NOT set")
    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    if args.max_seconds:
        timer = threading.Timer(args.max_seconds, stop)
        timer.daemon = True
        timer.start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        pub.close()
        log.info("stopped: %s; publisher %s", receiver.stats, pub.stats())
    return 0
