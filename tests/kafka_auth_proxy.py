"""A Kafka-protocol front for tansu that terminates TLS and SASL (PLAIN, SCRAM-SHA-256/512).

Why it exists: the local broker (tansu 0.6.0, memory storage) cannot authenticate anyone —
``tansu user create`` answers success but stores nothing, so with ``--authentication`` every SCRAM
login ends ``e=unknown-user``; and its ``--cert``/``--key`` options refuse to be given together, so
it cannot serve TLS either (both verified, see docs/security.md). This proxy does exactly the
broker's side of those handshakes, the way Apache Kafka does on a SASL/SSL listener: TLS first
(optionally requiring a client certificate), then ``SaslHandshake`` + ``SaslAuthenticate`` (RFC 5802
SCRAM with the proof checked against the password, or PLAIN), and it refuses any other request before
authentication. After that it pipes bytes to tansu, whose advertised listener is the proxy's
address, so every client connection (bootstrap, metadata, group coordinator, produce, fetch) goes
through it. The clients under test are the unmodified kafka-python clients built by mailaudit.

Test support only; not part of the product.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import socket
import ssl
import struct
import threading
from collections import Counter

SASL_HANDSHAKE, SASL_AUTHENTICATE, API_VERSIONS = 17, 36, 18
ERR_UNSUPPORTED_MECHANISM, ERR_AUTH_FAILED, ERR_ILLEGAL_STATE = 33, 58, 34
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _uvarint(b: bytes, i: int) -> tuple[int, int]:
    shift = n = 0
    while True:
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        if not c & 0x80:
            return n, i
        shift += 7


def _enc_uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        c = n & 0x7F
        n >>= 7
        out.append(c | (0x80 if n else 0))
        if not n:
            return bytes(out)


class _Scram:
    def __init__(self, mechanism: str, users: dict[str, str], iterations: int = 4096):
        self.hash = hashlib.sha256 if mechanism.endswith("256") else hashlib.sha512
        self.hname = "sha256" if mechanism.endswith("256") else "sha512"
        self.users = users
        self.iterations = iterations
        self.state = "first"
        self.user = None

    def _h(self, data: bytes) -> bytes:
        return self.hash(data).digest()

    def _hmac(self, key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, self.hash).digest()

    def step(self, msg: bytes) -> tuple[bool | None, bytes]:
        """(None, reply) to continue, (True, reply) when authenticated, (False, b"") on failure."""
        text = msg.decode("utf-8")
        if self.state == "first":
            parts = text.split(",", 2)
            if len(parts) < 3 or parts[0] not in ("n", "y"):
                return False, b""
            self.first_bare = parts[2]
            attrs = dict(a.split("=", 1) for a in self.first_bare.split(",") if "=" in a)
            self.user = attrs.get("n", "").replace("=2C", ",").replace("=3D", "=")
            if self.user not in self.users:
                return False, b""
            self.nonce = attrs["r"] + base64.b64encode(os.urandom(18)).decode()
            self.salt = os.urandom(16)
            self.server_first = f"r={self.nonce},s={base64.b64encode(self.salt).decode()},i={self.iterations}"
            self.state = "final"
            return None, self.server_first.encode()
        if self.state == "final":
            without_proof, _, proof = text.rpartition(",p=")
            attrs = dict(a.split("=", 1) for a in without_proof.split(",") if "=" in a)
            if attrs.get("r") != self.nonce:
                return False, b""
            salted = hashlib.pbkdf2_hmac(self.hname, self.users[self.user].encode(), self.salt, self.iterations)
            client_key = self._hmac(salted, b"Client Key")
            stored = self._h(client_key)
            auth_message = f"{self.first_bare},{self.server_first},{without_proof}".encode()
            signature = self._hmac(stored, auth_message)
            recovered = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature))
            if not hmac.compare_digest(self._h(recovered), stored):
                return False, b""
            server_sig = self._hmac(self._hmac(salted, b"Server Key"), auth_message)
            self.state = "done"
            return True, b"v=" + base64.b64encode(server_sig)
        return False, b""


class KafkaAuthProxy:
    """``KafkaAuthProxy(upstream_port, users={"u": "pw"} or None, ssl_context=None).start() -> port``."""

    def __init__(self, upstream_port: int, users: dict[str, str] | None = None,
                 ssl_context: ssl.SSLContext | None = None, port: int | None = None):
        self.upstream_port = upstream_port
        self.users = users
        self.ssl_context = ssl_context
        self.port = port or _free_port()
        self.authenticated: Counter = Counter()     # (mechanism, user) -> connections
        self.failures = 0
        self.refused_unauthenticated = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server = None

    def start(self) -> int:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", self.port, ssl=self.ssl_context), self._loop)
        self._server = fut.result(10)
        return self.port

    def stop(self) -> None:
        async def _close():
            self._server.close()
        asyncio.run_coroutine_threadsafe(_close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # -- per connection ---------------------------------------------------------------------------
    async def _handle(self, reader, writer):
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        try:
            if self.users is not None and not await self._authenticate(reader, writer, up_r, up_w):
                return
            await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        finally:
            for w in (writer, up_w):
                try:
                    w.close()
                except Exception:  # noqa: BLE001
                    pass

    @staticmethod
    async def _pipe(r, w):
        try:
            while True:
                data = await r.read(65536)
                if not data:
                    break
                w.write(data)
                await w.drain()
        finally:
            try:
                w.close()
            except Exception:  # noqa: BLE001
                pass

    @staticmethod
    async def _frame(reader) -> bytes:
        (n,) = struct.unpack(">i", await reader.readexactly(4))
        return await reader.readexactly(n)

    async def _authenticate(self, reader, writer, up_r, up_w) -> bool:
        mechanism, scram = None, None
        while True:
            req = await self._frame(reader)
            api_key, version, corr = struct.unpack(">hhi", req[:8])
            (cid_len,) = struct.unpack(">h", req[8:10])
            body = 10 + max(cid_len, 0)
            if api_key == API_VERSIONS:
                up_w.write(struct.pack(">i", len(req)) + req)
                await up_w.drain()
                resp = await self._frame(up_r)
                writer.write(struct.pack(">i", len(resp)) + resp)
                await writer.drain()
                continue
            if api_key == SASL_HANDSHAKE:
                (mlen,) = struct.unpack(">h", req[body:body + 2])
                mechanism = req[body + 2:body + 2 + mlen].decode()
                ok = mechanism in MECHANISMS
                names = b"".join(struct.pack(">h", len(m)) + m.encode() for m in MECHANISMS)
                self._send(writer, struct.pack(">i", corr) + struct.pack(">h", 0 if ok else ERR_UNSUPPORTED_MECHANISM)
                           + struct.pack(">i", len(MECHANISMS)) + names)
                await writer.drain()
                if not ok:
                    self.failures += 1
                    return False
                scram = _Scram(mechanism, self.users) if mechanism.startswith("SCRAM") else None
                continue
            if api_key == SASL_AUTHENTICATE and mechanism:
                flexible = version >= 2
                if flexible:
                    _tags, body = _uvarint(req, body)
                    blen, body = _uvarint(req, body)
                    token = req[body:body + blen - 1]
                else:
                    (blen,) = struct.unpack(">i", req[body:body + 4])
                    token = req[body + 4:body + 4 + blen]
                if scram is None:                                   # PLAIN: authzid \0 user \0 password
                    parts = token.split(b"\0")
                    done = len(parts) == 3 and self.users.get(parts[1].decode()) == parts[2].decode()
                    user, reply = (parts[1].decode() if len(parts) == 3 else ""), b""
                    done = True if done else False
                else:
                    done, reply = scram.step(token)
                    user = scram.user
                self._send(writer, self._auth_response(corr, version, done is not False, reply))
                await writer.drain()
                if done is False:
                    self.failures += 1
                    return False
                if done:
                    self.authenticated[(mechanism, user)] += 1
                    return True
                continue
            # Anything else before authentication: a real SASL listener drops the connection.
            self.refused_unauthenticated += 1
            return False

    @staticmethod
    def _send(writer, payload: bytes) -> None:
        writer.write(struct.pack(">i", len(payload)) + payload)

    @staticmethod
    def _auth_response(corr: int, version: int, ok: bool, token: bytes) -> bytes:
        err = 0 if ok else ERR_AUTH_FAILED
        msg = None if ok else b"Authentication failed"
        if version >= 2:
            out = struct.pack(">i", corr) + b"\x00" + struct.pack(">h", err)
            out += _enc_uvarint(0) if msg is None else _enc_uvarint(len(msg) + 1) + msg
            out += _enc_uvarint(len(token) + 1) + token + struct.pack(">q", 0) + b"\x00"
            return out
        out = struct.pack(">i", corr) + struct.pack(">h", err)
        out += struct.pack(">h", -1) if msg is None else struct.pack(">h", len(msg)) + msg
        out += struct.pack(">i", len(token)) + token
        if version >= 1:
            out += struct.pack(">q", 0)
        return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_ssl_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    return ctx
