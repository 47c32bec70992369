"""ClickHouse access: one small client type with the two calls the product needs.

``Database`` wraps clickhouse-driver's native client so the rest of the code never formats a value
into SQL (values always go through the driver's ``%(name)s`` substitution) and so the tests can swap
in chdb (an in-process modern ClickHouse) behind the same two methods to prove the modern DDL and
every query. Identifiers (database and table names) cannot be parameters; they are validated instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from mailaudit.config import ClickHouseConfig

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")


def ident(name: str) -> str:
    """Validate an identifier that must be spliced into SQL (database/table names come from config)."""
    if not _IDENT.match(name):
        raise ValueError(f"not a safe ClickHouse identifier: {name!r}")
    return name


@dataclass(frozen=True)
class Capabilities:
    """What the server can do, decided by its version (18.16 here, 23+ in production)."""

    version: tuple[int, ...]

    @property
    def modern(self) -> bool:
        return self.version >= (20, 3)

    @property
    def datetime64(self) -> bool:
        return self.version >= (20, 1)

    @property
    def low_cardinality(self) -> bool:
        return self.version >= (19, 9)

    @property
    def codecs(self) -> bool:
        return self.version >= (19, 11)

    @property
    def ttl(self) -> bool:
        return self.version >= (19, 6)

    @property
    def lightweight_delete(self) -> bool:
        return self.version >= (23, 3)

    @property
    def add_column_if_not_exists(self) -> bool:
        return self.version >= (19, 1)

    @staticmethod
    def from_string(v: str) -> "Capabilities":
        parts = []
        for p in v.split("."):
            if not p.isdigit():
                break
            parts.append(int(p))
        return Capabilities(tuple(parts))


def _no_query_logs() -> None:
    """clickhouse-driver logs every query's text at DEBUG; search queries carry address hashes
    there, and a log is out of `forget`'s reach (issue 14): hold its logger at INFO at least."""
    import logging

    lg = logging.getLogger("clickhouse_driver")
    if lg.getEffectiveLevel() < logging.INFO:
        lg.setLevel(logging.INFO)


class Database:
    """A connection to one ClickHouse database (name from the URL)."""

    def __init__(self, cfg: ClickHouseConfig, client: Any | None = None):
        _no_query_logs()
        parts = cfg.parts()
        self.name = ident(parts.pop("database"))
        if client is None:
            from clickhouse_driver import Client

            ca = parts.pop("ca_certs")
            verify = parts.pop("verify")
            extra = {"ca_certs": ca, "verify": verify} if parts["secure"] else {}
            client = Client(**parts, **extra, settings={"use_numpy": False})
        self.client = client
        self._caps: Capabilities | None = None

    # The two calls ------------------------------------------------------------------------
    def execute(self, sql: str, params: Mapping[str, Any] | None = None) -> list[tuple]:
        """Run one statement; ``{db}`` in the SQL is replaced by the database name (validated)."""
        return self.client.execute(sql.replace("{db}", self.name), params or {})

    def insert(self, table: str, columns: Mapping[str, Sequence[Any]]) -> int:
        """One columnar INSERT (the efficient path for a batch); returns the row count."""
        if not columns:
            return 0
        names = list(columns)
        n = len(columns[names[0]])
        if n == 0:
            return 0
        sql = f"INSERT INTO {self.name}.{ident(table)} ({', '.join(ident(c) for c in names)}) VALUES"
        self.client.execute(sql, [columns[c] for c in names], columnar=True)
        return n

    def insert_rows(self, table: str, names: Iterable[str], rows: Sequence[Sequence[Any]]) -> int:
        names = list(names)
        cols = {n: [r[i] for r in rows] for i, n in enumerate(names)}
        return self.insert(table, cols)

    # Facts about the server -----------------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:
        if self._caps is None:
            self._caps = Capabilities.from_string(self.client.execute("SELECT version()")[0][0])
        return self._caps

    def disconnect(self) -> None:
        try:
            self.client.disconnect()
        except Exception:  # noqa: BLE001 - closing a broken connection must never raise
            pass
