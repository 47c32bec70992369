"""Erasure of one or more people (``mailaudit forget``): no row keeps their hash, mask or address.

What is done to each table (the reasons are in docs/security.md):

- ``events``: rows are *anonymised*, not deleted, by default: the person's hash (under every key in
  the ring) becomes a tombstone ``erased:<24 hex>`` and their masked form ``[erased]``, at exactly
  the array positions that held their hash; other people in the same row are untouched, counts and
  flags stay, so volume baselines, incident counts and the audit trail remain true. The tombstone is
  SHA-256(random salt + hash), the salt lives only for the duration of the run: one person's
  occurrences still count as one distinct address, but nothing can link the tombstone back to the
  address (no key, no salt). ``mode="delete"`` removes instead every event row that held the hash
  (lightweight ``DELETE`` on modern servers, ``ALTER DELETE`` on 18.16). Domains are kept unless
  ``erase_domains`` (a personal domain identifies a person; ``gmail.com`` does not).
  Free text that may hold the raw address (``subject`` when stored, listed ``extra`` fields,
  ``message_id``) has every case-insensitive occurrence of it replaced by ``[erased]``.
- ``exposures``: the same positional anonymisation of ``exposed_*`` and ``recipient_hashes``.
- ``alerts`` (``evidence``, ``body``, ``summary``), ``incidents`` (``summary``), ``errors``
  (``excerpt``, ``detail``): these hold masked forms in free text with no hash next to them, so the
  database cannot tell whose ``j***@gmail.com`` a sample is; every occurrence of the person's masked
  form (and raw address) is replaced. That may blank a sample that belonged to someone sharing the
  mask: a lost illustration, never a lost count.
- ``audit_log`` gets one row: who, when, how many addresses and rows per table, never an address,
  hash or mask.

No value identifying the person is ever written into SQL text: hashes, salt and patterns go into a
short-lived work table by a native INSERT, and the mutations read them with scalar subqueries. So the
mutation commands kept in ``system.mutations`` (and a modern server's ``system.query_log``) hold
nothing but the work table's name. Only constructs proven inside mutations on 18.16 are used: a
nested subquery there fails in the background and, with no ``KILL MUTATION`` on 18.16, would block the
table's mutations for good.

On a cluster (``cluster``: ``clickhouse.cluster``) the mutations go to ``T_local ON CLUSTER`` (see
``ingest/mutations.py``) and every replica evaluates them itself, so the work table is a
``ReplicatedMergeTree`` on every node under one cluster-wide ZooKeeper path, and the mutations start
only once every node holds its rows. Counts and the final scan read through the Distributed tables.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Callable

from mailaudit.ingest.clickhouse import Database, ident
from mailaudit.ingest.keys import KeyRing
from mailaudit.ingest.mutations import mutation_target, wait_mutations, wait_replicated
from mailaudit.ingest.privacy import mask_address, normalise_address, redact_text

ERASED = "[erased]"
TOMBSTONE_PREFIX = "erased:"
_REPLACEMENT = "\\1" + ERASED + "\\3"


@dataclass(frozen=True)
class Aligned:
    """A hash column (scalar or array) and the columns holding the same person at the same position."""

    hash: str
    masked: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    array: bool = True


@dataclass(frozen=True)
class TableSpec:
    table: str
    aligned: tuple[Aligned, ...] = ()
    text: tuple[str, ...] = ()            # free text scrubbed of raw addresses and masked forms
    deletable: bool = False               # mode="delete" removes the rows that hold the hash
    hash_in_key: bool = False             # the hash is in the sort key (cannot be updated): rows always deleted


SPECS: tuple[TableSpec, ...] = (
    TableSpec("events", (
        Aligned("from_hash", ("from_masked",), ("from_domain",), array=False),
        Aligned("to_hashes", ("to_masked",), ("to_domains",)),
        Aligned("cc_hashes", ("cc_masked",), ("cc_domains",)),
        Aligned("bcc_hashes", ("bcc_masked",)),
        Aligned("env_hashes", ("env_masked",), ("env_domains",)),
    ), text=("subject", "extra", "message_id"), deletable=True),
    # The address search index (schema migration 5): one row per (hash, event); the rows are deleted.
    TableSpec("events_by_address", (Aligned("address_hash", array=False),), deletable=True, hash_in_key=True),
    TableSpec("exposures", (
        Aligned("exposed_hashes", ("exposed_masked",), ("exposed_domains",)),
        Aligned("recipient_hashes"),
    )),
    TableSpec("alerts", text=("evidence", "body", "summary")),
    TableSpec("incidents", text=("summary",)),
    TableSpec("errors", text=("excerpt", "detail")),
)


@dataclass
class ErasureResult:
    addresses: int
    key_ids: list[str]
    mode: str
    rows: dict[str, int] = field(default_factory=dict)      # rows changed (or deleted) per table
    traces: dict[str, int] = field(default_factory=dict)    # "table.column" -> rows still holding a trace
    verified: bool = False

    def as_dict(self) -> dict:
        return {"addresses": self.addresses, "key_ids": self.key_ids, "mode": self.mode, "rows": self.rows,
                "verified": self.verified, "traces": self.traces}


# --- patterns ---------------------------------------------------------------------------------------

def _re2_literal(text: str) -> str:
    """Escape a literal for RE2 (ClickHouse's regex engine) without relying on Python's re.escape."""
    out = []
    for ch in text:
        if ch.isascii() and ch.isalnum():
            out.append(ch)
        elif ch.isascii() and 0x21 <= ord(ch) <= 0x7E:
            out.append("\\" + ch)
        else:
            out.append("\\x{%x}" % ord(ch))
    return "".join(out)


def needles_for(address: str, masks: bool = True) -> list[str]:
    """The strings that betray this address in free text: the address and its mask, also as they
    read inside JSON (alert bodies, extra fields)."""
    a = normalise_address(address)
    out = []
    for s in (a, mask_address(a)) if masks else (a,):
        for v in (s, json.dumps(s, ensure_ascii=False)[1:-1], json.dumps(s)[1:-1]):
            if v and v not in out:
                out.append(v)
    return out


def text_pattern(needles: list[str]) -> str:
    """One case-insensitive RE2 pattern matching any needle not embedded in a longer address
    (``john@x.com`` must not match inside ``bigjohn@x.com`` or ``john@x.com.au``). The boundary
    characters are captured and put back (``\\1[erased]\\3``); the replacement runs twice so that
    adjacent occurrences sharing one separator are all caught."""
    alts = "|".join(_re2_literal(n) for n in sorted(set(needles), key=len, reverse=True))
    return r"(?i)(^|[^a-z0-9._%+\-])(" + alts + r")([^a-z0-9.\-]|$)"


# --- SQL ---------------------------------------------------------------------------------------------

class _Work:
    """The run's work table: (hash, salt, pattern). On disk (TinyLog; on a cluster a ReplicatedMergeTree
    on every node), so a server restart in the middle of a mutation cannot turn the scalar subqueries
    into empty values."""

    def __init__(self, db: Database, cluster: str | None = None):
        self.db = db
        self.cluster = cluster
        self.name = f"forget_work_{secrets.token_hex(6)}"
        self.on = f" ON CLUSTER {ident(cluster)}" if cluster else ""

    @property
    def ref(self) -> str:
        return f"{self.db.name}.{self.name}"

    def create(self, hashes: list[str], pattern: str) -> None:
        salt = secrets.token_hex(16)
        if self.cluster:
            # One ZooKeeper path for the whole cluster (no {shard}): every node is a replica of it.
            engine = (f"ReplicatedMergeTree('/clickhouse/tables/{{db}}/{self.name}', '{{shard}}-{{replica}}') "
                      "ORDER BY tuple()")
        else:
            engine = "TinyLog"
        self.db.execute(f"CREATE TABLE {{db}}.{self.name}{self.on} (hash String, salt String, pattern String) "
                        f"ENGINE = {engine}")
        self.db.insert(self.name, {"hash": hashes, "salt": [salt] * len(hashes), "pattern": [pattern] * len(hashes)})
        if self.cluster:
            wait_replicated(self.db, self.name, self.cluster)

    def drop(self) -> None:
        self.db.execute(f"DROP TABLE IF EXISTS {{db}}.{self.name}{self.on}")

    # Scalar subqueries (one level only: see the module docstring).
    @property
    def H(self) -> str:
        return f"(SELECT groupArray(hash) FROM {self.ref})"

    @property
    def P(self) -> str:
        return f"(SELECT any(pattern) FROM {self.ref})"

    def tomb(self, v: str) -> str:
        return (f"if(has({self.H}, {v}), concat('{TOMBSTONE_PREFIX}', "
                f"substring(lower(hex(SHA256(concat((SELECT any(salt) FROM {self.ref}), {v})))), 1, 24)), {v})")

    def scrub(self, col: str) -> str:
        # Twice: adjacent occurrences share one separator, which the first pass consumes.
        rep = "'" + _REPLACEMENT.replace("\\", "\\\\") + "'"
        once = f"replaceRegexpAll({col}, {self.P}, {rep})"
        return f"replaceRegexpAll({once}, {self.P}, {rep})"


def _columns(db: Database, table: str) -> set[str]:
    return {r[0] for r in db.execute("SELECT name FROM system.columns WHERE database = %(d)s AND table = %(t)s",
                                     {"d": db.name, "t": table})}


def _hash_condition(spec: TableSpec, w: _Work, cols: set[str]) -> list[str]:
    out = []
    for a in spec.aligned:
        if a.hash in cols:
            out.append(f"hasAny({a.hash}, {w.H})" if a.array else f"has({w.H}, {a.hash})")
    return out


def _assignments(spec: TableSpec, w: _Work, cols: set[str], erase_domains: bool) -> list[str]:
    sets = []
    for a in spec.aligned:
        if a.hash not in cols:
            continue
        h = a.hash
        blank = [c for c in a.masked + (a.domains if erase_domains else ()) if c in cols]
        if a.array:
            sets.append(f"{h} = arrayMap(v -> {w.tomb('v')}, {h})")
            sets.extend(f"{c} = arrayMap((v, m) -> if(has({w.H}, v), '{ERASED}', m), {h}, {c})" for c in blank)
        else:
            sets.append(f"{h} = {w.tomb(h)}")
            sets.extend(f"{c} = if(has({w.H}, {h}), '{ERASED}', {c})" for c in blank)
    sets.extend(f"{c} = {w.scrub(c)}" for c in spec.text if c in cols)
    return sets


def wait_for_mutations(db: Database, table: str, timeout_s: float, cluster: str | None = None) -> None:
    wait_mutations(db, table, cluster, timeout_s)


def forget(db: Database, ring: KeyRing, addresses: list[str], *, actor: str | None = None, reason: str = "",
           mode: str = "anonymise", erase_domains: bool = False, verify: bool = True, dry_run: bool = False,
           timeout_s: float = 600.0, progress: Callable[[str], None] | None = None,
           cluster: str | None = None) -> ErasureResult:
    """Erase every trace of ``addresses`` (hashed with every key of ``ring``); see the module doc.
    ``progress(table)`` is called as each table is started (the CLI's progress bar). ``cluster``: the
    ClickHouse cluster whose ``T_local`` tables take the mutations (None: a single node)."""
    if mode not in ("anonymise", "delete"):
        raise ValueError("mode must be 'anonymise' or 'delete'")
    addrs = sorted({normalise_address(a) for a in addresses if normalise_address(a)})
    if not addrs:
        raise ValueError("no address to forget")
    hashes = sorted({h for a in addrs for h in ring.all_hashes(a)})
    pattern = text_pattern([n for a in addrs for n in needles_for(a)])
    result = ErasureResult(len(addrs), ring.ids, mode)
    present = {r[0] for r in db.execute("SELECT name FROM system.tables WHERE database = %(d)s", {"d": db.name})}
    work = _Work(db, cluster)
    work.create(hashes, pattern)
    keep_work = False
    try:
        for spec in SPECS:
            if spec.table not in present:
                continue
            if progress is not None:
                progress(spec.table)
            t = ident(spec.table)
            cols = _columns(db, spec.table)
            hash_cond = _hash_condition(spec, work, cols)
            text_cond = [f"match({c}, {work.P})" for c in spec.text if c in cols]
            where = " OR ".join(hash_cond + text_cond)
            if not where:
                continue
            sets = _assignments(spec, work, cols, erase_domains)
            # Check every expression synchronously first: a mutation that fails in the background
            # is retried forever (and cannot be killed on 18.16).
            db.execute(f"SELECT {', '.join(s.split(' = ', 1)[1] for s in sets)} FROM {{db}}.{t} WHERE {where} LIMIT 1")
            n = int(db.execute(f"SELECT count() FROM {{db}}.{t} WHERE {where}")[0][0])
            result.rows[spec.table] = n
            if dry_run or n == 0:
                continue
            if (mode == "delete" or spec.hash_in_key) and spec.deletable and hash_cond:
                hw = " OR ".join(hash_cond)
                if db.capabilities.lightweight_delete:
                    db.execute(f"DELETE FROM {mutation_target(t, cluster)} WHERE {hw}")
                else:
                    db.execute(f"ALTER TABLE {mutation_target(t, cluster)} DELETE WHERE {hw}")
                wait_for_mutations(db, spec.table, timeout_s, cluster)
                if not text_cond:
                    continue
                where = " OR ".join(text_cond)
                sets = [s for s in sets if s.split(" = ", 1)[0] in spec.text]
            db.execute(f"ALTER TABLE {mutation_target(t, cluster)} UPDATE {', '.join(sets)} WHERE {where}")
            try:
                wait_for_mutations(db, spec.table, timeout_s, cluster)
            except TimeoutError:
                keep_work = True     # the running mutation still reads it
                raise
        if verify and not dry_run:
            # The hashes and the addresses themselves: both are unique to the person (a mask is not).
            result.traces = find_traces(db, hashes, addrs, masks=False, cluster=cluster)
            result.verified = not result.traces
    finally:
        if not keep_work:
            work.drop()
    if not dry_run:
        record_audit(db, actor or default_actor(), "forget", erase_from_text(reason, addrs), {
            "addresses": result.addresses, "key_ids": result.key_ids, "mode": mode,
            "erase_domains": erase_domains, "rows": result.rows, "verified": result.verified})
    return result


# --- verification ------------------------------------------------------------------------------------

def _scan_expr(col: str, typ: str, needles: str, pattern: str | None) -> str | None:
    t = typ
    for wrap in ("LowCardinality(", "Nullable("):
        if t.startswith(wrap):
            t = t[len(wrap):-1]
    test = f"arrayExists(n -> positionCaseInsensitive(x, n) > 0, {needles})"
    if pattern:
        test = f"({test} OR match(x, {pattern}))"
    if t == "String" or t.startswith("FixedString"):
        # Wrapped in an array: an 18.16 lambda cannot see a table column, only its own arguments.
        return f"arrayExists(x -> {test}, [toString({col})])"
    if t.startswith("Array(") and "String" in t:
        return f"arrayExists(x -> {test}, arrayMap(y -> toString(y), {col}))"
    return None


def find_traces(db: Database, hashes: list[str], addresses: list[str] = (), masks: bool = True,
                skip_tables: tuple[str, ...] = (), cluster: str | None = None) -> dict[str, int]:
    """``"table.column" -> rows`` holding a trace, over every string column of every table of the
    database (read from ``system.columns``, so a table added later is scanned too). A trace is any
    of ``hashes`` as a substring, or any of ``addresses`` or their masked forms as a whole address
    (case-insensitive; ``john@x.com`` inside ``john@x.com.au`` is someone else). A masked form is
    not unique to a person (``masks=False`` leaves it out: ``forget``'s own check, since another
    ``j***@gmail.com`` may rightly remain). The values are read from a work table, never written
    into the SQL. With ``cluster`` the work table is on every node and a ``T_local`` that has a
    Distributed ``T`` is read through ``T`` (every shard); without it every table of this node is
    read, Distributed or not (a replica's own local tables: the cluster tests)."""
    pattern = text_pattern([n for a in addresses for n in needles_for(a, masks)]) if addresses else ""
    work = _Work(db, cluster)
    work.create(list(hashes) or [""], pattern)
    try:
        arr = f"(SELECT groupArray(hash) FROM {work.ref} WHERE hash != '')"
        out: dict[str, int] = {}
        rows = db.execute("SELECT table, name, type FROM system.columns WHERE database = %(d)s ORDER BY table, name",
                          {"d": db.name})
        engines = dict(db.execute("SELECT name, engine FROM system.tables WHERE database = %(d)s", {"d": db.name}))
        for table, col, typ in rows:
            if table.startswith("forget_work_") or table in skip_tables or "View" in engines.get(table, "View"):
                continue
            distributed = engines.get(table) == "Distributed"
            if cluster and table.endswith("_local") and engines.get(table[:-len("_local")]) == "Distributed":
                continue                    # read through its Distributed table
            if not cluster and distributed:
                continue                    # a single node's view: its own tables only
            expr = _scan_expr(ident(col), typ, arr, work.P if pattern else None)
            if expr is None:
                continue
            n = db.execute(f"SELECT count() FROM {{db}}.{ident(table)} WHERE {expr}")[0][0]
            if n:
                out[f"{table}.{col}"] = int(n)
        return out
    finally:
        work.drop()


# --- audit ---------------------------------------------------------------------------------------------

def default_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # noqa: BLE001 - no passwd entry in a container
        return "cli:unknown"


def erase_from_text(text: str, addrs: list[str]) -> str:
    """An operator's free text (``--reason "DSR for jane@x.com"``) without the erased addresses (not
    even masked: the audit row must not point at the person) and with any other address masked."""
    text = text or ""
    for a in sorted(addrs, key=len, reverse=True):
        text = re.sub(re.escape(a), "[erased]", text, flags=re.I)
    return clean_free_text(text)


def clean_free_text(text: str, limit: int = 500) -> str:
    """Free text bound for the keep-forever audit_log: addresses masked, one line, bounded."""
    return " ".join(redact_text(text or "").split())[:limit]


def record_audit(db: Database, actor: str, action: str, target: str, detail: dict) -> None:
    """One append-only audit row; callers pass counts and ids, never an address, hash or mask. The
    target may be an operator's free text: it is cleaned here (issue 14, finding 8)."""
    db.insert("audit_log", {"at": [dt.datetime.now(dt.timezone.utc).replace(microsecond=0)], "actor": [actor],
                            "action": [action], "target": [clean_free_text(target)],
                            "detail": [json.dumps(detail, sort_keys=True, ensure_ascii=False)]})


_ADDRESS_RX = re.compile(r"[^@\s]+@[^@\s]+")


def looks_like_address(text: str) -> bool:
    return bool(_ADDRESS_RX.fullmatch(normalise_address(text)))
