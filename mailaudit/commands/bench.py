"""`mailaudit bench NAME [--json]`: benchmarks, each in ``bench/NAME.py`` as ``bench_NAME(**kw) -> dict``."""

from __future__ import annotations

import importlib
import json
import os
import sys
import time

from mailaudit.cli import UserError

HELP = "benchmarks: ingest, latency, parser, backtest, nab, dashboard, detection, all (--json for machine-readable figures)"

LOCAL_STACK = False        # each suite starts its own servers

SUITES = ("ingest", "latency", "parser", "backtest", "nab", "dashboard", "milter", "model_eval", "detection", "scale",
          "detect_profile")
# What `bench all` runs, with arguments that keep the whole suite within ~15 minutes here.
ALL = {"parser": {}, "backtest": {}, "ingest": {"n": 50_000, "runs": 3}, "latency": {"duration_s": 45.0}, "milter": {"n": 5000}, "nab": {}, "detection": {}}


def configure(p):
    p.add_argument("suite", choices=SUITES + ("all",))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--runs", type=int, help="repeat count (medians are reported)")
    p.add_argument("--events", type=int, help="event count, where the suite takes one")
    p.add_argument("--nab", help="NAB directory (default ../shared/nab if present)")
    p.add_argument("--half", choices=("tune", "test"), help="detection: only this half of the pattern catalogue's split")
    p.add_argument("--scale", type=float, help="detection: pattern size factor (default 1.0)")
    p.add_argument("--cv", action="store_true",
                   help="nab: cross-validated figures (leave one category / one file out, bench/nab_cv.py)")
    p.add_argument("--rates", help="latency: comma-separated offered rates (default 1000,2000,5000,8000)")
    p.add_argument("--duration", type=float, help="latency: seconds per run")
    p.add_argument("--workers", type=int, help="ingest: worker processes of the headline consumer (default 2; "
                                               "the in-process consumer is measured beside it)")
    p.add_argument("--plot", help="latency: write the latency-vs-rate PNG here (default bench/latency.png in a checkout)")
    p.add_argument("--baseline", action="store_true",
                   help="latency: the transport alone, a plain consumer echoing each leak in the detector's place "
                        "(bench/echo.py); the detector's share is what it adds to this")


def _kwargs(suite: str, args) -> dict:
    kw: dict = dict(ALL.get(suite, {})) if args.suite == "all" else {}
    if args.runs:
        kw["runs"] = args.runs
    if args.events:
        kw["n"] = args.events
    if suite == "detection":
        if getattr(args, "half", None):
            kw["half"] = args.half
        if getattr(args, "scale", None):
            kw["scale"] = args.scale
    if suite == "ingest" and getattr(args, "workers", None) is not None:
        kw["workers"] = args.workers
    if suite == "latency" and getattr(args, "rates", None):
        kw["rates"] = tuple(int(r) for r in args.rates.split(","))
    if suite == "latency" and getattr(args, "duration", None):
        kw["duration_s"] = args.duration
    if suite == "latency" and getattr(args, "baseline", False):
        kw["baseline"] = True
    if suite == "latency":
        plot = args.plot or (None if kw.get("baseline") else "bench/latency.png" if os.path.isdir("bench") else None)
        if plot:
            kw["plot"] = plot
    if suite == "nab":
        nab = args.nab or next((d for d in ("../shared/nab", "../../shared/nab") if os.path.isdir(d)), None)
        if not nab:
            raise UserError("no NAB directory: pass --nab DIR (the scorer and data from shared/nab)")
        kw["nab_dir"] = nab
        if getattr(args, "cv", False):
            kw["cv"] = True
    return kw


def _run(suite: str, args) -> dict:
    try:
        mod = importlib.import_module(f"mailaudit.bench.{suite}")
    except ModuleNotFoundError as e:
        raise UserError(f"benchmark '{suite}' is not available: {e}") from None
    fn = getattr(mod, f"bench_{suite}")
    t0 = time.monotonic()
    out = fn(**_kwargs(suite, args))
    out["wall_s"] = round(time.monotonic() - t0, 1)
    from mailaudit.bench.machine import describe

    out["machine"] = describe()            # figures compare only with figures from the same kind of machine
    return out


def run(args, cfg) -> int:
    suites = [s for s in ALL if s != "nab" or args.nab or os.path.isdir("../shared/nab")] if args.suite == "all" else [args.suite]
    results = {}
    from mailaudit.progress import enabled, ticker

    for i, s in enumerate(suites, 1):
        step = f"bench {s}" + (f" ({i}/{len(suites)})" if len(suites) > 1 else "")
        if not enabled():
            print(f"{step} ...", file=sys.stderr)
        with ticker(step):                 # on a terminal: the suite's elapsed time, every second
            results[s] = _run(s, args)
        if not args.json:
            print(json.dumps({s: results[s]}, indent=2, default=str))
    if args.json:
        print(json.dumps(results if args.suite == "all" else results[args.suite], default=str))
    return 0
