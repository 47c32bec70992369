"""A local, append-only outbox between detection and its sinks.

Detection appends every record (alert, exposure rows, control command) to the outbox and moves on;
each sink reads the outbox at its own pace from its own cursor and advances the cursor only after
delivery. So a sink that is down (webhook endpoint, ClickHouse, Kafka) never blocks detection, never
loses a record (it is on disk), and never holds back the other sinks. Offsets of ``mail.headers`` are
committed only after the records they produced are in the outbox (fsync'd), which is what makes
"no alert is lost" hold across a crash of the detector itself.

Format: segment files ``NNNNNNNN.jsonl`` of one JSON document per line; cursors ``<sink>.cursor``
hold ``segment:byte_offset``. Segments every sink has passed are deleted.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Iterator

SEGMENT_BYTES = 32 * 1024 * 1024


def _private_append(path: Path):
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")


class Outbox:
    def __init__(self, directory: str | os.PathLike, sinks: list[str], segment_bytes: int = SEGMENT_BYTES):
        self.dir = Path(directory)
        # Alert and exposure records hold hashes and masks: owner-only, whatever the umask (issue 14).
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        self.sinks = list(sinks)
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._new_data = threading.Condition(self._lock)
        segs = self._segments()
        self._seg = segs[-1] if segs else 0
        self._fh = _private_append(self._path(self._seg))

    def _path(self, seg: int) -> Path:
        return self.dir / f"{seg:08d}.jsonl"

    def _segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.dir.glob("*.jsonl") if p.stem.isdigit())

    # -- writer side ----------------------------------------------------------------------------
    def append(self, records: list[dict[str, Any]], sync: bool = True) -> None:
        if not records:
            return
        data = b"".join(json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
                        for r in records)
        with self._lock:
            self._fh.write(data)
            self._fh.flush()
            if sync:
                os.fsync(self._fh.fileno())
            if self._fh.tell() >= self.segment_bytes:
                self._fh.close()
                self._seg += 1
                self._fh = _private_append(self._path(self._seg))
            self._new_data.notify_all()

    def close(self) -> None:
        with self._lock:
            self._fh.close()
            self._new_data.notify_all()

    # -- reader side ----------------------------------------------------------------------------
    def cursor(self, sink: str) -> tuple[int, int]:
        try:
            seg, off = (self.dir / f"{sink}.cursor").read_text().split(":")
            return int(seg), int(off)
        except (OSError, ValueError):
            segs = self._segments()
            return (segs[0] if segs else 0), 0

    def set_cursor(self, sink: str, pos: tuple[int, int]) -> None:
        tmp = self.dir / f"{sink}.cursor.tmp"
        tmp.write_text(f"{pos[0]}:{pos[1]}")
        os.replace(tmp, self.dir / f"{sink}.cursor")
        self._gc()

    def read(self, pos: tuple[int, int], max_records: int = 1000) -> tuple[list[dict[str, Any]], tuple[int, int]]:
        """Records after ``pos`` (complete lines only) and the position after them."""
        seg, off = pos
        out: list[dict[str, Any]] = []
        while len(out) < max_records:
            path = self._path(seg)
            if not path.exists():
                if seg < self._seg:
                    seg, off = seg + 1, 0
                    continue
                break
            with open(path, "rb") as f:
                f.seek(off)
                for line in f:
                    if not line.endswith(b"\n"):
                        break                      # a record being written: take it next time
                    off += len(line)
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass                       # a torn line after a crash: skip, never stop
                    if len(out) >= max_records:
                        break
            if len(out) >= max_records or seg >= self._seg:
                break
            seg, off = seg + 1, 0
        return out, (seg, off)

    def wait(self, timeout: float) -> None:
        with self._new_data:
            self._new_data.wait(timeout)

    def backlog(self, sink: str) -> int:
        """Bytes not yet delivered to ``sink`` (a health figure)."""
        seg, off = self.cursor(sink)
        total = 0
        for s in self._segments():
            if s >= seg:
                size = self._path(s).stat().st_size
                total += size - (off if s == seg else 0)
        return total

    def _gc(self) -> None:
        oldest = min((self.cursor(s)[0] for s in self.sinks), default=0)
        for s in self._segments():
            if s < oldest and s < self._seg:
                self._path(s).unlink(missing_ok=True)

    def iter_all(self) -> Iterator[dict[str, Any]]:
        pos = (self._segments()[0] if self._segments() else 0, 0)
        while True:
            recs, pos2 = self.read(pos)
            if not recs:
                return
            yield from recs
            pos = pos2
