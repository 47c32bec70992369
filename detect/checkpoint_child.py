"""Checkpoint states encoded by a forked child process, so the detector's poll loop pays only for the fork.

Why a process: a checkpoint must be the state between two events, and encoding it is Python work
(~0.25 s for four busy partitions after 3 minutes at 5,000 events/s, plus the JSON text and zlib).
On the poll loop that stalled alert processing; on a thread of the same process it still held the
interpreter lock, so the loop was slowed for as long (measured: the periodic p99 spikes of the latency
bench match the checkpoints). ``fork`` gives the child a copy-on-write image of the state at that
instant (the consistency a checkpoint needs, for free) and the encoding runs on another core, as
Redis does for its snapshots.

What the child may do: run the pure engine's ``state_dict`` and ``detect.state.dumps`` and write the
results to a pipe; nothing that needs another thread's lock (the Kafka client, logging, the sinks:
threads do not survive a fork) and no clean-up of the parent's (``os._exit``). Memory: pages the child
reads are shared until either side writes them; encoding touches every state object, so budget up to
the size of the engine's state again while a child runs (``detect.checkpoint_fork = false`` encodes in
the detector's own process instead).

Frames on the pipe, one per partition: ``topic TAB partition TAB status TAB length NEWLINE`` then
``length`` bytes, status ``ok`` (the wire text), ``big`` (over the size limit) or ``err`` (a message).
"""

from __future__ import annotations

import gc
import os
import signal
import warnings
from typing import Callable, Iterable

from mailaudit.detect import state as st

Key = tuple[str, int]


class ChildFailed(RuntimeError):
    """The child ended without an answer for a partition (killed, out of memory, a broken pipe)."""


class ChildEncoding:
    """A child at work; ``result`` waits for it (on the checkpoint thread: reading the pipe and
    waiting for the child release the interpreter lock)."""

    def __init__(self, pid: int, fd: int, keys: list[Key]):
        self.pid = pid
        self.fd = fd
        self.keys = keys
        self.cpu_s = 0.0            # the child's user + system CPU, once it has ended

    def result(self) -> dict[Key, str | Exception]:
        """Each partition's wire text, or the error that kept it from being encoded."""
        chunks = []
        try:
            while True:
                b = os.read(self.fd, 1 << 20)
                if not b:
                    break
                chunks.append(b)
        finally:
            os.close(self.fd)
            _, status, usage = os.wait4(self.pid, 0)
            self.cpu_s = usage.ru_utime + usage.ru_stime
        out: dict[Key, str | Exception] = {}
        data = b"".join(chunks)
        pos = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl < 0:
                break
            topic, part, kind, n = data[pos:nl].decode("utf-8").split("\t")
            body = data[nl + 1:nl + 1 + int(n)]
            if len(body) < int(n):
                break
            pos = nl + 1 + int(n)
            text = body.decode("utf-8")
            key = (topic, int(part))
            out[key] = text if kind == "ok" else st.StateTooLarge(text) if kind == "big" else RuntimeError(text)
        for k in self.keys:
            if k not in out:
                out[k] = ChildFailed(f"checkpoint child ended without partition {k[0]}/{k[1]} "
                                     f"(wait status {status})")
        return out


def start(encode: Callable[[Key], str], keys: Iterable[Key]) -> ChildEncoding | None:
    """Fork a child that writes ``encode(key)`` for each key to a pipe; None where this system cannot
    fork (the caller encodes in-process then)."""
    keys = list(keys)
    if not hasattr(os, "fork"):
        return None
    r, w = os.pipe()
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns that a threaded process's child may deadlock on a lock another
            # thread held: the child here takes none (see the module docstring).
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        return None
    if pid == 0:                                       # the child: never returns
        code = 0
        try:
            os.close(r)
            gc.disable()                               # a collection would touch (copy) every page
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            for k in keys:
                try:
                    kind, text = "ok", encode(k)
                except st.StateTooLarge as e:
                    kind, text = "big", str(e)
                except Exception as e:  # noqa: BLE001 - reported to the parent, which logs it
                    kind, text = "err", f"{type(e).__name__}: {e}"
                body = text.encode("utf-8")
                _write_all(w, f"{k[0]}\t{k[1]}\t{kind}\t{len(body)}\n".encode("utf-8") + body)
        except BaseException:  # noqa: BLE001 - the parent sees the missing partitions
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    return ChildEncoding(pid, r, keys)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
