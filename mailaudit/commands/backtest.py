"""`mailaudit backtest FILE.jsonl`: the detectors offline; alert v1 JSON lines on stdout."""

from __future__ import annotations

import os
import sys

LOCAL_STACK = False        # offline: no server (set MAILAUDIT_HASH_KEY_FILE for --exposure-out)
HELP = "run the detectors offline over wire-format events (FILE.jsonl, '-' for stdin); alerts on stdout"


def configure(p):
    p.add_argument("file", metavar="FILE.jsonl", help="one wire-format v1 event per line; '-' reads stdin")
    p.add_argument("--exposure-out", metavar="FILE",
                   help="also write exposure rows (hashed, masked) as JSON lines; needs the hash key")
    p.add_argument("--jobs", type=int, default=0, metavar="N",
                   help="worker processes, sharded by service (same output as 1); default: one per CPU")
    p.add_argument("--quiet", action="store_true", help="no summary line on stderr")


def run(args, cfg) -> int:
    from mailaudit.cli import UserError
    from mailaudit.detect.backtest import run_backtest

    hasher = None
    exposure_out = None
    if args.jobs < 0:
        raise UserError("--jobs must be 0 (one per CPU) or more")
    jobs = args.jobs or min(os.cpu_count() or 1, 8)
    if args.exposure_out:
        from mailaudit.ingest.privacy import AddressHasher
        hasher = AddressHasher(cfg.require_hash_key(), cfg.privacy.hash_key_id)
    try:
        src = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")
    except OSError as e:
        raise UserError(f"cannot read {args.file}: {e.strerror}") from None
    try:
        if args.exposure_out:
            try:
                exposure_out = open(args.exposure_out, "w", encoding="utf-8")
            except OSError as e:
                raise UserError(f"cannot write {args.exposure_out}: {e.strerror}") from None
        from mailaudit.progress import lines_with_progress

        lines = src if args.file == "-" else lines_with_progress(src, "backtest")
        res = run_backtest(lines, cfg.detect, sys.stdout, sys.stderr, extra_fields=cfg.privacy.extra_fields,
                           hasher=hasher, exposure_out=exposure_out, jobs=jobs)
        sys.stdout.flush()
    except BrokenPipeError:          # `mailaudit backtest f | head`: the reader left, not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    finally:
        if src is not sys.stdin.buffer:
            src.close()
        if exposure_out is not None:
            exposure_out.close()
    if not args.quiet:
        print(res.summary(), file=sys.stderr)
    return 0
