"""Provider signatures on webhook posts: Amazon SNS message signatures and SendGrid's Signed Event
Webhook (ECDSA). The shared secret of the receiver says "someone who knows the URL"; these say "the
provider itself", so a leaked URL alone cannot forge mail events.

- **SNS** signs a canonical string of the message's fields with the key of a certificate it serves
  from ``https://sns.<region>.amazonaws.com/....pem`` (SignatureVersion 1: SHA1withRSA, 2:
  SHA256withRSA). The certificate URL must be that host over HTTPS (otherwise an attacker names his
  own certificate); fetched certificates are cached. ``TopicArn`` can be restricted to a list.
- **SendGrid** signs ``timestamp + body`` (raw bytes) with ECDSA P-256/SHA-256; the public key
  (base64 DER, from the SendGrid console) is configured, the signature and timestamp come in the
  ``X-Twilio-Email-Event-Webhook-Signature`` / ``-Timestamp`` headers.

Uses the ``cryptography`` package. Pure apart from the certificate fetch, which is injectable.
"""

from __future__ import annotations

import base64
import re
import threading
import urllib.request
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

SNS_CERT_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?\Z")
SNS_TYPES = ("Notification", "SubscriptionConfirmation", "UnsubscribeConfirmation")
_SNS_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}
SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"
MAX_CERT_BYTES = 64 * 1024


class SignatureError(ValueError):
    """The post is not provably from the provider (the message says why, without echoing data)."""


def is_sns(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("Type") in SNS_TYPES


def sns_string_to_sign(doc: Mapping[str, Any]) -> bytes:
    """The canonical form SNS signs: ``name\\nvalue\\n`` for each present field, in this order."""
    kind = doc.get("Type")
    if kind not in _SNS_FIELDS:
        raise SignatureError("not an SNS message type")
    out = []
    for name in _SNS_FIELDS[kind]:
        value = doc.get(name)
        if value is None:
            if name == "Subject":
                continue
            raise SignatureError(f"SNS message lacks {name}")
        if not isinstance(value, str):
            raise SignatureError(f"SNS field {name} is not a string")
        out.append(f"{name}\n{value}\n")
    return "".join(out).encode("utf-8")


def check_cert_url(url: Any) -> str:
    if not isinstance(url, str):
        raise SignatureError("SigningCertURL missing")
    u = urlsplit(url)
    if u.scheme != "https" or not SNS_CERT_HOST.match(u.hostname or "") or u.port not in (None, 443) \
            or not u.path.endswith(".pem") or u.username or u.password:
        raise SignatureError("SigningCertURL is not an https://sns.<region>.amazonaws.com/... .pem URL")
    return url


def fetch_cert(url: str, timeout_s: float = 5.0) -> bytes:
    """Default certificate fetch (HTTPS with the system's CA store, host already checked)."""
    with urllib.request.urlopen(check_cert_url(url), timeout=timeout_s) as r:   # noqa: S310 - URL checked
        return r.read(MAX_CERT_BYTES + 1)[:MAX_CERT_BYTES]


class SnsVerifier:
    def __init__(self, fetch: Callable[[str], bytes] = fetch_cert, topic_arns: list[str] | None = None):
        self.fetch = fetch
        self.topic_arns = set(topic_arns or ())
        self._certs: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _public_key(self, url: str):
        with self._lock:
            key = self._certs.get(url)
        if key is None:
            try:
                cert = x509.load_pem_x509_certificate(self.fetch(url))
            except Exception as e:  # noqa: BLE001 - any failure means "cannot verify"
                raise SignatureError(f"signing certificate unusable ({type(e).__name__})") from None
            key = cert.public_key()
            if not isinstance(key, rsa.RSAPublicKey):
                raise SignatureError("signing certificate does not hold an RSA key")
            with self._lock:
                if len(self._certs) > 64:
                    self._certs.clear()
                self._certs[url] = key
        return key

    def verify(self, doc: Any) -> None:
        """Raise SignatureError unless ``doc`` is an SNS message signed by SNS (and of an allowed topic)."""
        if not is_sns(doc):
            raise SignatureError("not an SNS message")
        if self.topic_arns and doc.get("TopicArn") not in self.topic_arns:
            raise SignatureError("TopicArn is not one of adapt.sns_topic_arns")
        version = str(doc.get("SignatureVersion", ""))
        algo = {"1": hashes.SHA1(), "2": hashes.SHA256()}.get(version)
        if algo is None:
            raise SignatureError("unsupported SignatureVersion")
        try:
            sig = base64.b64decode(str(doc.get("Signature", "")), validate=True)
        except ValueError:
            raise SignatureError("Signature is not base64") from None
        key = self._public_key(check_cert_url(doc.get("SigningCertURL")))
        try:
            key.verify(sig, sns_string_to_sign(doc), padding.PKCS1v15(), algo)
        except InvalidSignature:
            raise SignatureError("SNS signature does not verify") from None


def load_sendgrid_key(public_key_b64: str):
    """The verification key as SendGrid shows it (base64 of the DER SubjectPublicKeyInfo), or PEM."""
    text = public_key_b64.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(text.encode())
        else:
            key = serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except ValueError as e:
        raise ValueError(f"adapt.sendgrid_public_key is not an EC public key ({e.__class__.__name__})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("adapt.sendgrid_public_key is not an EC public key")
    return key


class SendGridVerifier:
    def __init__(self, public_key_b64: str):
        self.key = load_sendgrid_key(public_key_b64)

    def verify(self, headers: Mapping[str, str], body: bytes) -> None:
        sig_b64 = headers.get(SENDGRID_SIGNATURE)
        ts = headers.get(SENDGRID_TIMESTAMP)
        if not sig_b64 or not ts:
            raise SignatureError("SendGrid signature headers missing")
        try:
            sig = base64.b64decode(sig_b64.strip(), validate=True)
        except ValueError:
            raise SignatureError("SendGrid signature is not base64") from None
        try:
            self.key.verify(sig, ts.encode("utf-8") + body, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError):
            raise SignatureError("SendGrid signature does not verify") from None


def receiver_options(provider: str, acfg) -> dict:
    """The ``Receiver`` keyword arguments that verify ``provider``'s signatures per ``AdaptConfig``."""
    opts: dict = {}
    if provider == "ses" and (acfg.sns_verify or acfg.sns_required):
        sns = SnsVerifier(topic_arns=acfg.sns_topic_arns)

        def verify_doc(doc: Any) -> None:
            if is_sns(doc) or acfg.sns_required:
                sns.verify(doc)
        opts["verify_doc"] = verify_doc
    if provider == "sendgrid" and acfg.sendgrid_public_key:
        opts["verify_body"] = SendGridVerifier(acfg.sendgrid_public_key).verify
    return opts
