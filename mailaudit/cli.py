"""`mailaudit VERB`: one entry point; each verb lives in ``mailaudit/commands/<verb>.py``.

A verb module defines ``HELP`` (one line), ``configure(parser)`` to add its arguments and
``run(args, cfg) -> int``. Modules are imported lazily so ``mailaudit --help`` stays fast and a verb's
heavy dependencies (streamlit, sklearn) load only when that verb runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mailaudit.config import ConfigError, load_config

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
    "model": "model",
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
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, mod in _available().items():
        p = sub.add_parser(verb, help=getattr(mod, "HELP", ""), description=getattr(mod, "HELP", ""))
        p.add_argument("--config", help="TOML config file (default: $MAILAUDIT_CONFIG)", default=argparse.SUPPRESS)
        mod.configure(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        cfg = load_config(getattr(args, "config", None))
        return int(args._run(args, cfg) or 0)
    except (ConfigError, UserError) as e:
        print(f"mailaudit {args.verb}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Run as a script, this file is "__main__", a second copy of the module; use the real one so
    # that verbs raising mailaudit.cli.UserError are caught here.
    from mailaudit.cli import main as _main

    sys.exit(_main())
