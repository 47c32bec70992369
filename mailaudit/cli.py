"""`mailaudit VERB`: one entry point; each verb lives in ``mailaudit/commands/<verb>.py``.

A verb module defines ``HELP`` (one line), ``configure(parser)`` to add its arguments and
``run(args, cfg) -> int``. Modules are imported lazily so ``mailaudit --help`` stays fast and a verb's
heavy dependencies (streamlit, sklearn) load only when that verb runs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from mailaudit.config import ConfigError, load_config, pick_servers

# verb -> module under mailaudit.commands (multi-word verbs such as "stack up" are sub-verbs of "stack").
VERBS: dict[str, str] = {
    "stack": "stack",
    "migrate": "migrate",
    "consume": "consume",
    "detect": "detect",
    "simulate": "simulate",
    "publish": "publish",
    "backtest": "backtest",
    "exposure": "exposure",
    "dashboard": "dashboard",
    "run": "run",
    "bench": "bench",
    "hold": "hold",
    "release": "release",
    "milter": "milter",
    "adapt": "adapt",
    "config": "config_cmd",
    "forget": "forget",
    "rotate-key": "rotate_key",
    "retention": "retention",
}


class UserError(Exception):
    """A mistake of the user's (bad argument, missing file): printed as one line, exit code 2."""


def _available() -> dict[str, object]:
    mods = {}
    for verb, mod in VERBS.items():
        try:
            mods[verb] = importlib.import_module(f"mailaudit.commands.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"mailaudit.commands.{mod}":
                raise
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailaudit", description="Outbound-mail audit log and disclosure detector.")
    parser.add_argument("--config", help="TOML config file (default: $MAILAUDIT_CONFIG)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, mod in _available().items():
        p = sub.add_parser(verb, help=getattr(mod, "HELP", ""), description=getattr(mod, "HELP", ""))
        p.add_argument("--config", help="TOML config file (default: $MAILAUDIT_CONFIG)", default=argparse.SUPPRESS)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of a failure")
        mod.configure(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    debug = getattr(args, "debug", False)
    if not debug:
        # clickhouse-driver and kafka-python log each failed connect, with a traceback; the one
        # line printed below says it all.
        logging.getLogger("clickhouse_driver.connection").setLevel(logging.CRITICAL)
    cfg = None
    try:
        config_path = getattr(args, "config", None)
        cfg = load_config(config_path)
        # Servers: the configured ones, or the running local stack (all of it); said once, on stderr.
        # A verb that manages the local stack itself (stack, run) or needs no server says LOCAL_STACK = False
        # (or a function of its arguments).
        wants = getattr(sys.modules[args._run.__module__], "LOCAL_STACK", True)
        if wants(args) if callable(wants) else wants:
            choice = pick_servers(cfg, config_path)
            args._servers = choice
            print(f"mailaudit {args.verb}: {choice.line}", file=sys.stderr)
        return int(args._run(args, cfg) or 0)
    except (ConfigError, UserError) as e:
        print(f"mailaudit {args.verb}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:             # `mailaudit exposure ID | head`: the reader left, not a failure
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        if debug:
            raise
        from mailaudit.failures import explain

        line = explain(e, cfg)
        if line is None:
            line = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''} " \
                   "(run `mailaudit --debug ...` for the traceback)"
        print(f"mailaudit {args.verb}: {line}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # Run as a script, this file is "__main__", a second copy of the module; use the real one so
    # that verbs raising mailaudit.cli.UserError are caught here.
    from mailaudit.cli import main as _main

    sys.exit(_main())
