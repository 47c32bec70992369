"""Where alerts go: ClickHouse tables, the ``mail.alerts`` topic, a webhook.

Each sink is driven by its own ``SinkWorker`` thread over the outbox (see ``outbox.py``): it takes a
slice of records, delivers it, and only then moves its cursor; on failure it retries the same slice
with exponential backoff, forever — records wait on disk, detection goes on. Delivery is therefore
at-least-once; every record carries a deterministic id (``alert_id``; exposures keyed by incident and
event) so sinks and their consumers can dedup (ClickHouse does it by table engine).

Outbox record shapes: ``{"type": "alert", "alert": <alert v1>}``,
``{"type": "exposure", "row": {...}}``, ``{"type": "control", "key": str, "value": <control JSON>}``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import Any

from mailaudit.config import Config, WebhookConfig
from mailaudit.detect.alerts import CATEGORY
from mailaudit.detect.outbox import Outbox
from mailaudit.ingest.wire import parse_time

log = logging.getLogger("mailaudit.detect.sinks")

_STATUS_RANK = {"open": 0, "update": 1, "resolved": 2}


def _t(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)


class ClickHouseSink:
    name = "clickhouse"

    def __init__(self, db):
        self.db = db

    def deliver(self, records: list[dict[str, Any]]) -> None:
        alerts = [r["alert"] for r in records if r["type"] == "alert"]
        exposures = [r["row"] for r in records if r["type"] == "exposure"]
        try:
            if alerts:
                self.db.insert("alerts", alert_columns(alerts))
                self.db.insert("incidents", incident_columns(alerts))
            if exposures:
                self.db.insert("exposures", exposure_columns(exposures))
        except Exception:
            self.db.disconnect()
            raise


def alert_columns(alerts: list[dict]) -> dict[str, list]:
    cols: dict[str, list] = {c: [] for c in (
        "alert_id", "incident_id", "status", "kind", "severity", "service", "campaign", "template",
        "trigger_event_id", "first_seen", "last_seen", "copies", "exposed", "detected_at", "summary",
        "evidence", "body")}
    for a in alerts:
        cols["alert_id"].append(uuid.UUID(a["alert_id"]))
        cols["incident_id"].append(uuid.UUID(a["incident_id"]))
        for k in ("status", "kind", "severity", "service", "summary"):
            cols[k].append(a[k])
        cols["campaign"].append(a.get("campaign") or "")
        cols["template"].append(a.get("template") or "")
        cols["trigger_event_id"].append(uuid.UUID(a["trigger_event_id"]))
        for k in ("first_seen", "last_seen", "detected_at"):
            cols[k].append(_t(parse_time(a[k])))
        cols["copies"].append(int(a["copies"]))
        cols["exposed"].append(int(a["exposed"]))
        cols["evidence"].append(json.dumps(a.get("evidence") or {}, sort_keys=True, ensure_ascii=False))
        cols["body"].append(json.dumps(a, sort_keys=True, ensure_ascii=False))
    return cols


def incident_columns(alerts: list[dict]) -> dict[str, list]:
    """The incident's latest state, one row per alert; ReplacingMergeTree(version) keeps the newest."""
    cols: dict[str, list] = {c: [] for c in (
        "incident_id", "category", "kind", "severity", "status", "service", "campaign", "template",
        "first_seen", "last_seen", "copies", "exposed", "summary", "last_alert_id", "version")}
    for a in alerts:
        last = parse_time(a["last_seen"])
        cols["incident_id"].append(uuid.UUID(a["incident_id"]))
        cols["category"].append(CATEGORY.get(a["kind"], "anomaly"))
        for k in ("kind", "severity", "status", "service", "summary"):
            cols[k].append(a[k])
        cols["campaign"].append(a.get("campaign") or "")
        cols["template"].append(a.get("template") or "")
        cols["first_seen"].append(_t(parse_time(a["first_seen"])))
        cols["last_seen"].append(_t(last))
        cols["copies"].append(int(a["copies"]))
        cols["exposed"].append(int(a["exposed"]))
        cols["last_alert_id"].append(uuid.UUID(a["alert_id"]))
        cols["version"].append(last * 4 + _STATUS_RANK.get(a["status"], 0))
    return cols


def exposure_columns(rows: list[dict]) -> dict[str, list]:
    cols: dict[str, list] = {c: [] for c in (
        "incident_id", "event_id", "sent_at", "sent_ms", "service", "campaign", "key_id", "exposed_hashes",
        "exposed_masked", "exposed_domains", "recipient_hashes", "recipient_count")}
    for r in rows:
        cols["incident_id"].append(uuid.UUID(r["incident_id"]))
        cols["event_id"].append(uuid.UUID(r["event_id"]))
        cols["sent_at"].append(_t(r["sent_ms"]))
        cols["sent_ms"].append(r["sent_ms"])
        cols["service"].append(r["service"])
        cols["campaign"].append(r.get("campaign") or "")
        cols["key_id"].append(r["key_id"])
        cols["exposed_hashes"].append(r["exposed_hashes"])
        cols["exposed_masked"].append(r["exposed_masked"])
        cols["exposed_domains"].append(r["exposed_domains"])
        cols["recipient_hashes"].append(r["recipient_hashes"])
        cols["recipient_count"].append(len(r["recipient_hashes"]))
    return cols


class KafkaSink:
    """Alerts to ``mail.alerts`` (key = incident id: one incident's alerts stay in order), control
    commands to ``mail.control``."""

    name = "kafka"

    def __init__(self, cfg: Config, producer):
        self.cfg = cfg
        self.producer = producer

    def deliver(self, records: list[dict[str, Any]]) -> None:
        futures = []
        for r in records:
            if r["type"] == "alert":
                a = r["alert"]
                body = json.dumps(a, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
                futures.append(self.producer.send(self.cfg.kafka.topic_alerts, key=a["incident_id"].encode(), value=body))
            elif r["type"] == "control":
                futures.append(self.producer.send(self.cfg.kafka.topic_control, key=r["key"].encode(),
                                                  value=r["value"].encode()))
        self.producer.flush(timeout=30)
        for f in futures:
            f.get(timeout=30)


class _NoForeignRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to the same scheme, host and port: a signed alert body must not be
    re-posted to a host the operator did not configure."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        old, new = urllib.parse.urlsplit(req.full_url), urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl))
        if (old.scheme, old.hostname, old.port) != (new.scheme, new.hostname, new.port):
            raise urllib.error.HTTPError(req.full_url, code, f"refused redirect to another host: {new.hostname}",
                                         headers, fp)
        if code in (307, 308):
            return urllib.request.Request(newurl, data=req.data, headers=dict(req.header_items()), method=req.get_method())
        return None


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def slack_escape(value: Any) -> str:
    """Slack mrkdwn control characters: a campaign named ``<!channel>`` or ``<https://x|click>``
    must show as text, not ping everyone or become a link (issue 14)."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_text(a: dict) -> str:
    icon = {"critical": ":rotating_light:", "warning": ":warning:"}.get(a["severity"], ":information_source:")
    e = slack_escape
    scope = e(a.get("campaign") or a.get("template") or "-")
    return (f"{icon} *{e(a['severity']).upper()}* {e(a['kind'])} ({e(a['status'])}) — {e(a['service'])} / {scope}\n"
            f"{e(a['summary'])}\ncopies={e(a['copies'])} exposed={e(a['exposed'])} incident={e(a['incident_id'])}")


class WebhookSink:
    """POST each alert as JSON; ``X-Mailaudit-Signature: sha256=HMAC(secret, timestamp + "." + body)``
    with ``X-Mailaudit-Timestamp`` (receivers reject old timestamps to stop replays)."""

    name = "webhook"

    def __init__(self, wcfg: WebhookConfig):
        if not wcfg.url:
            raise ValueError("webhook.url is not set")
        self.cfg = wcfg
        self.opener = urllib.request.build_opener(_NoForeignRedirects())

    def deliver(self, records: list[dict[str, Any]]) -> None:
        for r in records:
            if r["type"] != "alert":
                continue
            a = r["alert"]
            doc = {"text": slack_text(a)} if self.cfg.slack else a
            body = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
            ts = str(int(time.time()))
            headers = {"Content-Type": "application/json", "User-Agent": "mailaudit-webhook/1",
                       "X-Mailaudit-Alert-Id": a["alert_id"], "X-Mailaudit-Timestamp": ts}
            if self.cfg.secret:
                headers["X-Mailaudit-Signature"] = sign(self.cfg.secret, ts, body)
            req = urllib.request.Request(self.cfg.url, data=body, headers=headers, method="POST")
            with self.opener.open(req, timeout=self.cfg.timeout_s) as resp:
                if resp.status >= 300:
                    raise urllib.error.HTTPError(self.cfg.url, resp.status, "unexpected status", resp.headers, None)


class SinkWorker:
    """Deliver the outbox to one sink, in order, retrying with backoff; never gives up a record."""

    def __init__(self, outbox: Outbox, sink, batch: int = 2000, initial_s: float = 0.2, max_s: float = 30.0,
                 delivery_delay=None):
        self.outbox = outbox
        # Anything with ``observe(seconds)`` (a Prometheus histogram): alert raised -> delivered here.
        self.delivery_delay = delivery_delay
        self.sink = sink
        self.batch = batch
        self.initial_s = initial_s
        self.max_s = max_s
        self.stop = threading.Event()
        self.delivered = 0
        self.failures = 0
        self.last_error: str | None = None
        self.thread = threading.Thread(target=self._run, name=f"sink-{sink.name}", daemon=True)

    def start(self) -> "SinkWorker":
        self.thread.start()
        return self

    def _run(self) -> None:
        pos = self.outbox.cursor(self.sink.name)
        delay = self.initial_s
        while not self.stop.is_set():
            records, new_pos = self.outbox.read(pos, self.batch)
            # Records handed over from another replica's checkpoint name the sinks that still need them.
            records = [r for r in records if self.sink.name in r.get("only", (self.sink.name,))]
            if not records:
                if new_pos != pos:
                    pos = new_pos
                    self.outbox.set_cursor(self.sink.name, pos)
                self.outbox.wait(0.2)
                continue
            try:
                self.sink.deliver(records)
            except Exception as e:  # noqa: BLE001 - a sink's failure is retried, never fatal
                self.failures += 1
                self.last_error = f"{type(e).__name__}: {e}"[:300]
                log.warning("sink %s failed (%s); retrying in %.1fs", self.sink.name, self.last_error, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, self.max_s)
                continue
            delay = self.initial_s
            self.delivered += len(records)
            if self.delivery_delay is not None:
                self._observe_delivery(records)
            pos = new_pos
            self.outbox.set_cursor(self.sink.name, pos)

    def _observe_delivery(self, records: list[dict[str, Any]]) -> None:
        now_ms = time.time() * 1000
        for r in records:
            if r.get("type") == "alert":
                try:
                    raised_ms = parse_time(r["alert"]["detected_at"])
                except (KeyError, TypeError, ValueError):
                    continue
                self.delivery_delay.observe(max(0.0, now_ms - raised_ms) / 1000)

    def drain(self, timeout: float) -> bool:
        """Wait until everything in the outbox is delivered (tests, clean shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.outbox.backlog(self.sink.name) == 0:
                return True
            time.sleep(0.05)
        return False

    def close(self, timeout: float = 5.0) -> None:
        self.stop.set()
        self.thread.join(timeout)
