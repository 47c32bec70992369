"""`mailaudit simulate`: realistic mailer traffic (and incidents) into Kafka or a JSONL file.

Into Kafka the events go through the publisher SDK, as a real mailer's would. In real time (the
default) each event is sent when the wall clock reaches its event time, so the stream looks live to
the detectors; ``--fast`` sends as fast as the broker takes them with synthetic event times ending
now. ``--jsonl`` writes the events to a file for ``backtest``/``publish``; its default start time is
fixed so that the same seed gives the same file.
"""

from __future__ import annotations

from mailaudit.commands import require_topic

import json
import sys
import time
from collections import Counter

from mailaudit.cli import UserError
from mailaudit.ingest.simulator import INCIDENT_KINDS, SERVICES, Simulator
from mailaudit.ingest.wire import format_time, parse_time

def LOCAL_STACK(args) -> bool:     # noqa: N802 - the CLI's per-verb flag: a --jsonl file needs no server
    return not args.jsonl


HELP = "realistic mailer traffic into Kafka (or a JSONL file), with --incident injections"

FOREVER_S = 10 * 365 * 86400.0


def configure(p):
    p.add_argument("--rate", type=float, default=100.0, help="mean events/s over a day (default 100)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of traffic; 0 = until Ctrl-C (default 60)")
    p.add_argument("--incident", action="append", default=[], metavar="KIND",
                   help=f"inject an incident (repeatable or comma-separated): {', '.join(INCIDENT_KINDS)}")
    p.add_argument("--incident-at", type=float, default=None, metavar="S",
                   help="seconds after the start when incidents begin (default: a third of --duration, 60 s if endless)")
    p.add_argument("--incident-size", type=int, default=None, metavar="N", help="copies/messages per incident")
    p.add_argument("--incident-service", default=None, help="service hosting the incidents (default: per kind)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--services", default=None, help=f"comma-separated subset of: {', '.join(SERVICES)}")
    p.add_argument("--no-rhythm", action="store_true", help="flat rate instead of the daily rhythm")
    p.add_argument("--steady", action="store_true",
                   help="a steady stream: no daily rhythm and campaigns at their mean rate instead of bursts")
    p.add_argument("--start", default=None, metavar="TIME",
                   help="event time of the start, RFC 3339 (default: now; with --jsonl a fixed 2026-11-02T07:30:00Z)")
    p.add_argument("--fast", action="store_true", help="send as fast as possible with synthetic event time")
    p.add_argument("--jsonl", default=None, metavar="FILE", help="write events to FILE ('-' = stdout) instead of Kafka")
    p.add_argument("--injected", default=None, metavar="FILE",
                   help="write what the incidents injected (kind, service, campaign, event_ids, exposed) as JSON")
    p.add_argument("--topic", default=None, help="topic (default: kafka.topic_events)")


def _incidents(values: list[str]) -> list[str]:
    kinds = [k.strip() for v in values for k in v.split(",") if k.strip()]
    bad = [k for k in kinds if k not in INCIDENT_KINDS]
    if bad:
        raise UserError(f"unknown incident {bad[0]!r}; choose from {', '.join(INCIDENT_KINDS)}")
    return kinds


def run(args, cfg) -> int:
    if args.rate <= 0:
        raise UserError("--rate must be positive")
    if args.duration < 0:
        raise UserError("--duration must be >= 0")
    if args.fast and args.duration == 0:
        raise UserError("--fast needs a --duration")
    kinds = _incidents(args.incident)
    duration = args.duration or FOREVER_S
    incident_at = args.incident_at if args.incident_at is not None else (60.0 if not args.duration else None)
    services = [s.strip() for s in args.services.split(",") if s.strip()] if args.services else None
    now_ms = int(time.time() * 1000)
    if args.start:
        try:
            start_ms = parse_time(args.start)
        except ValueError as e:
            raise UserError(f"--start: {e}") from None
    elif args.jsonl:
        start_ms = Simulator().start_ms
    elif args.fast:
        start_ms = now_ms - int(duration * 1000)
    else:
        start_ms = now_ms
    try:
        sim = Simulator(seed=args.seed, start_ms=start_ms, rate=args.rate, services=services,
                        rhythm=not (args.no_rhythm or args.steady), burst=1.0 if args.steady else 8.0)
        events = sim.events(duration, incident=kinds or None, incident_at_s=incident_at,
                            incident_size=args.incident_size, incident_service=args.incident_service)
    except ValueError as e:
        raise UserError(str(e)) from None

    if not args.jsonl:
        _check_kafka(args, cfg)
    counts: Counter = Counter()
    t0 = time.monotonic()
    failed = 0
    # On a terminal, a bar over the event time covered so far (the history load of `mailaudit run`).
    if args.duration:
        events = _with_progress(events, start_ms, args.duration, "past traffic" if args.fast else "traffic")
    try:
        if args.jsonl:
            _to_jsonl(args.jsonl, events, counts)
        else:
            failed = _to_kafka(args, cfg, sim, events, counts)
    finally:
        elapsed = time.monotonic() - t0
        total = sum(counts.values())
        print(f"simulate: {total} events in {elapsed:.1f} s ({total / max(elapsed, 1e-9):.0f}/s), "
              f"start {format_time(start_ms)}; " + ", ".join(f"{s} {n}" for s, n in counts.most_common()),
              file=sys.stderr)
        for inj in sim.injected:
            print(f"simulate: injected {inj.kind} on {inj.service}"
                  + (f" campaign {inj.campaign}" if inj.campaign else "")
                  + f": {len(inj.event_ids)} events from {format_time(inj.start_ms)}, {len(inj.exposed)} addresses exposed",
                  file=sys.stderr)
        if args.injected:
            with open(args.injected, "w", encoding="utf-8") as f:
                json.dump([vars(i) for i in sim.injected], f, indent=1)
    return 1 if failed else 0


def _with_progress(events, start_ms: int, duration_s: float, desc: str):
    from mailaudit.progress import bar

    with bar(round(duration_s), desc, unit="s") as b:
        done = 0
        for ev in events:
            now = min(int((ev.sent_at_ms - start_ms) / 1000), round(duration_s))
            if now > done:
                b.update(now - done)
                done = now
            yield ev


def _to_jsonl(path: str, events, counts: Counter) -> None:
    out = sys.stdout.buffer if path == "-" else open(path, "wb")
    try:
        for ev in events:
            out.write(ev.encode() + b"\n")
            counts[ev.service] += 1
    finally:
        if out is not sys.stdout.buffer:
            out.close()
        else:
            out.flush()


def _check_kafka(args, cfg) -> None:
    require_topic(cfg, args.topic or cfg.kafka.topic_events)


def _to_kafka(args, cfg, sim: Simulator, events, counts: Counter) -> int:
    from mailaudit.ingest.publisher import Publisher

    topic = args.topic or cfg.kafka.topic_events
    pub = Publisher(cfg.kafka, "simulate", topic=topic, max_buffer=50000, max_block_ms=60000,
                    producer_overrides={"linger_ms": 5 if not args.fast else 20, "batch_size": 256 * 1024})
    realtime = not args.fast
    wall0, ev0 = time.monotonic(), sim.start_ms
    behind_reported = 0.0
    s = {"failed": 0}
    try:
        for ev in events:
            if realtime:
                delay = (ev.sent_at_ms - ev0) / 1000.0 - (time.monotonic() - wall0)
                if delay > 0.001:
                    time.sleep(delay)
                elif delay < -5.0 and time.monotonic() - behind_reported > 10:
                    behind_reported = time.monotonic()
                    print(f"simulate: {-delay:.1f} s behind real time (Kafka slower than --rate)", file=sys.stderr)
            pub.publish_event(ev)
            counts[ev.service] += 1
    finally:
        pub.close(timeout=30)
        s = pub.stats()
        print(f"simulate: published {s['published']}, failed {s['failed']}"
              + (f" (last error: {s['last_error']})" if s["failed"] else ""), file=sys.stderr)
    return s["failed"]
