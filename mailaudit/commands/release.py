"""`mailaudit release SERVICE [--campaign C]`: lift a hold."""

from __future__ import annotations

from mailaudit.commands.hold import configure, send

HELP = "release a held service or campaign"

__all__ = ["HELP", "configure", "run"]


def run(args, cfg) -> int:
    return send(args, cfg, "release")
