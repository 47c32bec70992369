"""A small HTTP receiver for provider webhooks (SES through SNS, SendGrid Event Webhook).

Stdlib ``http.server``: one POST is one batch, converted and handed to ``publish``. The provider retries
on any non-2xx answer, so the receiver answers 200 only once every event of the batch is in the
publisher's buffer, and 503 when it is not (Kafka down long enough to fill the buffer): nothing is lost
while the provider keeps its retry window.

Authentication is a shared secret (HTTP Basic password in the webhook URL,
``https://mailaudit:SECRET@host/ses``, which both SNS and SendGrid support; ``Authorization: Bearer
SECRET``; or ``X-Mailaudit-Secret``), compared in constant time and checked from the headers *before*
the body is read; plus, when configured, the provider's own signature (``signatures.py``: SNS message
signatures, SendGrid's signed event webhook). Run it behind a TLS-terminating proxy; it listens on
loopback by default.

Hostile-client limits (issue 14): a Content-Length is required, must be a plain non-negative number
and at most ``max_body_bytes``; the body must arrive within ``body_timeout_s``; every socket read has
``timeout_s``; at most ``max_concurrent`` connections are served at once (the rest get 503 and
close). One bad record in a batch is skipped and counted (``skipped``), never an exception that makes
the provider retry the whole batch.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from mailaudit.adapters.events import Converted
from mailaudit.adapters.signatures import SignatureError
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
                 secret: str | None, max_body_bytes: int = 8 * 1024 * 1024, path: str = "/",
                 verify_body: Callable[[Any, bytes], None] | None = None,
                 verify_doc: Callable[[Any], None] | None = None,
                 timeout_s: float = 10.0, body_timeout_s: float = 60.0, max_concurrent: int = 16):
        self.convert = convert
        self.publish = publish
        self.secret = secret
        self.max_body_bytes = max_body_bytes
        self.path = path
        self.verify_body = verify_body      # (headers, raw body) -> None or SignatureError (SendGrid)
        self.verify_doc = verify_doc        # parsed JSON -> None or SignatureError (SNS)
        self.timeout_s = timeout_s
        self.body_timeout_s = body_timeout_s
        self.max_concurrent = max(1, int(max_concurrent))
        self.stats = {"requests": 0, "events": 0, "skipped": 0, "rejected": 0, "unpublished": 0, "busy": 0}
        self._lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def _count(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                self.stats[k] += v

    def authorized(self, headers) -> bool:
        return secret_ok(headers, self.secret)

    def handle(self, headers, body: bytes) -> tuple[int, dict]:
        """Status and JSON answer for one POST body; separate from the socket so tests can call it."""
        self._count(requests=1)
        if not self.authorized(headers):
            self._count(rejected=1)
            return 401, {"error": "bad or missing secret"}
        try:
            if self.verify_body is not None:
                self.verify_body(headers, body)
            doc = json.loads(body)
            if self.verify_doc is not None:
                self.verify_doc(doc)
        except SignatureError as e:
            self._count(rejected=1)
            return 403, {"error": f"signature: {e}"}
        except (ValueError, UnicodeDecodeError, RecursionError):
            self._count(rejected=1)
            return 400, {"error": "body is not JSON"}
        try:
            result = self.convert(doc)
        except Exception as e:  # noqa: BLE001 - a converter bug must not make the provider retry forever
            log.error("conversion failed: %s", type(e).__name__)
            self._count(rejected=1)
            return 400, {"error": "body could not be converted"}
        for note in result.notes:
            log.warning("%s", note)
        failed = 0
        for event in result.events:
            try:
                ok = self.publish(event)
            except Exception as e:  # noqa: BLE001 - e.g. an event the wire encoder refuses: one record
                log.warning("event not publishable: %s", type(e).__name__)
                result.skip("unpublishable")
                continue
            if not ok:
                failed += 1
        accepted = len(result.events) - failed - result.skipped.get("unpublishable", 0)
        skipped = sum(result.skipped.values())
        self._count(events=accepted, skipped=skipped, unpublished=failed)
        if failed:
            return 503, {"error": f"{failed} event(s) could not be queued for Kafka; retry later"}
        return 200, {"accepted": accepted, "skipped": result.skipped}

    def serve(self, listen: str) -> ThreadingHTTPServer:
        host, _, port = listen.rpartition(":")
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            timeout = receiver.timeout_s            # every socket read (StreamRequestHandler.setup)

            def do_POST(self):  # noqa: N802
                try:
                    self._post()
                except TimeoutError:
                    self.close_connection = True
                except Exception as e:  # noqa: BLE001 - never a traceback to the client or stderr
                    log.error("request failed: %s", type(e).__name__)
                    self.close_connection = True
                    try:
                        self._answer(500, {"error": "internal error"})
                    except OSError:
                        pass

            def _post(self):
                if self.path.split("?")[0].rstrip("/") != receiver.path.rstrip("/"):
                    return self._answer(404, {"error": "not found"})
                # Headers first: no body is read for an unauthenticated client.
                if not receiver.authorized(self.headers):
                    receiver._count(requests=1, rejected=1)
                    self.close_connection = True
                    return self._answer(401, {"error": "bad or missing secret"})
                if self.headers.get("Transfer-Encoding"):
                    self.close_connection = True
                    return self._answer(411, {"error": "chunked bodies are not accepted; send Content-Length"})
                raw = (self.headers.get("Content-Length") or "").strip()
                if not raw:
                    self.close_connection = True
                    return self._answer(411, {"error": "Content-Length required"})
                if not raw.isdigit() or len(raw) > 15:
                    self.close_connection = True
                    return self._answer(400, {"error": "bad Content-Length"})
                length = int(raw)
                if length > receiver.max_body_bytes:
                    self.close_connection = True
                    return self._answer(413, {"error": "body too large"})
                body = self._read(length)
                if body is None:
                    self.close_connection = True
                    return self._answer(408, {"error": "body not received in time"})
                status, doc = receiver.handle(self.headers, body)
                self._answer(status, doc)

            def _read(self, length: int) -> bytes | None:
                """Exactly ``length`` bytes within ``body_timeout_s`` overall (a slow drip is cut off)."""
                deadline = time.monotonic() + receiver.body_timeout_s
                chunks, left = [], length
                while left:
                    if time.monotonic() > deadline:
                        return None
                    chunk = self.rfile.read1(min(left, 65536)) if hasattr(self.rfile, "read1") \
                        else self.rfile.read(min(left, 65536))
                    if not chunk:
                        return None
                    chunks.append(chunk)
                    left -= len(chunk)
                return b"".join(chunks)

            def do_GET(self):  # noqa: N802
                if self.path == "/healthz":
                    return self._answer(200, {"ok": True, **receiver.stats})
                self._answer(404, {"error": "not found"})

            def _answer(self, status: int, doc: dict):
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt, *args):
                log.debug("%s %s", self.address_string(), fmt % args)

        self.server = _BoundedServer((host.strip("[]") or "127.0.0.1", int(port)), Handler, receiver)
        self.server.daemon_threads = True
        return self.server


class _BoundedServer(ThreadingHTTPServer):
    """At most ``max_concurrent`` connections in service; one more is answered 503 at once and closed,
    so a flood of idle connections cannot pin an unbounded number of threads."""

    def __init__(self, address, handler, receiver: Receiver):
        self._slots = threading.BoundedSemaphore(receiver.max_concurrent)
        self._receiver = receiver
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self._receiver._count(busy=1)
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()
