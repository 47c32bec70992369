"""Parsed events → columns of the ``events`` table, privacy applied.

This is the hot path of ingest. It appends to plain Python lists per column (one columnar insert per
batch), and hashes/masks through per-batch dictionaries so an address that appears in many events of
a batch (a sender, a leaked To list) costs one HMAC, not one per occurrence.
"""

from __future__ import annotations

import datetime as dt
import json

from mailaudit.config import PrivacyConfig
from mailaudit.ingest.parsed import ParsedEvent
from mailaudit.ingest.privacy import AddressHasher, hash_text

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
        self.cols: dict[str, list] = {c: [] for c in EVENT_COLUMNS}
        # One bound ``append`` per column, in EVENT_COLUMNS order: ``add`` runs for every event and
        # ~40 dictionary and attribute lookups per row were a tenth of its time.
        self._append = tuple(self.cols[c].append for c in EVENT_COLUMNS)
        # The address search index (schema migration 5): one row per distinct hash per event.
        self.index: dict[str, list] = {c: [] for c in INDEX_COLUMNS}
        self._addr: dict[str, tuple[str, str, str]] = {}   # address -> (hash, masked, domain)
        self._subjects: dict[str, str] = {}                # subject -> keyed hash (campaigns repeat them)
        self.now = int(dt.datetime.now(_UTC).timestamp())

    def __len__(self) -> int:
        return len(self.cols["event_id"])

    def _info(self, addrs) -> tuple[list[str], list[str], list[str]]:
        """Hashes, masked forms and domains of ``addrs``: one HMAC per distinct address per batch."""
        if not addrs:
            return _EMPTY, _EMPTY, _EMPTY
        cache = self._addr
        hs, ms, ds = [], [], []
        for a in addrs:
            info = cache.get(a)
            if info is None:
                h, m = self.hasher.hash_and_mask(a)
                info = cache[a] = (h, m, _domain(a))
            hs.append(info[0])
            ms.append(info[1])
            ds.append(info[2])
        return hs, ms, ds

    def add(self, p: ParsedEvent, partition: int = 0, offset: int = 0) -> None:
        e = p.event
        (a_event_id, a_sent_at, a_sent_ms, a_ingested_at, a_service, a_campaign, a_template, a_message_id,
         a_key_id, a_from_hash, a_from_domain, a_from_masked,
         a_to_hashes, a_to_domains, a_to_masked, a_cc_hashes, a_cc_domains, a_cc_masked,
         a_bcc_hashes, a_bcc_masked, a_env_hashes, a_env_domains, a_env_masked,
         a_to_count, a_cc_count, a_bcc_count, a_env_count, a_visible_count, a_visible_domains, a_strangers,
         a_run_together, a_has_bcc, a_is_group, a_semicolon, a_unparseable,
         a_subject_hash, a_subject, a_size_bytes, a_extra, a_kafka_partition, a_kafka_offset) = self._append
        to, cc, bcc, env = p.to.addresses, p.cc.addresses, p.bcc.addresses, p.envelope
        frm = p.from_.addresses[0] if p.from_.addresses else ""
        ms = e.sent_at_ms
        event_id = e.uid if e.uid is not None else e.event_id
        sent_at = ms if self.datetime64 else ms // 1000
        a_event_id(event_id)
        a_sent_at(sent_at)
        a_sent_ms(ms)
        a_ingested_at(self.now)
        a_service(e.service)
        a_campaign(e.campaign or "")
        a_template(e.template or "")
        a_message_id(e.message_id)
        a_key_id(self.key_id)
        if frm:
            fh, fm, fd = self._info((frm,))
            from_hash = fh[0]
            a_from_domain(fd[0])
            a_from_masked(fm[0])
        else:
            from_hash = ""
            a_from_domain("")
            a_from_masked("")
        a_from_hash(from_hash)
        th, tm, td = self._info(to)
        a_to_hashes(th)
        a_to_domains(td)
        a_to_masked(tm)
        ch, cm, cd = self._info(cc)
        a_cc_hashes(ch)
        a_cc_domains(cd)
        a_cc_masked(cm)
        bh, bm, _ = self._info(bcc)
        a_bcc_hashes(bh)
        a_bcc_masked(bm)
        eh, em, ed = self._info(env)
        a_env_hashes(eh)
        a_env_domains(ed)
        a_env_masked(em)
        a_to_count(len(to))
        a_cc_count(len(cc))
        a_bcc_count(len(bcc))
        a_env_count(len(env))
        if len(to) == 1 and not cc:
            # The common case (one visible recipient): no sets, no dict.
            a_visible_count(1)
            a_visible_domains(1)
            a_strangers(0 if to[0] in env else 1)
        else:
            visible = p.visible
            env_set = set(env)
            a_visible_count(len(visible))
            a_visible_domains(len({a.rpartition("@")[2] for a in visible}))
            a_strangers(sum(1 for a in visible if a not in env_set))
        a_run_together(1 if p.run_together else 0)
        a_has_bcc(1 if p.has_bcc else 0)
        a_is_group(1 if (p.to.group or p.cc.group) else 0)
        a_semicolon(1 if (p.to.semicolon or p.cc.semicolon) else 0)
        a_unparseable(min(65535, len(p.to.unparseable) + len(p.cc.unparseable) + len(p.bcc.unparseable)))
        subj = e.subject
        if subj:
            sh = self._subjects.get(subj)
            if sh is None:
                sh = self._subjects[subj] = hash_text(self._key, subj)
            a_subject_hash(sh)
        else:
            a_subject_hash("")
        a_subject(subj if (subj and self.privacy.store_subject) else "")
        a_size_bytes(e.size_bytes or 0)
        a_extra(json.dumps(e.extra, ensure_ascii=False, sort_keys=True) if e.extra else "")
        a_kafka_partition(partition)
        a_kafka_offset(offset)
        hashes = dict.fromkeys(h for h in (from_hash, *th, *ch, *bh, *eh) if h)
        if hashes:
            ix = self.index
            n = len(hashes)
            ix["address_hash"].extend(hashes)
            ix["sent_at"].extend([sent_at] * n)
            ix["sent_ms"].extend([ms] * n)
            ix["service"].extend([e.service] * n)
            ix["event_id"].extend([event_id] * n)

    def columns(self) -> dict[str, list]:
        return self.cols

    def index_columns(self) -> dict[str, list]:
        """Rows of ``events_by_address`` for this batch (see ``ingest.writer.insert_events``)."""
        return self.index
