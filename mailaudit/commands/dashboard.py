"""`mailaudit dashboard`: the Streamlit investigation dashboard (Live, Incidents, Search, Services)."""

from __future__ import annotations

import logging
import os

from mailaudit.cli import UserError

HELP = "the investigation dashboard (Streamlit): live traffic, incidents and exposure, search, baselines"


def configure(p):
    p.add_argument("--host", help="address to listen on (default: dashboard.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: dashboard.port, 8501)")
    p.add_argument("--hash-password", action="store_true",
                   help="read a password (no echo) and print the hash to put in dashboard.*_password_hash")


def run(args, cfg) -> int:
    from mailaudit.dashboard import auth
    from mailaudit.dashboard.server import child_env, streamlit_argv

    if args.hash_password:
        return auth.main()
    # The Streamlit child loads the config itself: hand it the local stack the CLI picked, if any.
    choice = getattr(args, "_servers", None)
    overrides = dict(choice.env) if choice is not None else {}
    if args.host:
        cfg.dashboard.host = args.host
        overrides["MAILAUDIT_DASHBOARD_HOST"] = args.host
    if args.port:
        cfg.dashboard.port = args.port
        overrides["MAILAUDIT_DASHBOARD_PORT"] = str(args.port)
    try:
        auth.access_policy(cfg.dashboard)
    except auth.AuthConfigError as e:
        raise UserError(str(e)) from None
    _ensure_aggregates(cfg)
    config_path = getattr(args, "config", None) or os.environ.get("MAILAUDIT_CONFIG")
    argv = streamlit_argv(cfg.dashboard.host, cfg.dashboard.port)
    print(f"dashboard on http://{cfg.dashboard.host}:{cfg.dashboard.port}", flush=True)
    # exec: signals from `mailaudit run` or a service manager reach Streamlit directly.
    os.execve(argv[0], argv, child_env(config_path, overrides=overrides))
    return 0  # not reached


def _ensure_aggregates(cfg) -> None:
    """The Services page reads the per-minute aggregate; create it if the schema predates it."""
    from mailaudit.dashboard import aggregates
    from mailaudit.ingest.clickhouse import Database

    try:
        db = Database(cfg.clickhouse)
        try:
            if aggregates.ensure(db, cfg.retention):
                print("created the per-minute aggregate for the Services page", flush=True)
        finally:
            db.disconnect()
    except Exception as e:  # noqa: BLE001 - the other pages work without it; say so and go on
        logging.getLogger("mailaudit.dashboard").warning("per-minute aggregate not available: %s", e)
