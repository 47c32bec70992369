"""Offline detection over a file of wire-format events: the rules tuned on history before going live.

Same engine, same rules, same ids as the live detector; ``detected_at`` is each trigger's ``sent_at``
(no clock), so two runs over one file print the same bytes. Events are fed in file order: the file
should be sorted by event time within the lateness window, as the live topic is.

``jobs > 1`` shards the work by service over worker processes. That is exact, not an approximation:
every piece of engine state (watermarks, waits, buckets, detectors, incidents) belongs to one service,
and an event's alerts depend only on its own service's history, so each worker runs the sequential
algorithm on its services and the parent merges the outputs back into sequential order (by line, then
``flush`` phase and service). The output is byte-identical to ``jobs=1`` — a test checks it. The
parent routes a line by its ``"service"`` value found with a byte scan, falling back to a full JSON
parse whenever the line is unusual (escapes, several "service" keys), so one service always lands on
one worker.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Callable, Iterable

from mailaudit.config import DetectConfig
from mailaudit.detect.alerts import Alert
from mailaudit.detect.engine import DetectionEngine
from mailaudit.ingest.wire import MalformedEvent, decode_event


@dataclass
class BacktestResult:
    lines: int = 0
    events: int = 0
    malformed: int = 0
    late: int = 0
    alerts: int = 0
    exposure_rows: int = 0
    elapsed_s: float = 0.0
    jobs: int = 1
    by_kind: Counter = field(default_factory=Counter)
    by_status: Counter = field(default_factory=Counter)
    incidents: set = field(default_factory=set)

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.by_kind.items())) or "none"
        return (f"backtest: {self.events} events ({self.malformed} malformed lines, {self.late} late), "
                f"{self.alerts} alerts in {len(self.incidents)} incidents [{kinds}], "
                f"{self.elapsed_s:.2f} s, {self.events_per_s:,.0f} events/s"
                + (f" ({self.jobs} jobs)" if self.jobs > 1 else ""))

    def count(self, a: Alert) -> None:
        self.alerts += 1
        self.by_kind[a.kind] += 1
        self.by_status[a.status] += 1
        self.incidents.add(a.incident_id)


def _warning(n: int, e: MalformedEvent) -> str:
    return f"line {n}: {e.reason}: {e.detail}\n"


def run_backtest(lines: Iterable[bytes], cfg: DetectConfig, out: IO[str], err: IO[str], *,
                 extra_fields: Iterable[str] = (), hasher=None, exposure_out: IO[str] | None = None,
                 spike_factory: Callable | None = None, jobs: int = 1) -> BacktestResult:
    """Decode, detect, print. Malformed lines get one warning each on ``err`` and never stop the run."""
    if jobs > 1 and exposure_out is None and hasher is None:
        DetectionEngine(cfg, clock=None, spike_factory=spike_factory)     # config errors here, not in a worker
        return _run_sharded(lines, cfg, out, err, tuple(extra_fields), spike_factory, jobs)
    engine = DetectionEngine(cfg, clock=None, hasher=hasher, spike_factory=spike_factory)
    res = BacktestResult()
    extra = tuple(extra_fields)
    write = out.write
    t0 = time.perf_counter()

    def emit(alerts: list[Alert]) -> None:
        for a in alerts:
            write(a.to_json())
            write("\n")
            res.count(a)
        if exposure_out is not None:
            rows = engine.take_exposures()
            for r in rows:
                exposure_out.write(json.dumps(r.to_dict(), sort_keys=True, separators=(",", ":")))
                exposure_out.write("\n")
            res.exposure_rows += len(rows)

    for n, line in enumerate(lines, 1):
        res.lines = n
        if not line.strip():
            continue
        try:
            event = decode_event(line, extra)
        except MalformedEvent as e:
            res.malformed += 1
            err.write(_warning(n, e))
            continue
        alerts = engine.process(event)
        if alerts or exposure_out is not None:
            emit(alerts)
    emit(engine.flush())
    res.elapsed_s = time.perf_counter() - t0
    res.events = engine.stats["events"]
    res.late = engine.stats["late"]
    return res


# --- sharded by service ----------------------------------------------------------------------------

_SERVICE_RX = re.compile(rb'"service"\s*:\s*"([^"\\]*)"')
_BATCH = 2000


def _route_key(line: bytes) -> bytes:
    if line.count(b'"service"') == 1:
        m = _SERVICE_RX.search(line)
        if m is not None:
            return m.group(1)
    try:
        doc = json.loads(line)
    except (ValueError, RecursionError):
        return b""
    s = doc.get("service") if isinstance(doc, dict) else None
    return s.encode("utf-8", "surrogatepass") if isinstance(s, str) else b""


def _worker(conn, cfg: DetectConfig, extra: tuple[str, ...], spike_factory) -> None:
    try:
        _work(conn, cfg, extra, spike_factory)
    except BaseException:                        # noqa: BLE001 - reported to the parent, which raises
        import traceback
        try:
            conn.send({"error": traceback.format_exc()})
        except OSError:
            pass
    finally:
        conn.close()


def _work(conn, cfg: DetectConfig, extra: tuple[str, ...], spike_factory) -> None:
    engine = DetectionEngine(cfg, clock=None, spike_factory=spike_factory)
    outs: list[tuple[int, int, str]] = []        # (line, index within the line, alert json)
    warnings: list[tuple[int, str]] = []
    malformed = 0
    while True:
        batch = conn.recv()
        if batch is None:
            break
        for n, line in batch:
            try:
                event = decode_event(line, extra)
            except MalformedEvent as e:
                malformed += 1
                warnings.append((n, _warning(n, e)))
                continue
            for i, a in enumerate(engine.process(event)):
                outs.append((n, i, a.to_json(), a.kind, a.status, a.incident_id))
    settle, resolve = engine.flush_phases()
    conn.send({
        "outs": outs, "warnings": warnings, "malformed": malformed,
        "settle": [(a.service, a.to_json(), a.kind, a.status, a.incident_id) for a in settle],
        "resolve": [(a.service, a.to_json(), a.kind, a.status, a.incident_id) for a in resolve],
        "events": engine.stats["events"], "late": engine.stats["late"],
    })


def _run_sharded(lines, cfg, out, err, extra, spike_factory, jobs) -> BacktestResult:
    ctx = multiprocessing.get_context("fork")
    res = BacktestResult(jobs=jobs)
    t0 = time.perf_counter()
    pipes, procs = [], []
    for _ in range(jobs):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker, args=(child, cfg, extra, spike_factory), daemon=True)
        p.start()
        child.close()
        pipes.append(parent)
        procs.append(p)
    batches: list[list[tuple[int, bytes]]] = [[] for _ in range(jobs)]
    ok = False
    try:
        for n, line in enumerate(lines, 1):
            res.lines = n
            if not line.strip():
                continue
            k = zlib.crc32(_route_key(line)) % jobs
            b = batches[k]
            b.append((n, line))
            if len(b) >= _BATCH:
                pipes[k].send(b)
                batches[k] = []
        for k in range(jobs):
            if batches[k]:
                pipes[k].send(batches[k])
            pipes[k].send(None)
        results = []
        for pipe in pipes:
            try:
                results.append(pipe.recv())
            except (EOFError, OSError) as e:
                raise RuntimeError(f"a backtest worker died: {e!r}") from None
    except (BrokenPipeError, ConnectionResetError) as e:
        for pipe in pipes:                       # a worker that failed said why before it went
            if pipe.poll(1.0):
                msg = pipe.recv()
                if isinstance(msg, dict) and "error" in msg:
                    raise RuntimeError("a backtest worker failed:\n" + msg["error"]) from None
        raise RuntimeError(f"a backtest worker died: {e!r}") from None
        ok = True
    finally:
        for p in procs:
            if not ok:                           # failing: the others may still wait for input
                p.kill()
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    for r in results:
        if "error" in r:
            raise RuntimeError("a backtest worker failed:\n" + r["error"])
    for w in sorted((w for r in results for w in r["warnings"])):
        err.write(w[1])
    merged = sorted(o for r in results for o in r["outs"])
    settle = sorted((s for r in results for s in r["settle"]), key=lambda s: s[0])    # stable per service
    resolve = sorted((s for r in results for s in r["resolve"]), key=lambda s: s[0])
    write = out.write
    for row in [o[2:] for o in merged] + [s[1:] for s in settle] + [s[1:] for s in resolve]:
        text, kind, status, incident = row
        write(text)
        write("\n")
        res.alerts += 1
        res.by_kind[kind] += 1
        res.by_status[status] += 1
        res.incidents.add(incident)
    res.events = sum(r["events"] for r in results)
    res.late = sum(r["late"] for r in results)
    res.malformed = sum(r["malformed"] for r in results)
    res.elapsed_s = time.perf_counter() - t0
    return res
