"""Issue 14, finding 4: the webhook receiver against hostile clients and forged posts.

Raw sockets for what a well-behaved HTTP client cannot send (negative Content-Length, no body,
idle connections); keys and certificates generated here for the SNS and SendGrid signatures."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import socket
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from mailaudit.adapters import sendgrid, ses
from mailaudit.adapters.config import AdaptConfig
from mailaudit.adapters.http_receiver import Receiver
from mailaudit.adapters.signatures import (SENDGRID_SIGNATURE, SENDGRID_TIMESTAMP, SendGridVerifier,
                                           SignatureError, SnsVerifier, receiver_options, sns_string_to_sign)

from test_adapters_ses import SEND
from test_adapters_sendgrid import BATCH

SECRET = "hook-secret-123"
AUTH = {"X-Mailaudit-Secret": SECRET}


class Sink:
    def __init__(self):
        self.events = []

    def __call__(self, e):
        self.events.append(e)
        return True


@pytest.fixture
def serve():
    servers = []

    def start(receiver: Receiver) -> int:
        srv = receiver.serve("127.0.0.1:0")
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv.server_address[1]
    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def raw(port: int, data: bytes, wait_s: float = 10.0) -> bytes:
    """Send ``data`` and read until the server closes (or ``wait_s`` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if b"\r\n\r\n" in out and b"Content-Length: " in out:
                    head, _, body = out.partition(b"\r\n\r\n")
                    n = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                    if len(body) >= n:
                        break
        except socket.timeout:
            pass
        return out


def status(resp: bytes) -> int:
    return int(resp.split(b" ", 2)[1]) if resp else 0


def request(body: bytes, headers: dict, length: str | None = None) -> bytes:
    h = {"Host": "x", **headers}
    if length is not None:
        h["Content-Length"] = length
    return (b"POST / HTTP/1.1\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in h.items()) + b"\r\n" + body)


def ses_receiver(sink=None, **kw) -> Receiver:
    return Receiver(lambda d: ses.convert(d, AdaptConfig()), sink or Sink(), secret=SECRET, **kw)


@pytest.mark.parametrize("length,code", [("-1", 400), ("1e3", 400), (" 12x", 400), ("99999999999999999999", 400),
                                         (None, 411), (str(10_000_000), 413)])
def test_bad_or_huge_content_length_is_refused_without_reading(serve, length, code):
    port = serve(ses_receiver(max_body_bytes=1_000_000))
    assert status(raw(port, request(b"{}", AUTH, length))) == code


def test_secret_is_checked_before_the_body_is_read(serve):
    r = ses_receiver(timeout_s=30)
    port = serve(r)
    # 1 MB announced, nothing sent: a wrong secret is answered at once, not after the body.
    resp = raw(port, request(b"", {"X-Mailaudit-Secret": "wrong"}, "1000000"), wait_s=5)
    assert status(resp) == 401 and r.stats["rejected"] == 1


def test_a_silent_client_is_cut_off_by_the_socket_timeout(serve):
    port = serve(ses_receiver(timeout_s=0.5))
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")          # headers never finished
        assert s.recv(100) == b""                              # server closed the connection
    port2 = serve(ses_receiver(timeout_s=0.5))
    # Headers complete, body never sent: 408 or closed, never a hang.
    resp = raw(port2, request(b"", AUTH, "100"), wait_s=20)
    assert resp == b"" or status(resp) == 408


def test_connections_beyond_the_cap_get_503(serve):
    r = ses_receiver(timeout_s=30, max_concurrent=2)
    port = serve(r)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
    try:
        for s in idle:
            s.sendall(b"POST / HTTP/1.1\r\n")                 # hold a slot
        import time
        deadline = time.monotonic() + 10
        resp = b""
        while time.monotonic() < deadline:
            resp = raw(port, request(b"[]", AUTH, "2"), wait_s=5)
            if status(resp) == 503:
                break
        assert status(resp) == 503 and r.stats["busy"] >= 1
    finally:
        for s in idle:
            s.close()


def test_one_bad_record_is_skipped_not_the_batch():
    sink = Sink()
    r = ses_receiver(sink)
    bad_headers = copy.deepcopy(SEND)
    bad_headers["mail"]["headers"] = 5
    bad_time = copy.deepcopy(SEND)
    bad_time["mail"]["timestamp"] = 1e400
    bad_dest = copy.deepcopy(SEND)
    bad_dest["mail"]["destination"] = [{"x": 1}, None]
    code, doc = r.handle(AUTH, json.dumps([SEND, bad_headers, bad_time, bad_dest]).encode())
    assert code == 200 and doc["accepted"] >= 1 and sum(doc["skipped"].values()) >= 2, doc
    sg = Receiver(lambda d: sendgrid.convert(d, AdaptConfig()), Sink(), secret=SECRET)
    batch = copy.deepcopy(BATCH) + [{"event": "processed", "email": "x@y.org", "timestamp": 1e400, "smtp-id": "<z@q>"},
                                    {"event": "processed", "email": "x@y.org", "timestamp": float("nan"), "smtp-id": "<z@q>"}]
    code, doc = sg.handle(AUTH, json.dumps(batch).encode())
    assert code == 200 and doc["accepted"] == 2 and doc["skipped"]["bad_timestamp"] == 2


def test_a_converter_or_publisher_exception_is_an_answer_not_a_crash():
    def boom(_):
        raise RuntimeError("converter bug")
    assert Receiver(boom, Sink(), secret=None).handle({}, b"[]")[0] == 400

    def refuse(_):
        raise ValueError("unencodable")
    code, doc = Receiver(lambda d: ses.convert(d, AdaptConfig()), refuse, secret=None).handle({}, json.dumps(SEND).encode())
    assert code == 200 and doc["skipped"] == {"unpublishable": 1} and doc["accepted"] == 0


# --- SNS message signatures --------------------------------------------------------------------------

CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-test.pem"


@pytest.fixture(scope="module")
def sns_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    return key, cert.public_bytes(serialization.Encoding.PEM)


def sns_message(key, inner: dict, version: str = "2", **over) -> dict:
    doc = {"Type": "Notification", "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
           "TopicArn": "arn:aws:sns:eu-west-1:123456789012:ses-events", "Message": json.dumps(inner),
           "Timestamp": "2026-11-02T07:30:01.000Z", "SignatureVersion": version, "SigningCertURL": CERT_URL}
    algo = hashes.SHA256() if version == "2" else hashes.SHA1()
    doc["Signature"] = base64.b64encode(key.sign(sns_string_to_sign(doc), padding.PKCS1v15(), algo)).decode()
    doc.update(over)
    return doc


def test_sns_signature_verified(sns_key):
    key, pem = sns_key
    fetched = []

    def fetch(url):
        fetched.append(url)
        return pem
    v = SnsVerifier(fetch=fetch, topic_arns=["arn:aws:sns:eu-west-1:123456789012:ses-events"])
    for version in ("1", "2"):
        v.verify(sns_message(key, SEND, version))
    assert fetched == [CERT_URL]                                     # cached
    forged = sns_message(key, SEND)
    forged["Message"] = json.dumps({**SEND, "mail": {**SEND["mail"], "destination": ["evil@x.org"]}})
    for bad, why in ((forged, "does not verify"),
                     (sns_message(key, SEND, SigningCertURL="https://evil.example/x.pem"), "SigningCertURL"),
                     (sns_message(key, SEND, SigningCertURL="http://sns.eu-west-1.amazonaws.com/x.pem"), "SigningCertURL"),
                     (sns_message(key, SEND, SigningCertURL="https://sns.eu-west-1.amazonaws.com.evil.org/x.pem"), "SigningCertURL"),
                     (sns_message(key, SEND, TopicArn="arn:aws:sns:eu-west-1:999:other"), "TopicArn"),
                     (sns_message(key, SEND, SignatureVersion="3"), "SignatureVersion"),
                     (sns_message(key, SEND, Signature="!!!"), "base64")):
        with pytest.raises(SignatureError, match=why):
            v.verify(bad)


def test_receiver_refuses_unsigned_or_forged_sns_and_accepts_signed(sns_key):
    key, pem = sns_key
    acfg = AdaptConfig()
    sink = Sink()
    v = SnsVerifier(fetch=lambda url: pem)
    opts = receiver_options("ses", acfg)
    assert "verify_doc" in opts
    r = Receiver(lambda d: ses.convert(d, acfg), sink, secret=SECRET,
                 verify_doc=lambda d: v.verify(d) if d.get("Type") else None)
    assert r.handle(AUTH, json.dumps(sns_message(key, SEND)).encode())[0] == 200 and len(sink.events) == 1
    forged = sns_message(key, SEND)
    forged["Message"] = json.dumps({**SEND, "mail": {**SEND["mail"], "messageId": "forged"}})
    code, doc = r.handle(AUTH, json.dumps(forged).encode())
    assert code == 403 and len(sink.events) == 1
    unsigned = {k: v for k, v in sns_message(key, SEND).items() if k != "Signature"}
    assert r.handle(AUTH, json.dumps(unsigned).encode())[0] == 403
    # sns_required: a bare record (no SNS envelope) is refused too.
    strict = receiver_options("ses", AdaptConfig(sns_required=True))["verify_doc"]
    with pytest.raises(SignatureError):
        strict(SEND)


# --- SendGrid signed event webhook ---------------------------------------------------------------------

def test_sendgrid_ecdsa_signature(serve):
    key = ec.generate_private_key(ec.SECP256R1())
    pub = base64.b64encode(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    acfg = AdaptConfig(sendgrid_public_key=pub)
    sink = Sink()
    r = Receiver(lambda d: sendgrid.convert(d, acfg), sink, secret=SECRET, **receiver_options("sendgrid", acfg))
    port = serve(r)
    body = json.dumps(BATCH).encode()
    ts = "1793604700"

    def signed(payload: bytes, stamp: str = ts) -> dict:
        sig = base64.b64encode(key.sign(stamp.encode() + payload, ec.ECDSA(hashes.SHA256()))).decode()
        return {**AUTH, SENDGRID_SIGNATURE: sig, SENDGRID_TIMESTAMP: stamp}

    assert status(raw(port, request(body, signed(body), str(len(body))))) == 200 and len(sink.events) == 2
    tampered = body.replace(b"reader2@example.org", b"readerX@example.org")
    assert status(raw(port, request(tampered, signed(body), str(len(tampered))))) == 403
    other_ts = {**signed(body), SENDGRID_TIMESTAMP: "1793604701"}
    assert status(raw(port, request(body, other_ts, str(len(body))))) == 403
    assert status(raw(port, request(body, AUTH, str(len(body))))) == 403       # unsigned
    assert len(sink.events) == 2
    with pytest.raises(ValueError, match="EC public key"):
        SendGridVerifier(base64.b64encode(b"not a key").decode())
