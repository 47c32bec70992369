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
from mailaudit.ingest.privacy import AddressHasher, hash_text, mask_address

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
        # The address search index (schema migration 5): one row per distinct hash per event.
        self.index: dict[str, list] = {c: [] for c in INDEX_COLUMNS}
        self._addr: dict[str, tuple[str, str, str]] = {}   # address -> (hash, masked, domain)
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
                info = cache[a] = (self.hasher.hash(a), mask_address(a), _domain(a))
            hs.append(info[0])
            ms.append(info[1])
            ds.append(info[2])
        return hs, ms, ds

    def add(self, p: ParsedEvent, partition: int = 0, offset: int = 0) -> None:
        e = p.event
        c = self.cols
        to, cc, bcc, env = p.to.addresses, p.cc.addresses, p.bcc.addresses, p.envelope
        frm = p.from_.addresses[0] if p.from_.addresses else ""
        ms = e.sent_at_ms
        c["event_id"].append(e.event_id)
        c["sent_at"].append(ms if self.datetime64 else ms // 1000)
        c["sent_ms"].append(ms)
        c["ingested_at"].append(self.now)
        c["service"].append(e.service)
        c["campaign"].append(e.campaign or "")
        c["template"].append(e.template or "")
        c["message_id"].append(e.message_id)
        c["key_id"].append(self.key_id)
        if frm:
            fh, fm, fd = self._info((frm,))
            c["from_hash"].append(fh[0])
            c["from_domain"].append(fd[0])
            c["from_masked"].append(fm[0])
        else:
            c["from_hash"].append("")
            c["from_domain"].append("")
            c["from_masked"].append("")
        th, tm, td = self._info(to)
        c["to_hashes"].append(th)
        c["to_domains"].append(td)
        c["to_masked"].append(tm)
        ch, cm, cd = self._info(cc)
        c["cc_hashes"].append(ch)
        c["cc_domains"].append(cd)
        c["cc_masked"].append(cm)
        bh, bm, _ = self._info(bcc)
        c["bcc_hashes"].append(bh)
        c["bcc_masked"].append(bm)
        eh, em, ed = self._info(env)
        c["env_hashes"].append(eh)
        c["env_domains"].append(ed)
        c["env_masked"].append(em)
        c["to_count"].append(len(to))
        c["cc_count"].append(len(cc))
        c["bcc_count"].append(len(bcc))
        c["env_count"].append(len(env))
        if len(to) == 1 and not cc:
            # The common case (one visible recipient): no sets, no dict.
            c["visible_count"].append(1)
            c["visible_domains"].append(1)
            c["strangers"].append(0 if to[0] in env else 1)
        else:
            visible = p.visible
            env_set = set(env)
            c["visible_count"].append(len(visible))
            c["visible_domains"].append(len({a.rpartition("@")[2] for a in visible}))
            c["strangers"].append(sum(1 for a in visible if a not in env_set))
        c["run_together"].append(1 if p.run_together else 0)
        c["has_bcc"].append(1 if p.has_bcc else 0)
        c["is_group"].append(1 if (p.to.group or p.cc.group) else 0)
        c["semicolon"].append(1 if (p.to.semicolon or p.cc.semicolon) else 0)
        c["unparseable"].append(min(65535, len(p.to.unparseable) + len(p.cc.unparseable) + len(p.bcc.unparseable)))
        subj = e.subject
        c["subject_hash"].append(hash_text(self._key, subj) if subj else "")
        c["subject"].append(subj if (subj and self.privacy.store_subject) else "")
        c["size_bytes"].append(e.size_bytes or 0)
        c["extra"].append(json.dumps(e.extra, ensure_ascii=False, sort_keys=True) if e.extra else "")
        c["kafka_partition"].append(partition)
        c["kafka_offset"].append(offset)
        hashes = dict.fromkeys(h for h in (c["from_hash"][-1], *th, *ch, *bh, *eh) if h)
        if hashes:
            ix = self.index
            n = len(hashes)
            ix["address_hash"].extend(hashes)
            ix["sent_at"].extend([c["sent_at"][-1]] * n)
            ix["sent_ms"].extend([ms] * n)
            ix["service"].extend([e.service] * n)
            ix["event_id"].extend([e.event_id] * n)

    def columns(self) -> dict[str, list]:
        return self.cols

    def index_columns(self) -> dict[str, list]:
        """Rows of ``events_by_address`` for this batch (see ``ingest.writer.insert_events``)."""
        return self.index
