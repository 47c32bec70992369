"""`mailaudit stack up|down|status`: the local ClickHouse server and Kafka-protocol broker."""

from __future__ import annotations

import json
from pathlib import Path

from mailaudit.cli import UserError
from mailaudit.stack import LocalStack, StackError

HELP = "start/stop/inspect the local ClickHouse server and Kafka-protocol broker (state in .mailaudit/)"


def configure(p):
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--json", action="store_true")


def run(args, cfg) -> int:
    stack = LocalStack(Path(cfg.state_dir) / "stack")
    try:
        if args.action == "up":
            info = stack.up()
            out = {"kafka": info.kafka_bootstrap, "clickhouse": info.clickhouse_url, "state_dir": info.state_dir,
                   "env": info.env() | {"MAILAUDIT_HASH_KEY_FILE": str(Path(info.state_dir) / "hash_key")}}
            if args.json:
                print(json.dumps(out))
            else:
                print(f"kafka       {info.kafka_bootstrap}")
                print(f"clickhouse  {info.clickhouse_url}")
                print(f"state       {info.state_dir}")
                print("export " + " ".join(f"{k}={v}" for k, v in out["env"].items()))
        elif args.action == "down":
            stack.down()
            print("stack stopped")
        else:
            st = stack.status()
            print(json.dumps(st) if args.json else "\n".join(f"{k:11} {v}" for k, v in st.items()))
            return 0 if st["running"] else 3
    except StackError as e:
        raise UserError(str(e)) from None
    return 0
