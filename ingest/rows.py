"""Parsed events → columns of the ``events`` table, privacy applied.

This is the hot path of ingest. It keeps one tuple per event and turns them into columns once per batch
(one columnar insert per batch), and hashes/masks through per-batch dictionaries so an address that appears in many events of
a batch (a sender, a leaked To list) costs one HMAC, not one per occurrence.
"""

from __future__ import annotations

import datetime as dt
import json

from mailaudit.config import PrivacyConfig
from mailaudit.ingest.addresses import EMPTY, ParsedHeader, parse_address_list
from mailaudit.ingest.parsed import ParsedEvent, normalise_envelope, visible_addresses
from mailaudit.ingest.privacy import AddressHasher, text_hasher
from mailaudit.ingest.wire import decode_row

EVENT_COLUMNS = (
    "event_id", "sent_at", "sent_ms", "ingested_at", "service", "campaign", "template", "message_id",
    "key_id", "from_hash", "from_domain", "from_masked",
    "to_hashes", "to_domains", "to_masked", "cc_hashes", "cc_domains", "cc_masked",
    "bcc_hashes", "bcc_masked", "env_hashes", "env_domains", "env_masked",
    "to_count", "cc_count", "bcc_count", "env_count", "visible_count", "visible_domains", "strangers",
    "run_together", "has_bcc", "is_group", "semicolon", "unparseable",
    "subject_hash", "subject", "size_bytes", "extra", "kafka_partition", "kafka_offset",
)

INDEX_COLUMNS = ("address_hash", "sent_at", "sent_ms", "service", "event_id")

_UTC = dt.timezone.utc


def _domain(addr: str) -> str:
    return addr.rpartition("@")[2]


def _columns(names: tuple[str, ...], rows: list[tuple]) -> dict[str, list]:
    """Row tuples (in ``names`` order) → one list per column, by ``zip`` (C)."""
    cols = zip(*rows) if rows else ([] for _ in names)
    return dict(zip(names, map(list, cols)))


_EMPTY: list = []   # shared by every empty array cell of a batch; the driver only reads it


class EventRows:
    """A batch of event rows under construction. ``columns()`` hands them to ``Database.insert``.

    ``datetime64``: the server stores ``sent_at`` as DateTime64(3); times are then passed as raw
    millisecond ticks, else as epoch seconds (the driver takes raw integers and skips its own,
    costly, datetime conversion).
    """

    def __init__(self, privacy: PrivacyConfig, hasher: AddressHasher, datetime64: bool = False):
        self.privacy = privacy
        self.hasher = hasher
        self.key_id = privacy.hash_key_id
        self._key = privacy.hash_key.encode() if privacy.hash_key else b""
        self.datetime64 = datetime64
        # One tuple per row, turned into columns once per batch by ``zip`` (C): ~40 list appends per
        # event were a fifth of this step's time.
        self._rows: list[tuple] = []
        self._cols: dict[str, list] | None = None
        # The address search index (schema migration 5): one row per distinct hash per event, a tuple
        # in INDEX_COLUMNS order, turned into columns like the events'.
        self._index_rows: list[tuple] = []
        self._ix_cols: dict[str, list] | None = None
        self._addr: dict[str, tuple[str, str, str]] = {}   # address -> (hash, masked, domain)
        self._subjects: dict[str, str] = {}                # subject -> keyed hash (campaigns repeat them)
        self._hash_subject = None                          # privacy.text_hasher, made at the first subject
        self.now = int(dt.datetime.now(_UTC).timestamp())

    def __len__(self) -> int:
        return len(self._rows)

    def _new_info(self, addr: str) -> tuple[str, str, str]:
        h, m = self.hasher.hash_and_mask(addr)
        info = self._addr[addr] = (h, m, _domain(addr))
        return info

    def _info(self, addrs) -> tuple[list[str], list[str], list[str]]:
        """Hashes, masked forms and domains of ``addrs``: one HMAC per distinct address per batch."""
        if not addrs:
            return _EMPTY, _EMPTY, _EMPTY
        cache = self._addr
        if len(addrs) == 1:                  # one copy per recipient: the usual To:
            a = addrs[0]
            info = cache.get(a) or self._new_info(a)
            return [info[0]], [info[1]], [info[2]]
        hs, ms, ds = [], [], []
        for a in addrs:
            info = cache.get(a) or self._new_info(a)
            hs.append(info[0])
            ms.append(info[1])
            ds.append(info[2])
        return hs, ms, ds

    def add(self, p: ParsedEvent, partition: int = 0, offset: int = 0) -> None:
        e = p.event
        self._add(e.uid if e.uid is not None else e.event_id, e.sent_at_ms, e.service, e.campaign,
                  e.template, e.message_id, e.subject, e.size_bytes, e.extra, p.from_, p.to, p.cc, p.bcc,
                  p.envelope, p.has_bcc, partition, offset)

    def add_raw(self, raw: bytes, partition: int = 0, offset: int = 0) -> bool:
        """The row of one record straight from its bytes, or False when ``decode_event`` must take it
        (an event its compiled path refuses: the reference path decides and words the rejection).

        Storage needs neither an ``Event`` nor a ``ParsedEvent``: with them gone, and the event id
        parsed by msgspec, a row cost ~2.5 µs less than ``add(parse_event(decode_event(raw)))`` of
        ~22.5 when this came in, for the same row (``tests/test_ingest_rows_raw.py`` compares both)."""
        got = decode_row(raw)
        if got is None:
            return False
        w, ms = got
        cc, bcc = w.cc, w.bcc
        self._add(w.event_id, ms, w.service, w.campaign, w.template, w.message_id, w.subject,
                  w.size_bytes, None, parse_address_list(w.from_), parse_address_list(w.to),
                  parse_address_list(cc) if cc else EMPTY, parse_address_list(bcc) if bcc else EMPTY,
                  normalise_envelope(w.envelope_to), bool(bcc and bcc.strip()), partition, offset)
        return True

    def _add(self, event_id, ms: int, service: str, campaign, template, message_id: str, subj,
             size_bytes, extra, from_: ParsedHeader, to_h: ParsedHeader, cc_h: ParsedHeader,
             bcc_h: ParsedHeader, env: tuple[str, ...], has_bcc: bool, partition: int, offset: int) -> None:
        to, cc, bcc = to_h.addresses, cc_h.addresses, bcc_h.addresses
        sent_at = ms if self.datetime64 else ms // 1000
        if from_.addresses:
            a = from_.addresses[0]
            from_hash, from_masked, from_domain = self._addr.get(a) or self._new_info(a)
        else:
            from_hash = from_domain = from_masked = ""
        th, tm, td = self._info(to)
        ch, cm, cd = self._info(cc)
        bh, bm, _ = self._info(bcc)
        # One copy per recipient, To: naming that recipient, is how bulk mail is sent: the envelope's
        # columns are then the To's (shared lists; the driver only reads them).
        eh, em, ed = (th, tm, td) if env == to else self._info(env)
        if len(to) == 1 and not cc:
            # The common case (one visible recipient): no sets, no dict.
            visible_count = visible_domains = 1
            strangers = 0 if to[0] in env else 1
        else:
            visible = visible_addresses(to, cc)
            env_set = set(env)
            visible_count = len(visible)
            visible_domains = len({a.rpartition("@")[2] for a in visible})
            strangers = sum(1 for a in visible if a not in env_set)
        if subj:
            subject_hash = self._subjects.get(subj)
            if subject_hash is None:
                if self._hash_subject is None:
                    self._hash_subject = text_hasher(self._key)
                subject_hash = self._subjects[subj] = self._hash_subject(subj)
        else:
            subject_hash = ""
        self._rows.append((                  # in EVENT_COLUMNS order
            event_id, sent_at, ms, self.now, service, campaign or "", template or "", message_id,
            self.key_id, from_hash, from_domain, from_masked,
            th, td, tm, ch, cd, cm,
            bh, bm, eh, ed, em,
            len(to), len(cc), len(bcc), len(env), visible_count, visible_domains, strangers,
            1 if (to_h.run_together or cc_h.run_together or bcc_h.run_together) else 0,
            1 if has_bcc else 0,
            1 if (to_h.group or cc_h.group) else 0,
            1 if (to_h.semicolon or cc_h.semicolon) else 0,
            min(65535, len(to_h.unparseable) + len(cc_h.unparseable) + len(bcc_h.unparseable)),
            subject_hash,
            subj if (subj and self.privacy.store_subject) else "",
            size_bytes or 0,
            json.dumps(extra, ensure_ascii=False, sort_keys=True) if extra else "",
            partition, offset,
        ))
        self._cols = self._ix_cols = None
        ix = self._index_rows
        if len(th) == 1 and not ch and not bh and eh is th:
            # the common case again: the sender and the one recipient
            if from_hash and from_hash != th[0]:
                ix.append((from_hash, sent_at, ms, service, event_id))
            ix.append((th[0], sent_at, ms, service, event_id))
        else:
            hashes = dict.fromkeys((from_hash, *th, *ch, *bh, *eh))
            hashes.pop("", None)
            for h in hashes:
                ix.append((h, sent_at, ms, service, event_id))

    def columns(self) -> dict[str, list]:
        if self._cols is None:
            self._cols = _columns(EVENT_COLUMNS, self._rows)
        return self._cols

    def index_columns(self) -> dict[str, list]:
        """Rows of ``events_by_address`` for this batch (see ``ingest.writer.insert_events``)."""
        if self._ix_cols is None:
            self._ix_cols = _columns(INDEX_COLUMNS, self._index_rows)
        return self._ix_cols
