"""`mailaudit hold SERVICE [--campaign C]`: contain a leaking service or campaign (mail.control)."""

from __future__ import annotations

HELP = "hold a service or campaign: SDK guard and milter refuse its mail until release"


def configure(p):
    p.add_argument("service")
    p.add_argument("--campaign", help="campaign (or template) id; omit to address the whole service")
    p.add_argument("--reason", default="", help="why (shown to operators and in the audit log)")
    p.add_argument("--by", default=None, help="who issues it (default: $USER)")


def run(args, cfg) -> int:
    return send(args, cfg, "hold")


def send(args, cfg, action: str) -> int:
    import getpass

    from mailaudit.ingest.publisher import send_control

    by = args.by or getpass.getuser()
    send_control(cfg.kafka, action, args.service, args.campaign, args.reason, by=by)
    scope = f"{args.service}/{args.campaign}" if args.campaign else f"{args.service} (all campaigns)"
    print(f"{action}: {scope} on {cfg.kafka.topic_control}")
    return 0
