"""Per-partition detector checkpoints in ClickHouse, so any replica can take a partition over.

A checkpoint is (group, topic, partition) -> read position, the partition's engine state in the
versioned non-pickle form of ``detect.state``, and the outbox records not yet delivered by every sink.
The table is a ReplacingMergeTree(version) (schema migration 4) with version = read position, read with
FINAL: the furthest checkpoint wins, and every checkpoint is a consistent (state, position) pair.

A local copy of each checkpoint is also kept in the replica's state directory (a cache, not shared):
it lets a single detector restart while ClickHouse is down; on restore the furthest of the two wins.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailaudit.detect import state as st

# json.dumps is one C call that holds the GIL for all of its input (~90 ms for a busy partition's
# 8 MB state): on the checkpoint thread that would still stall the poll loop. Encoded in pieces of
# about this many values, the interpreter can switch threads in between.
_PIECE = 4096
_BIG = 64          # a container with more items than this is encoded piece by piece itself


def _json_pieces(v: Any, out: list[str]) -> None:
    """``v`` as compact JSON (exactly the text ``json.dumps(v, separators=(",", ":"),
    ensure_ascii=False)`` gives), appended to ``out`` in pieces that each hold the GIL briefly."""
    t = type(v)
    if t is dict and not all(type(k) is str for k in v):
        out.append(_dumps(v))               # json.dumps turns such keys into strings: leave it to it
        return
    if t is not list and t is not dict:
        out.append(_dumps(v))
        return
    is_list = t is list
    out.append("[" if is_list else "{")
    n = len(out)
    batch: list = []
    weight = 0

    def flush() -> None:
        nonlocal batch, weight
        if batch:
            if len(out) > n:
                out.append(",")
            out.append(_dumps(batch)[1:-1] if is_list else _dumps(dict(batch))[1:-1])
            batch, weight = [], 0

    for item in (v if is_list else v.items()):
        x = item if is_list else item[1]
        tx = type(x)
        if (tx is list or tx is dict) and len(x) > _BIG:
            flush()
            if len(out) > n:
                out.append(",")
            if not is_list:
                out.append(_dumps(item[0]) + ":")
            _json_pieces(x, out)
        else:
            batch.append(item)
            weight += 1 + (len(x) if tx is list or tx is dict else 0)
            if weight >= _PIECE:
                flush()
    flush()
    out.append("]" if is_list else "}")


def _dumps(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def wire_dumps(doc: Any, max_bytes: int) -> str:
    """``st.dumps(doc, max_bytes=max_bytes)`` (the same wire text, read back by ``st.loads``), built in
    pieces so that a checkpoint thread lets the poll loop run (zlib releases the GIL by itself)."""
    pieces: list[str] = []
    _json_pieces(doc, pieces)
    return st.wrap("".join(pieces).encode("utf-8"), max_bytes=max_bytes)

log = logging.getLogger("mailaudit.detect.checkpoints")


@dataclass
class Checkpoint:
    topic: str
    partition: int
    position: int
    state: Any                                # engine.state_dict() (None once encoded: state_wire)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    writer: str = ""
    state_wire: str | None = None             # the state already in its wire form (detect.checkpoint_child)

    def to_wire(self, max_bytes: int) -> tuple[str, str]:
        state = self.state_wire if self.state_wire is not None else wire_dumps(self.state, max_bytes)
        return state, wire_dumps(self.outbox, max_bytes)

    @classmethod
    def from_wire(cls, topic: str, partition: int, position: int, state: str, outbox: str, writer: str,
                  max_bytes: int) -> "Checkpoint":
        out = st.loads(outbox, max_bytes) if outbox else []
        if not isinstance(out, list) or not all(isinstance(r, dict) and "type" in r for r in out):
            raise st.StateError("checkpoint outbox is not a list of records")
        return cls(topic, partition, int(position), st.loads(state, max_bytes), out, writer)


class CheckpointStore:
    """``save`` / ``load`` per partition: ClickHouse (shared) plus a local cache file."""

    def __init__(self, db, group: str, local_dir: str | os.PathLike | None, max_bytes: int = st.MAX_BYTES):
        self.db = db
        self.group = group
        self.local = Path(local_dir) if local_dir else None
        self.max_bytes = max_bytes
        self.writer = f"{socket.gethostname()}:{os.getpid()}"

    def _local_path(self, topic: str, partition: int) -> Path:
        safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in topic)
        return self.local / f"checkpoint-{safe}-{partition}.state"

    def save(self, cps: list[Checkpoint]) -> tuple[list[Checkpoint], bool]:
        """Write every checkpoint locally, then to ClickHouse in one insert: (the checkpoints written,
        whether ClickHouse took them). One over the size limit is skipped: the previous checkpoint stays,
        and whoever restores it re-reads from its position and re-derives the same alerts."""
        rows, written = [], []
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0, tzinfo=None)
        for cp in cps:
            try:
                state, outbox = cp.to_wire(self.max_bytes)
            except st.StateTooLarge as e:
                log.error("partition %s/%d not checkpointed: %s", cp.topic, cp.partition, e)
                continue
            if self.local is not None:
                p = self._local_path(cp.topic, cp.partition)
                tmp = p.with_suffix(".tmp")
                tmp.write_text(json.dumps({"position": cp.position, "state": state, "outbox": outbox,
                                           "writer": self.writer}))
                os.replace(tmp, p)
            rows.append((self.group, cp.topic, cp.partition, max(cp.position, 0), cp.position, now, self.writer,
                         state, outbox))
            written.append(cp)
        if not rows:
            return written, True
        try:
            self.db.insert_rows("detect_checkpoints", ("group_id", "topic", "partition", "version", "position",
                                                       "written_at", "writer", "state", "outbox"), rows)
            return written, True
        except Exception as e:  # noqa: BLE001 - the local copy holds it; the next checkpoint retries
            log.warning("checkpoint to ClickHouse failed (kept locally): %s", e)
            try:
                self.db.disconnect()
            except Exception:  # noqa: BLE001
                pass
            return written, False

    def load_shared(self, topic: str, partition: int) -> Checkpoint | None:
        """The furthest checkpoint in ClickHouse (raises when ClickHouse cannot be read)."""
        rows = self.db.execute(
            "SELECT position, state, outbox, writer FROM {db}.detect_checkpoints FINAL "
            "WHERE group_id = %(g)s AND topic = %(t)s AND partition = %(p)s ORDER BY version DESC LIMIT 1",
            {"g": self.group, "t": topic, "p": partition})
        if not rows:
            return None
        pos, state, outbox, writer = rows[0]
        return Checkpoint.from_wire(topic, partition, pos, state, outbox, writer, self.max_bytes)

    def load_local(self, topic: str, partition: int) -> Checkpoint | None:
        if self.local is None:
            return None
        try:
            doc = json.loads(self._local_path(topic, partition).read_text())
            return Checkpoint.from_wire(topic, partition, doc["position"], doc["state"], doc["outbox"],
                                        doc.get("writer", ""), self.max_bytes)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring unreadable local checkpoint for %s/%d: %s", topic, partition, e)
            return None

    def load(self, topic: str, partition: int) -> tuple[Checkpoint | None, bool]:
        """(furthest checkpoint of ClickHouse and the local cache, whether ClickHouse answered)."""
        shared, ok = None, True
        try:
            shared = self.load_shared(topic, partition)
        except st.StateError as e:
            log.error("unreadable checkpoint for %s/%d in ClickHouse: %s", topic, partition, e)
        except Exception as e:  # noqa: BLE001 - unreachable: fall back to the local copy
            ok = False
            log.warning("cannot read checkpoints from ClickHouse: %s", e)
            try:
                self.db.disconnect()
            except Exception:  # noqa: BLE001
                pass
        local = self.load_local(topic, partition)
        best = max((c for c in (shared, local) if c is not None), key=lambda c: c.position, default=None)
        return best, ok
