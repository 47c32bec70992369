"""`mailaudit config show`: the effective config with secrets redacted."""

from __future__ import annotations

import json

HELP = "show the effective configuration (secrets redacted)"


def configure(p):
    p.add_argument("action", choices=["show"])
    p.add_argument("--json", action="store_true", help="JSON instead of TOML-like text")


def run(args, cfg) -> int:
    data = cfg.redacted()
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    _print_toml(data)
    return 0


def _print_toml(data, prefix=""):
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if prefix and scalars:
        print(f"[{prefix}]")
    for k, v in scalars.items():
        print(f"{k} = {json.dumps(v)}")
    if scalars:
        print()
    for k, v in tables.items():
        _print_toml(v, f"{prefix}.{k}" if prefix else k)
