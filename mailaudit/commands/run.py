"""`mailaudit run`: the whole product on one machine, one command, Ctrl-C stops all.

Stack up (real ClickHouse + Kafka-protocol broker, state in ``.mailaudit/``), migrate, then the
ingest consumer, the detector, the dashboard and the traffic simulator as child processes sharing
one effective config file. An hour of history is loaded first so the dashboard and the detectors'
baselines have something to show, then live traffic flows with a leak injected a few minutes in.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from mailaudit import tomlw
from mailaudit.alert_feed import FeedSummary, format_alert
from mailaudit.cli import UserError
from mailaudit.stack import LocalStack, StackError

HELP = "the main job: stack up, migrate, consume, detect, simulate and dashboard; Ctrl-C stops all"
LOCAL_STACK = False        # run always uses the local stack it starts: its servers and its hash key


def configure(p):
    p.add_argument("--rate", type=float, default=50.0, help="simulated events/s (default 50)")
    p.add_argument("--history", type=float, default=3600.0, help="seconds of past traffic to load first (default 3600)")
    p.add_argument("--incident", default="concatenated_to", help="incident to inject live ('none' for none)")
    p.add_argument("--incident-at", type=float, default=180.0,
                   help="seconds after the live traffic starts (default 180; 0 = at once)")
    p.add_argument("--no-dashboard", action="store_true")
    p.add_argument("--max-seconds", type=float, default=None, help="stop everything after this long (smoke tests)")


def run(args, cfg) -> int:
    from mailaudit.config import configured_by

    state = Path(cfg.state_dir)
    stack = LocalStack(state / "stack")
    try:
        info = stack.up()
    except StackError as e:
        raise UserError(str(e)) from None
    ignored = [v for v in configured_by(None) if v != "MAILAUDIT_CONFIG"]
    # All of the local stack or none of it: its two servers and the key its data is hashed with, so
    # that every later verb run from here (which finds the same stack) reads what this run wrote.
    cfg.kafka.bootstrap = info.kafka_bootstrap
    cfg.clickhouse.url = info.clickhouse_url
    cfg.privacy.hash_key = stack.hash_key()
    operator_password = _operator_password(cfg) if not args.no_dashboard else None
    cfg_path = state / "run.toml"
    cfg_path.write_text(tomlw.dumps(dataclasses.asdict(cfg)))
    cfg_path.chmod(0o600)                      # it holds the hash key

    def verb(*a: str) -> list[str]:
        return [sys.executable, "-m", "mailaudit", "--config", str(cfg_path), *a]

    print(f"kafka {info.kafka_bootstrap}   clickhouse {info.clickhouse_url}   state {state}", flush=True)
    if ignored:
        print(f"run: the local stack, not {', '.join(ignored)} (set in the environment)", file=sys.stderr)
    if subprocess.call(verb("migrate")) != 0:
        raise UserError("migrate failed (see above)")
    history = history_to_load(args.history, _last_event_ms(cfg), int(time.time() * 1000))
    if history < args.history:
        print(f"the stack already holds traffic until {history:.0f} s ago: loading only what came after it",
              flush=True)
    if history >= 1:
        print(f"loading {history:.0f} s of past traffic ...", flush=True)
        subprocess.call(verb("simulate", "--fast", "--duration", str(history), "--rate", str(args.rate),
                             "--seed", "11"))
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen] = {}

    def start(name: str, cmd: list[str]) -> None:
        out = open(logs / f"{name}.log", "ab")
        procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    feed = AlertFeed(cfg, None if args.no_dashboard else f"http://{cfg.dashboard.host}:{cfg.dashboard.port}",
                     _command_prefix(cfg))
    start("consume", verb("consume"))
    start("detect", verb("detect"))
    sim = ["simulate", "--rate", str(args.rate), "--duration", "0", "--seed", "12"]
    if args.incident and args.incident != "none":
        sim += ["--incident", args.incident, "--incident-at", str(args.incident_at)]
    start("simulate", verb(*sim))
    if not args.no_dashboard:
        start("dashboard", verb("dashboard"))
        print(f"dashboard   http://{cfg.dashboard.host}:{cfg.dashboard.port}")
        if operator_password:
            print(f"            operator password for this run: {operator_password}   (acknowledge, hold, release)")
    print(f"logs        {logs}/   (Ctrl-C stops everything; `mailaudit stack down` stops the servers)")
    print("incidents appear below as they open and update", flush=True)

    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    deadline = None if args.max_seconds is None else time.monotonic() + args.max_seconds
    rc = 0
    try:
        while not stopping and (deadline is None or time.monotonic() < deadline):
            for name, p in procs.items():
                if p.poll() is not None and name != "simulate":
                    print(f"{name} exited with {p.returncode}; see {logs / (name + '.log')}", file=sys.stderr)
                    stopping, rc = True, 1
            feed.poll(0.5)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in procs.items():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        feed.poll(0.2)                      # what detect published while stopping
        feed.close()
        for line in feed.summary.lines(_events_stored(cfg)):
            print(line)
        print("stopped consume/detect/simulate/dashboard (servers keep running: `mailaudit stack down`)", flush=True)
    return rc


def _operator_password(cfg) -> str | None:
    """A one-run operator password when none is configured.

    An anonymous dashboard session is only a reader (docs/security.md), so without this the person
    who started the main job could watch the leak but not hold it from the page. The password is
    printed once on this terminal; only its pbkdf2 hash reaches run.toml (0600) and the dashboard.
    """
    if cfg.dashboard.operator_password_hash or cfg.dashboard.reader_password_hash:
        return None
    import secrets

    from mailaudit.dashboard.auth import hash_password
    password = secrets.token_urlsafe(12)
    cfg.dashboard.operator_password_hash = hash_password(password)
    return password


def _command_prefix(cfg) -> str:
    """What a shell in this directory must add to a verb to find the same stack."""
    default = Path(".mailaudit")
    return "" if Path(cfg.state_dir) == default else f"MAILAUDIT_STATE_DIR={shlex.quote(str(cfg.state_dir))} "


def history_to_load(requested_s: float, last_event_ms: int | None, now_ms: int) -> float:
    """Seconds of past traffic to load: what was asked, but never back over traffic the stack already
    holds. Run again on a stack left running, the history would lie behind the watermark the detector
    restores from its checkpoint: a thread's copy would then be judged before the sibling submissions
    that follow it in the load, a disclosure that is not one (seen: a false incident of 9,756 copies
    on the second `make run` of a stack)."""
    if last_event_ms is None:
        return max(0.0, requested_s)
    return max(0.0, min(requested_s, (now_ms - last_event_ms) / 1000.0))


def _last_event_ms(cfg) -> int | None:
    """The newest stored event's time; None for an empty (or not yet migrated) database."""
    row = _events_row(cfg, "SELECT count(), max(sent_ms) FROM {db}.events")
    return int(row[1]) if row and row[0] else None


def _events_stored(cfg) -> int | None:
    row = _events_row(cfg, "SELECT count() FROM {db}.events FINAL")
    return int(row[0]) if row else None


def _events_row(cfg, sql: str) -> tuple | None:
    """One row about the stored events, or None: the run goes on without the figure."""
    from mailaudit.ingest.clickhouse import Database

    try:
        db = Database(cfg.clickhouse)
        try:
            return tuple(db.execute(sql)[0])
        finally:
            db.disconnect()
    except Exception:  # noqa: BLE001 - no figure: load the history as asked, summarise without it
        return None


class AlertFeed:
    """Reads ``mail.alerts`` from its end at start-up (this run's alerts only) and prints each one."""

    def __init__(self, cfg, base_url: str | None, prefix: str):
        from kafka import TopicPartition

        from mailaudit.ingest.kafka_io import make_consumer

        self.base_url, self.prefix = base_url, prefix
        self.summary = FeedSummary()
        self.consumer = make_consumer(cfg.kafka, None)
        topic = cfg.kafka.topic_alerts
        parts = self.consumer.partitions_for_topic(topic) or {0}
        self.consumer.assign([TopicPartition(topic, p) for p in sorted(parts)])
        self.consumer.seek_to_end()
        for tp in self.consumer.assignment():
            self.consumer.position(tp)      # pin "the end" now, before detect publishes anything

    def poll(self, timeout_s: float) -> None:
        for records in self.consumer.poll(timeout_ms=int(timeout_s * 1000)).values():
            for r in records:
                try:
                    alert = json.loads(r.value)
                except ValueError:
                    continue
                self.summary.add(alert)
                stamp = time.strftime("%H:%M:%S")
                lines = format_alert(alert, self.base_url, self.prefix)
                print(f"{stamp} {lines[0]}" + "".join(f"\n{' ' * 9}{ln}" for ln in lines[1:]), flush=True)

    def close(self) -> None:
        self.consumer.close()
