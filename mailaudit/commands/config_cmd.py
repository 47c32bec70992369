"""`mailaudit config show`: the effective config with secrets redacted."""

from __future__ import annotations

import json

from mailaudit import tomlw

HELP = "show the effective configuration (secrets redacted)"


def configure(p):
    p.add_argument("action", choices=["show"])
    p.add_argument("--json", action="store_true", help="JSON instead of TOML")


def run(args, cfg) -> int:
    data = cfg.redacted()
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else tomlw.dumps(data), end="" if not args.json else "\n")
    return 0
