"""`mailaudit milter`: the Postfix/Sendmail milter (see docs/integrations/postfix.md)."""

from __future__ import annotations

import logging
import threading

HELP = "run the milter: audit every message through Postfix/Sendmail, quarantine leaking copies in enforce mode"


def configure(p):
    p.add_argument("--milter-config", metavar="FILE",
                   help="TOML file holding the [milter] table (default: the --config file)")
    p.add_argument("--listen", help="libmilter socket, e.g. inet:8894@127.0.0.1 or unix:/run/mailaudit.sock")
    p.add_argument("--mode", choices=("monitor", "enforce"), help="default inline policy for every service")
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this long (tests, benchmarks)")
    p.add_argument("--log-level", default="INFO")


def load(args, cfg):
    """The milter settings: from the main Config once it carries them, else from the TOML file."""
    from mailaudit.adapters.config import load_adapter_config

    mcfg = getattr(cfg, "milter", None)
    if mcfg is None:
        mcfg = load_adapter_config(getattr(args, "milter_config", None) or getattr(args, "config", None)).milter
    if getattr(args, "listen", None):
        mcfg.listen = args.listen
    if getattr(args, "mode", None):
        mcfg.policy.mode = args.mode
    return mcfg.validate()


def run(args, cfg) -> int:
    from mailaudit.cli import UserError

    try:
        import Milter  # noqa: F401
    except ImportError:
        raise UserError("pymilter is not installed (apt-get install libmilter-dev; pip install pymilter)") from None
    import milter as _libmilter

    from mailaudit.adapters import milter as m
    from mailaudit.adapters.auditor import Auditor
    from mailaudit.adapters.metrics import serve_metrics
    from mailaudit.adapters.release import HoldReleaser

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.log_level.upper() != "DEBUG":   # kafka-python logs every reconnect; our publisher says it once
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    mcfg = load(args, cfg)
    auditor = Auditor(cfg, mcfg)
    log = logging.getLogger("mailaudit.milter")
    releaser = None
    if mcfg.auto_release:
        releaser = HoldReleaser(auditor.guard.is_held, mcfg).start()
    metrics = serve_metrics(mcfg.metrics_listen, auditor.metrics_text) if mcfg.metrics_listen else None
    stop = threading.Event()

    def report():
        while not stop.wait(mcfg.stats_interval_s):
            log.info("stats %s", auditor.stats())

    if mcfg.stats_interval_s > 0:
        threading.Thread(target=report, daemon=True).start()
    if args.max_seconds:
        timer = threading.Timer(args.max_seconds, _libmilter.stop)
        timer.daemon = True
        timer.start()
    try:
        m.run(auditor, mcfg, releaser.track if releaser else None)
    except _libmilter.error as e:
        raise UserError(f"cannot serve on {mcfg.listen}: {e}") from None
    finally:
        stop.set()
        if releaser:
            releaser.close()
        if metrics:
            metrics.shutdown()
        auditor.close()
        log.info("stopped: %s", auditor.stats())
    return 0
