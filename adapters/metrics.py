"""Counters and latency figures of an adapter, readable as Prometheus text on ``GET /metrics``.

A milter that fails open must say so somewhere an operator looks: messages it could not publish, what
it quarantined, how long its callbacks took. Stdlib only, thread-safe (libmilter calls us from one
thread per SMTP connection).
"""

from __future__ import annotations

import re
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


class Latency:
    """The last ``keep`` samples (ms): enough for stable p50/p99 without unbounded memory."""

    def __init__(self, keep: int = 20000):
        self._samples: deque[float] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self.count = 0
        self.total_ms = 0.0

    def add(self, ms: float) -> None:
        with self._lock:
            self._samples.append(ms)
            self.count += 1
            self.total_ms += ms

    def quantiles(self, qs=(0.5, 0.99)) -> dict[float, float]:
        with self._lock:
            data = sorted(self._samples)
        if not data:
            return {q: 0.0 for q in qs}
        return {q: data[min(len(data) - 1, int(q * len(data)))] for q in qs}


MAX_SERIES = 500          # label combinations per counter; beyond it new ones count as "other"
_LABEL_OK = re.compile(r"[A-Za-z0-9_.:/-]{1,64}\Z")


def label_value(v: object) -> str:
    """Label values come from message headers (the service a sender names): bounded, no address,
    nothing a scraper or a log would choke on (issue 14)."""
    s = str(v)
    return s if _LABEL_OK.match(s) else "invalid"


class Counters:
    def __init__(self, max_series: int = MAX_SERIES) -> None:
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._series: dict[str, int] = {}
        self._max = max_series
        self._lock = threading.Lock()

    def inc(self, name: str, n: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted((k, label_value(v)) for k, v in labels.items())))
        with self._lock:
            if key not in self._values:
                if self._series.get(name, 0) >= self._max:
                    key = (name, tuple((k, "other") for k, _ in key[1]))
                else:
                    self._series[name] = self._series.get(name, 0) + 1
            self._values[key] = self._values.get(key, 0) + n

    def get(self, name: str, **labels: str) -> float:
        return self._values.get((name, tuple(sorted((k, label_value(v)) for k, v in labels.items()))), 0)

    def total(self, name: str) -> float:
        with self._lock:
            return sum(v for (n, _), v in self._values.items() if n == name)

    def items(self):
        with self._lock:
            return sorted(self._values.items())


def render(prefix: str, counters: Counters, gauges: dict[str, float], latency: dict[str, Latency]) -> str:
    """Prometheus text exposition format 0.0.4."""
    lines: list[str] = []
    seen: set[str] = set()
    for (name, labels), value in counters.items():
        full = f"{prefix}_{name}_total"
        if full not in seen:
            lines.append(f"# TYPE {full} counter")
            seen.add(full)
        lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels)
        lines.append(f"{full}{{{lab}}} {value:g}" if lab else f"{full} {value:g}")
    for name, value in sorted(gauges.items()):
        lines.append(f"# TYPE {prefix}_{name} gauge")
        lines.append(f"{prefix}_{name} {value:g}")
    for name, lat in sorted(latency.items()):
        full = f"{prefix}_{name}_ms"
        lines.append(f"# TYPE {full} summary")
        for q, v in lat.quantiles((0.5, 0.9, 0.99)).items():
            lines.append(f'{full}{{quantile="{q:g}"}} {v:.4f}')
        lines.append(f"{full}_sum {lat.total_ms:.4f}")
        lines.append(f"{full}_count {lat.count}")
    return "\n".join(lines) + "\n"


def _esc(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def serve_metrics(listen: str, text: Callable[[], str]) -> ThreadingHTTPServer:
    """Serve ``text()`` on ``GET /metrics`` at ``HOST:PORT`` in a daemon thread; returns the server."""
    host, _, port = listen.rpartition(":")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server naming)
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            body = text().encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="mailaudit-metrics", daemon=True).start()
    return server
