"""Training history of one service, read from the ``events`` table as feature vectors.

I/O half of ``detect.model``. The window ends at the service's newest stored event (not the wall
clock), so a model can be trained on replayed or backfilled history as well as on live data.
``FINAL`` collapses redelivered copies of an event (ReplacingMergeTree on ``event_id``) so a consumer
restart does not weigh some messages twice. Plain SELECT/WHERE only: runs on ClickHouse 18.16.
"""

from __future__ import annotations

import numpy as np

from mailaudit.detect.model import COLUMNS, FEATURES, features_from_row
from mailaudit.ingest.clickhouse import Database

_DAY_MS = 86_400_000


def history_window(db: Database, service: str, days: float) -> tuple[int, int] | None:
    """``(from_ms, to_ms)`` inclusive: the last ``days`` of the service's stored events, or None if none."""
    rows = db.execute("SELECT count(), max(sent_ms) FROM {db}.events WHERE service = %(s)s", {"s": service})
    if not rows or not rows[0][0]:
        return None
    to_ms = int(rows[0][1])
    return to_ms - int(days * _DAY_MS), to_ms


def read_features(db: Database, service: str, from_ms: int, to_ms: int,
                  limit: int = 2_000_000) -> np.ndarray:
    """Feature matrix of the service's messages in ``[from_ms, to_ms]`` (most recent ``limit``)."""
    sql = (f"SELECT {', '.join(COLUMNS)} FROM {{db}}.events FINAL "
           "WHERE service = %(s)s AND sent_ms >= %(a)s AND sent_ms <= %(b)s "
           "ORDER BY sent_ms DESC, event_id LIMIT %(n)s")
    rows = db.execute(sql, {"s": service, "a": int(from_ms), "b": int(to_ms), "n": int(limit)})
    if not rows:
        return np.empty((0, len(FEATURES)), dtype=np.float64)
    return np.array([features_from_row(r) for r in rows], dtype=np.float64)
