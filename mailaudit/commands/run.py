"""`mailaudit run`: the whole product on one machine, one command, Ctrl-C stops all.

Stack up (real ClickHouse + Kafka-protocol broker, state in ``.mailaudit/``), migrate, then the
ingest consumer, the detector, the dashboard and the traffic simulator as child processes sharing
one effective config file. An hour of history is loaded first so the dashboard and the detectors'
baselines have something to show, then live traffic flows with a leak injected a few minutes in.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from pathlib import Path

from mailaudit import tomlw
from mailaudit.cli import UserError
from mailaudit.stack import LocalStack, StackError

HELP = "the main job: stack up, migrate, consume, detect, simulate and dashboard; Ctrl-C stops all"


def configure(p):
    p.add_argument("--rate", type=float, default=50.0, help="simulated events/s (default 50)")
    p.add_argument("--history", type=float, default=3600.0, help="seconds of past traffic to load first (default 3600)")
    p.add_argument("--incident", default="concatenated_to", help="incident to inject live ('none' for none)")
    p.add_argument("--incident-at", type=float, default=180.0, help="seconds after start (default 180)")
    p.add_argument("--no-dashboard", action="store_true")
    p.add_argument("--max-seconds", type=float, default=None, help="stop everything after this long (smoke tests)")


def run(args, cfg) -> int:
    state = Path(cfg.state_dir)
    stack = LocalStack(state / "stack")
    try:
        info = stack.up()
    except StackError as e:
        raise UserError(str(e)) from None
    cfg.kafka.bootstrap = info.kafka_bootstrap
    cfg.clickhouse.url = info.clickhouse_url
    if not cfg.privacy.hash_key:
        cfg.privacy.hash_key = stack.hash_key()
    cfg_path = state / "run.toml"
    cfg_path.write_text(tomlw.dumps(dataclasses.asdict(cfg)))
    cfg_path.chmod(0o600)                      # it holds the hash key

    def verb(*a: str) -> list[str]:
        return [sys.executable, "-m", "mailaudit", "--config", str(cfg_path), *a]

    print(f"kafka {info.kafka_bootstrap}   clickhouse {info.clickhouse_url}   state {state}")
    if subprocess.call(verb("migrate")) != 0:
        raise UserError("migrate failed (see above)")
    if args.history > 0:
        print(f"loading {args.history:.0f} s of past traffic ...")
        subprocess.call(verb("simulate", "--fast", "--duration", str(args.history), "--rate", str(args.rate),
                             "--seed", "11"))
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen] = {}

    def start(name: str, cmd: list[str]) -> None:
        out = open(logs / f"{name}.log", "ab")
        procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    start("consume", verb("consume"))
    start("detect", verb("detect"))
    sim = ["simulate", "--rate", str(args.rate), "--duration", "0", "--seed", "12"]
    if args.incident and args.incident != "none":
        sim += ["--incident", args.incident, "--incident-at", str(args.incident_at)]
    start("simulate", verb(*sim))
    if not args.no_dashboard:
        start("dashboard", verb("dashboard"))
        print(f"dashboard   http://{cfg.dashboard.host}:{cfg.dashboard.port}")
    print(f"logs        {logs}/   (Ctrl-C stops everything; `mailaudit stack down` stops the servers)")

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
            time.sleep(0.5)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p in procs.items():
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        print("stopped consume/detect/simulate/dashboard (servers keep running: `mailaudit stack down`)")
    return rc
