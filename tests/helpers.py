"""Small helpers shared by the integration tests (not fixtures: plain functions)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from mailaudit import tomlw
from mailaudit.config import Config
from mailaudit.ingest.wire import Event

BASE_MS = 1_790_000_000_000  # 2026-09-21, a fixed event-time origin for deterministic tests


def make_event(i: int = 0, service: str = "billing", to: str | None = None, envelope=None, **kw) -> Event:
    addr = f"user{i}@example.com"
    return Event(
        event_id=kw.pop("event_id", str(uuid.UUID(int=(0xABCDEF << 96) + i))),
        sent_at_ms=kw.pop("sent_at_ms", BASE_MS + i * 10),
        service=service,
        message_id=kw.pop("message_id", f"<m{i}@mailer.example.com>"),
        from_=kw.pop("from_", "Billing <billing@shop.example>"),
        to=to if to is not None else f"User {i} <{addr}>",
        envelope_to=envelope if envelope is not None else [addr],
        **kw,
    )


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


def write_config(cfg: Config, path: Path) -> Path:
    path.write_text(tomlw.dumps(dataclasses.asdict(cfg)))
    return path


def cli(args: list[str], cfg_path: Path | None = None, **kw) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILAUDIT_")}
    if cfg_path:
        env["MAILAUDIT_CONFIG"] = str(cfg_path)
    return subprocess.Popen([sys.executable, "-m", "mailaudit", *args], env=env, **kw)


class ConsumerThread:
    """An IngestConsumer in a thread, stopped cleanly by the test."""

    def __init__(self, cfg: Config):
        from mailaudit.ingest.consumer import IngestConsumer

        self.consumer = IngestConsumer(cfg)
        self.thread = threading.Thread(target=self.consumer.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self.consumer

    def __exit__(self, *exc):
        self.consumer.stop_event.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "consumer did not stop within 30 s"
