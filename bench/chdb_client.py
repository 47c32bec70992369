"""chdb (in-process ClickHouse 26.x) behind the same client shape as clickhouse-driver.

Production runs modern ClickHouse; this lets the tests prove the modern DDL (TTL, LowCardinality,
codecs, DateTime64) and run every product query on it. Values go through clickhouse-driver's own
``escape_params``, exactly the substitution the native client does, so a query that is safe and
correct here is the same text the real driver sends.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
import uuid
import weakref
from types import SimpleNamespace

from clickhouse_driver.util.escape import escape_params

from mailaudit.config import ClickHouseConfig
from mailaudit.ingest.clickhouse import Database

_CONTEXT = SimpleNamespace(server_info=SimpleNamespace(get_timezone=lambda: "UTC"), client_settings={})


class ChdbClient:
    """One chdb session. Without ``path`` its data lives in a directory of its own, removed on
    ``disconnect`` or, failing that, when the client is collected or the process exits: each session
    writes ~7 MB, and a test run opens dozens."""

    def __init__(self, path: str | None = None):
        from chdb import session

        owned = None if path else tempfile.mkdtemp(prefix="chdb-")
        self.session = session.Session(path or owned)
        self._cleanup = weakref.finalize(self, _close, self.session, owned)

    def execute(self, sql, params=None, columnar=False):
        if sql.rstrip().upper().endswith("VALUES"):
            return self._insert(sql, params, columnar)
        if params:
            sql = sql % escape_params(params, _CONTEXT)
        res = self.session.query(sql, "JSONCompact")
        raw = res.bytes() if hasattr(res, "bytes") else bytes(res)
        if not raw.strip():
            return []
        doc = json.loads(raw)
        types = [m["type"] for m in doc["meta"]]
        return [tuple(_convert(v, t) for v, t in zip(row, types)) for row in doc["data"]]

    def _insert(self, sql, data, columnar):
        rows = list(zip(*data)) if columnar else list(data)
        if not rows:
            return 0
        values = ", ".join("(" + ", ".join(_literal(v) for v in r) + ")" for r in rows)
        self.session.query(sql + " " + values)
        return len(rows)

    def disconnect(self):
        self._cleanup()


def _close(sess, owned: str | None) -> None:
    sess.cleanup()
    if owned:
        shutil.rmtree(owned, ignore_errors=True)


def _literal(v):
    if isinstance(v, uuid.UUID):
        return f"toUUID('{v}')"
    if isinstance(v, dt.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(dt.timezone.utc)
        return f"toDateTime64('{v.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3]}', 3, 'UTC')"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_literal(x) for x in v) + "]"
    return str(escape_params({"v": v}, _CONTEXT)["v"])


def _convert(v, t):
    if v is None:
        return None
    if t.startswith("Nullable("):
        t = t[9:-1]
    if t.startswith("LowCardinality("):
        t = t[15:-1]
    if t.startswith("DateTime"):
        s = str(v)
        fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in s else "%Y-%m-%d %H:%M:%S"
        return dt.datetime.strptime(s, fmt).replace(tzinfo=dt.timezone.utc)
    if t == "UUID":
        return uuid.UUID(v)
    if t.startswith(("UInt", "Int")) and isinstance(v, str):
        return int(v)
    if t.startswith("Float") and isinstance(v, str):
        return float(v)
    return v


def chdb_database(name: str = "mailaudit", path: str | None = None) -> Database:
    return Database(ClickHouseConfig(url=f"clickhouse://default:@127.0.0.1:9000/{name}"), client=ChdbClient(path))
