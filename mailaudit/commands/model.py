"""`mailaudit model train --service S`: fit a service's anomaly model on its stored history.

The artefact (pickle) and its JSON sidecar go under ``state_dir/models/`` unless ``--out`` says
where; point ``detect.model_path`` at the file or at the directory to switch scoring on (it is off
by default — see docs/model.md for why).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

from mailaudit.cli import UserError

HELP = "train the per-service anomaly model (IsolationForest) on stored history; off in detect unless model_path is set"

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def configure(p):
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="fit and calibrate one service's model, write artefact + JSON sidecar")
    t.add_argument("--service", required=True)
    t.add_argument("--days", type=float, default=14.0,
                   help="history length, ending at the service's newest stored event (default 14)")
    t.add_argument("--out", help="artefact path (default state_dir/models/<service>-<utc time>.pkl)")
    t.add_argument("--alerts-per", type=int, default=None,
                   help="calibration: at most one alert per this many training messages (default 10000)")
    t.add_argument("--seed", type=int, default=0, help="random_state of the forest (default 0)")


def _fmt(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(args, cfg) -> int:
    from mailaudit.detect.model import DEFAULT_ALERTS_PER, train
    from mailaudit.detect.model_store import history_window, read_features
    from mailaudit.ingest.clickhouse import Database

    if args.days <= 0:
        raise UserError(f"--days must be positive, got {args.days}")
    db = Database(cfg.clickhouse)
    try:
        window = history_window(db, args.service, args.days)
        if window is None:
            raise UserError(f"no stored events for service {args.service!r}")
        x = read_features(db, args.service, *window)
    finally:
        db.disconnect()
    try:
        model = train(args.service, x, alerts_per=args.alerts_per or DEFAULT_ALERTS_PER, random_state=args.seed,
                      training_from=_fmt(window[0]), training_to=_fmt(window[1]))
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.out:
        out = Path(args.out)
    else:
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out = Path(cfg.state_dir) / "models" / f"{_SAFE.sub('_', args.service)}-{stamp}.pkl"
    path, side = model.save(out)
    print(json.dumps({"artefact": str(path), "sidecar": str(side), **model.sidecar()}, sort_keys=True))
    return 0
