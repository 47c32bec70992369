"""A small HTTP receiver for provider webhooks (SES through SNS, SendGrid Event Webhook).

Stdlib ``http.server``: one POST is one batch, converted and handed to ``publish``. The provider retries
on any non-2xx answer, so the receiver answers 200 only once every event of the batch is in the
publisher's buffer, and 503 when it is not (Kafka down long enough to fill the buffer): nothing is lost
while the provider keeps its retry window.

Authentication is a shared secret, since neither provider signs in a way stdlib can check: give it as
HTTP Basic password in the webhook URL (``https://mailaudit:SECRET@host/ses``, which both SNS and
SendGrid support), as ``Authorization: Bearer SECRET``, or as ``X-Mailaudit-Secret``. Compared in
constant time. Run it behind a TLS-terminating proxy; it listens on loopback by default.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from mailaudit.adapters.events import Converted
from mailaudit.ingest.wire import Event

log = logging.getLogger("mailaudit.adapt")


def secret_ok(headers, secret: str | None) -> bool:
    if not secret:
        return True
    want = secret.encode("utf-8")
    given = headers.get("X-Mailaudit-Secret")
    auth = headers.get("Authorization") or ""
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer":
        given = value.strip()
    elif scheme.lower() == "basic":
        try:
            given = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return False
    return given is not None and hmac.compare_digest(given.encode("utf-8"), want)


class Receiver:
    def __init__(self, convert: Callable[[Any], Converted], publish: Callable[[Event], bool], *,
                 secret: str | None, max_body_bytes: int = 8 * 1024 * 1024, path: str = "/"):
        self.convert = convert
        self.publish = publish
        self.secret = secret
        self.max_body_bytes = max_body_bytes
        self.path = path
        self.stats = {"requests": 0, "events": 0, "skipped": 0, "rejected": 0, "unpublished": 0}
        self._lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def _count(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                self.stats[k] += v

    def handle(self, headers, body: bytes) -> tuple[int, dict]:
        """Status and JSON answer for one POST body; separate from the socket so tests can call it."""
        self._count(requests=1)
        if not secret_ok(headers, self.secret):
            self._count(rejected=1)
            return 401, {"error": "bad or missing secret"}
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            self._count(rejected=1)
            return 400, {"error": "body is not JSON"}
        result = self.convert(doc)
        for note in result.notes:
            log.warning("%s", note)
        failed = 0
        for event in result.events:
            if not self.publish(event):
                failed += 1
        skipped = sum(result.skipped.values())
        self._count(events=len(result.events) - failed, skipped=skipped, unpublished=failed)
        if failed:
            return 503, {"error": f"{failed} event(s) could not be queued for Kafka; retry later"}
        return 200, {"accepted": len(result.events), "skipped": result.skipped}

    def serve(self, listen: str) -> ThreadingHTTPServer:
        host, _, port = listen.rpartition(":")
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                if self.path.split("?")[0].rstrip("/") != receiver.path.rstrip("/"):
                    return self._answer(404, {"error": "not found"})
                try:
                    length = int(self.headers.get("Content-Length") or "0")
                except ValueError:
                    return self._answer(400, {"error": "bad Content-Length"})
                if length > receiver.max_body_bytes:
                    return self._answer(413, {"error": "body too large"})
                status, doc = receiver.handle(self.headers, self.rfile.read(length))
                self._answer(status, doc)

            def do_GET(self):  # noqa: N802
                if self.path == "/healthz":
                    return self._answer(200, {"ok": True, **receiver.stats})
                self._answer(404, {"error": "not found"})

            def _answer(self, status: int, doc: dict):
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt, *args):
                log.debug("%s %s", self.address_string(), fmt % args)

        self.server = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), Handler)
        self.server.daemon_threads = True
        return self.server
