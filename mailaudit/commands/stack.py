"""`mailaudit stack up|down|status|env`: the local ClickHouse server and Kafka-protocol broker.

Other verbs find a running local stack by themselves (when nothing is configured); ``stack env``
prints the same settings as shell exports, for a shell or a program that is not a mailaudit verb:
``eval "$(mailaudit stack env)"``.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from mailaudit.cli import UserError
from mailaudit.stack import LocalStack, StackError

HELP = "start/stop/inspect the local ClickHouse server and Kafka-protocol broker (state in .mailaudit/); env: exports"
LOCAL_STACK = False        # this verb manages the local stack itself


def configure(p):
    p.add_argument("action", choices=["up", "down", "status", "env"])
    p.add_argument("--json", action="store_true")


def stack_env(info) -> dict[str, str]:
    """The variables that point any mailaudit process at this stack: servers and hash key."""
    return info.env() | {"MAILAUDIT_HASH_KEY_FILE": str(Path(info.state_dir) / "hash_key")}


def _exports(env: dict[str, str]) -> str:
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())


def run(args, cfg) -> int:
    stack = LocalStack(Path(cfg.state_dir) / "stack")
    try:
        if args.action == "up":
            info = stack.up()
            out = {"kafka": info.kafka_bootstrap, "clickhouse": info.clickhouse_url, "state_dir": info.state_dir,
                   "env": stack_env(info)}
            if args.json:
                print(json.dumps(out))
            else:
                print(f"kafka       {info.kafka_bootstrap}")
                print(f"clickhouse  {info.clickhouse_url}")
                print(f"state       {info.state_dir}")
                print("other verbs run from this directory find it; elsewhere: eval \"$(mailaudit stack env)\"")
        elif args.action == "down":
            stack.down()
            print("stack stopped")
        elif args.action == "env":
            info = stack.info()
            if info is None or not stack.status()["running"]:
                print(f"mailaudit stack: no local stack running in {stack.dir}; start it with `mailaudit stack up`",
                      file=sys.stderr)
                return 3
            env = stack_env(info)
            print(json.dumps(env) if args.json else _exports(env))
        else:
            st = stack.status()
            print(json.dumps(st) if args.json else "\n".join(f"{k:11} {v}" for k, v in st.items()))
            return 0 if st["running"] else 3
    except StackError as e:
        raise UserError(str(e)) from None
    return 0
