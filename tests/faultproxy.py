"""A TCP proxy on a free loopback port that makes a real server slow, stuck or unreachable on demand.

Fault tests put it between a client (the ingest consumer, a detector's ClickHouse sink) and the real
server, so that the server itself keeps running for every other test while this client sees:

- ``delay_s``: every chunk forwarded (either direction) waits this long first — a slow server;
- ``stall()`` / ``resume()``: bytes stop moving both ways and new connections wait — a hung server
  or a network partition that TCP has not noticed yet; nothing is lost, it flows again on resume;
- ``cut()``: every open connection is reset; with ``refuse=True`` new ones are closed at once
  too — a server that is down.

One thread per direction per connection; plenty for a test and easy to reason about.
"""

from __future__ import annotations

import socket
import threading
import time

_CHUNK = 65536


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.delay_s = 0.0
        self.refuse = False
        self.chunks = 0                       # chunks forwarded, both directions (a liveness figure)
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.2)
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="faultproxy-accept", daemon=True)

    # -- controls ------------------------------------------------------------------------------
    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    @property
    def stalled(self) -> bool:
        return not self._flowing.is_set()

    def cut(self, refuse: bool = False) -> None:
        """Drop every open connection; with ``refuse`` new ones are dropped at once too."""
        self.refuse = refuse
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for s in conns:
            _drop(s)

    def heal(self) -> None:
        """Back to a healthy link: no delay, flowing, accepting."""
        self.delay_s = 0.0
        self.refuse = False
        self.resume()

    def close(self) -> None:
        self._closed.set()
        self.resume()
        self.cut()
        self._thread.join(2)
        self._listener.close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals -----------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._open, args=(client,), daemon=True).start()

    def _open(self, client: socket.socket) -> None:
        # A stalled link also holds new connections (a hung server still completes the TCP
        # handshake in the kernel; nothing answers after that).
        while not self._flowing.wait(0.1):
            if self._closed.is_set():
                break
        if self.refuse or self._closed.is_set():
            _drop(client)
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _drop(client)
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._conns.update((client, upstream))
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(_CHUNK)
                if not data:
                    break
                while not self._flowing.wait(0.1):
                    if self._closed.is_set():
                        return
                if self.delay_s:
                    time.sleep(self.delay_s)
                dst.sendall(data)
                self.chunks += 1
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
            for s in (src, dst):
                _drop(s)
                s.close()


def _drop(s: socket.socket) -> None:
    # shutdown, not just close: it also wakes the pump thread blocked in recv() on this socket.
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
