"""`mailaudit config show`: the effective config with secrets redacted."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from mailaudit import tomlw

HELP = "show the effective configuration (secrets redacted)"


def configure(p):
    p.add_argument("action", choices=["show"])
    p.add_argument("--json", action="store_true", help="JSON instead of TOML")


def redact_webhook_url(url: str | None) -> str | None:
    """A Slack (or any capability) webhook URL *is* the credential: its path and query authorise the
    post. Show the scheme and host only, enough to tell which service it points at."""
    if not url:
        return url
    try:
        u = urlsplit(url)
        host = u.hostname or "?"
        return f"{u.scheme}://{host}{':' + str(u.port) if u.port else ''}/***" if u.scheme else "***"
    except ValueError:
        return "***"


def run(args, cfg) -> int:
    data = cfg.redacted()
    if isinstance(data.get("webhook"), dict):
        data["webhook"]["url"] = redact_webhook_url(data["webhook"].get("url"))
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else tomlw.dumps(data), end="" if not args.json else "\n")
    return 0
