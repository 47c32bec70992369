"""Parsed events → columns of the ``events`` table, privacy applied.

This is the hot path of ingest. It appends to plain Python lists per column (one columnar insert per
batch), and hashes/masks through per-batch dictionaries so an address that appears in many events of
a batch (a sender, a leaked To list) costs one HMAC, not one per occurrence.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid

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

_UTC = dt.timezone.utc


def _domain(addr: str) -> str:
    return addr.rpartition("@")[2]


class EventRows:
    """A batch of event rows under construction. ``columns()`` hands them to ``Database.insert``."""

    def __init__(self, privacy: PrivacyConfig, hasher: AddressHasher):
        self.privacy = privacy
        self.hasher = hasher
        self.key_id = privacy.hash_key_id
        self._key = privacy.hash_key.encode() if privacy.hash_key else b""
        self.cols: dict[str, list] = {c: [] for c in EVENT_COLUMNS}
        self._masked: dict[str, str] = {}
        self._hashed: dict[str, str] = {}
        self.now = dt.datetime.now(_UTC).replace(microsecond=0)

    def __len__(self) -> int:
        return len(self.cols["event_id"])

    def _h(self, addrs) -> list[str]:
        cache = self._hashed
        out = []
        for a in addrs:
            h = cache.get(a)
            if h is None:
                h = cache[a] = self.hasher.hash(a)
            out.append(h)
        return out

    def _m(self, addrs) -> list[str]:
        cache = self._masked
        out = []
        for a in addrs:
            m = cache.get(a)
            if m is None:
                m = cache[a] = mask_address(a)
            out.append(m)
        return out

    def add(self, p: ParsedEvent, partition: int = 0, offset: int = 0) -> None:
        e = p.event
        c = self.cols
        to, cc, bcc, env = p.to.addresses, p.cc.addresses, p.bcc.addresses, p.envelope
        frm = p.from_.addresses[0] if p.from_.addresses else ""
        visible = p.visible
        env_set = set(env)
        c["event_id"].append(uuid.UUID(e.event_id))
        c["sent_at"].append(dt.datetime.fromtimestamp(e.sent_at_ms / 1000, _UTC))
        c["sent_ms"].append(e.sent_at_ms)
        c["ingested_at"].append(self.now)
        c["service"].append(e.service)
        c["campaign"].append(e.campaign or "")
        c["template"].append(e.template or "")
        c["message_id"].append(e.message_id)
        c["key_id"].append(self.key_id)
        c["from_hash"].append(self._h((frm,))[0] if frm else "")
        c["from_domain"].append(_domain(frm) if frm else "")
        c["from_masked"].append(self._m((frm,))[0] if frm else "")
        c["to_hashes"].append(self._h(to))
        c["to_domains"].append([_domain(a) for a in to])
        c["to_masked"].append(self._m(to))
        c["cc_hashes"].append(self._h(cc))
        c["cc_domains"].append([_domain(a) for a in cc])
        c["cc_masked"].append(self._m(cc))
        c["bcc_hashes"].append(self._h(bcc))
        c["bcc_masked"].append(self._m(bcc))
        c["env_hashes"].append(self._h(env))
        c["env_domains"].append([_domain(a) for a in env])
        c["env_masked"].append(self._m(env))
        c["to_count"].append(len(to))
        c["cc_count"].append(len(cc))
        c["bcc_count"].append(len(bcc))
        c["env_count"].append(len(env))
        c["visible_count"].append(len(visible))
        c["visible_domains"].append(len({_domain(a) for a in visible}))
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

    def columns(self) -> dict[str, list]:
        return self.cols
